"""The web app in headless Chromium against a live `dagster dev` (end to end, offline).

One module-scoped stack: a feed of three generated episodes on 127.0.0.1, `dagster dev`
(webserver + daemon, temporary DAGSTER_HOME with the project's dagster.yaml, sensor
stopped), and `twiml-transcribe web` on a free port with one account made by
`twiml-transcribe users add`. Playwright drives Debian's chromium (never `playwright
install`). Every process is started in its own session and killed with all its
descendants at teardown. The sign-in rate-limit test runs last: it blocks 127.0.0.1.

Set TWIML_WEB_SCREENSHOTS=docs/img to refresh the screenshots of docs/web.md.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from resources.storage import StorageResource
from twiml_assets.demo.feed_server import DemoEpisode, render_rss
from twiml_assets.demo.http_server import LocalHTTPServer
from twiml_assets.demo.synth import synthesize_dialogue
from twiml_assets.feed.catalog import refresh_catalog
from twiml_assets.feed.resource import FeedResource
from twiml_assets.web.dagster_client import DagsterClient, DagsterUnavailableError

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CHROMIUM = os.environ.get("TWIML_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RUN_TIMEOUT = 240
USER, PASSWORD = "alice", "correct horse battery staple"
JSON = {"accept": "application/json"}
# What a script on the page could do: POST with the browser's cookies and Origin, no token.
SCRIPT_POST = """key => fetch('/episodes/' + key + '/transcribe',
    {method: 'POST', headers: {Accept: 'application/json'}}).then(r => r.status)"""
MAX_SCREENSHOT_BYTES = 200_000

# ≈ 20 s of two espeak-ng voices; tiny.en gets these words right.
UPLOAD_LINES = (
    ("HOST", "The purple elephant plays the piano every morning."),
    ("GUEST", "Welcome to the show about speech recognition."),
    ("HOST", "Diarization tells us who spoke when in the recording."),
    ("GUEST", "Keep reference transcripts and compute the word error rate."),
)
EXPECTED_WORDS = ("elephant", "piano", "recognition", "recording")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Processes:
    """Subprocesses in their own sessions, logged to files, all killed on ``stop``."""

    def __init__(self, logs: Path):
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("w")
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def tail(self, name: str, chars: int = 4000) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")[-chars:]

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            assert proc.poll() is None, f"{name} exited ({proc.returncode}):\n{self.tail(name)}"

    def stop(self, grace: float = 15.0) -> None:
        import psutil

        for name, proc in reversed(list(self.procs.items())):
            try:
                family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(True)]
            except psutil.NoSuchProcess:
                family = []
            try:
                os.killpg(proc.pid, signal.SIGINT)  # as Ctrl+C: dagster dev shuts down cleanly
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            with_pgid = [proc.pid]
            for member in family:
                try:
                    with_pgid.append(os.getpgid(member.pid))
                except ProcessLookupError:
                    continue
            for pgid in set(with_pgid):
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
            _, alive = psutil.wait_procs(family, timeout=5)
            for member in alive:
                try:
                    member.kill()
                except psutil.NoSuchProcess:
                    pass
            _, alive = psutil.wait_procs(alive, timeout=5)
            assert not alive, f"{name}: processes left behind: {alive}"


def wait_for(
    what: str,
    check: Callable[[], object],
    timeout: float,
    processes: Processes | None = None,
    interval: float = 0.5,
) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if processes is not None:
            processes.check_alive()
        try:
            value = check()
        except (requests.RequestException, DagsterUnavailableError):
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Live:
    web: str
    dagster: str
    root: Path
    processes: Processes
    upload_clip: Path
    screenshots: Path
    users_file: Path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, short_episodes) -> Iterator[Live]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing: run scripts/setup.sh (apt-get install chromium)")
    base = tmp_path_factory.mktemp("web_live")
    root, home, logs = base / "data", base / "dagster_home", base / "logs"
    for d in (home, logs):
        d.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    upload_clip = synthesize_dialogue(base / "my-recording.wav", UPLOAD_LINES, seed=5).audio_path

    with LocalHTTPServer() as feed_server:
        episodes = []
        for n, ep in enumerate(short_episodes, start=1):
            data = Path(ep.audio_path).read_bytes()
            feed_server.put(f"audio/{n}.mp3", data, "audio/mpeg")
            episodes.append(
                DemoEpisode(
                    n,
                    ["Speech recognition", "Speaker diarization", "Measuring transcripts"][n - 1]
                    + f" - #{n}",
                    f"Episode {n} of the test feed.",
                    f"audio/{n}.mp3",
                    len(data),
                    ep.duration,
                    f"Mon, {n:02d} Jan 2024 10:00:00 +0000",
                    f"guid-{n}",
                )
            )
        feed_server.put("feed.xml", render_rss(episodes, feed_server.base_url))
        feed_url = feed_server.url("feed.xml")
        # What the sensor (or feed_catalog) does first: the stored snapshot the list shows.
        refresh_catalog(StorageResource(root=str(root)), FeedResource(url=feed_url))

        ui_port, web_port = free_port(), free_port()
        graphql = f"http://127.0.0.1:{ui_port}/graphql"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TWIML_", "DAGSTER_"))}
        users_file = base / "web" / "users.json"
        env.update(
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            # This checkout's code, also where the venv's editable install points elsewhere.
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")])),
            TWIML_WEB_USERS_FILE=str(users_file),
            DAGSTER_HOME=str(home),
            TWIML_STORAGE_ROOT=str(root),
            TWIML_FEED_URL=feed_url,
            TWIML_SENSOR_STATUS="stopped",
            DAGSTER_GRAPHQL_URL=graphql,
            TWIML_WEB_POLL_SECONDS="1",
        )
        subprocess.run(
            [str(BIN / "twiml-transcribe"), "users", "add", USER, "--password-stdin"],
            input=PASSWORD + "\n",
            text=True,
            cwd=REPO,
            env=env,
            check=True,
            timeout=120,
            capture_output=True,
        )
        processes = Processes(logs)
        try:
            processes.start(
                "dagster",
                [
                    str(BIN / "dagster"),
                    "dev",
                    "-w",
                    "workspace.yaml",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    str(ui_port),
                ],
                env,
            )
            processes.start(
                "web", [str(BIN / "twiml-transcribe"), "web", "--port", str(web_port)], env
            )
            web = f"http://127.0.0.1:{web_port}"
            wait_for(
                "the Dagster code location",
                DagsterClient(graphql, timeout=5).repository,
                180,
                processes,
                interval=1,
            )
            wait_for(
                "the web app",
                lambda: (
                    requests.get(f"{web}/healthz", timeout=5).json()
                    == {"storage": "ok", "dagster": "ok"}
                ),
                60,
                processes,
            )
            yield Live(
                web,
                graphql,
                root,
                processes,
                upload_clip,
                Path(os.environ.get("TWIML_WEB_SCREENSHOTS") or base / "screenshots"),
                users_file,
            )
        finally:
            processes.stop()


@pytest.fixture(scope="module")
def browser(live: Live):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, live: Live):
    context = browser.new_context(accept_downloads=True, viewport={"width": 1000, "height": 720})
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert not errors, errors


@pytest.fixture
def signed_in(page, live: Live):
    """``page`` after signing in through the form."""
    from playwright.sync_api import expect

    page.goto(f"{live.web}/login?next=/")
    page.fill("#username", USER)
    page.fill("#password", PASSWORD)
    page.click("#login-button")
    expect(page.locator("#signed-in-as")).to_have_text(USER)
    assert page.url == f"{live.web}/"
    return page


def stored(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def runs_of(live: Live, key: str) -> list:
    return DagsterClient(live.dagster, timeout=10).runs(key, limit=5)


def screenshot(page, live: Live, name: str) -> Path:
    live.screenshots.mkdir(parents=True, exist_ok=True)
    target = live.screenshots / name
    page.screenshot(path=str(target))
    assert target.stat().st_size < MAX_SCREENSHOT_BYTES, (name, target.stat().st_size)
    return target


# -- the tests ---------------------------------------------------------------------------------
def test_transcribe_button_runs_the_episode_and_timestamps_seek(signed_in, live: Live) -> None:
    from playwright.sync_api import expect

    page = signed_in

    page.goto(f"{live.web}/episodes/ep-1")
    status = page.locator("#status")
    expect(status).to_have_text("not started")
    assert page.locator("ol.transcript").count() == 0

    started = time.monotonic()
    page.click("#transcribe")
    expect(status).to_have_text(re.compile("queued|running"), timeout=10_000)
    expect(page.locator("#transcribe")).to_be_disabled()
    expect(page.locator("#progress")).to_be_visible()
    assert page.url == f"{live.web}/episodes/ep-1"  # fetch(), not a page load

    # The page polls; when the run ends it reloads itself with the transcript.
    expect(page.locator("ol.transcript")).to_be_visible(timeout=RUN_TIMEOUT * 1000)
    expect(status).to_have_text("done")
    seconds = time.monotonic() - started
    assert (live.root / "markdown/1.md").exists()

    # A timestamp jumps the player there (HTTP Range lets the browser seek).
    link = page.locator("a.ts").last
    start = float(link.get_attribute("data-start"))
    link.click()
    page.wait_for_function("() => !document.getElementById('player').paused", timeout=10_000)
    current = page.evaluate("document.getElementById('player').currentTime")
    assert start - 0.05 <= current <= start + 2.0, (start, current)
    assert page.url == f"{live.web}/episodes/ep-1"
    page.evaluate("document.getElementById('player').pause()")
    screenshot(page, live, "web-episode.png")
    print(f"ep-1 transcribed through the web page in {seconds:.0f}s")


def test_upload_runs_and_downloads_the_transcript(signed_in, live: Live) -> None:
    from playwright.sync_api import expect

    page = signed_in

    page.goto(f"{live.web}/upload")
    page.set_input_files("#audio", str(live.upload_clip))
    page.check("input[name=format][value=md]")
    screenshot(page, live, "web-upload.png")

    started = time.monotonic()
    with page.expect_download(timeout=RUN_TIMEOUT * 1000) as info:
        page.click("#upload-button")
        expect(page.locator("#status")).to_have_text(re.compile("queued|running|done"))
    download = info.value
    seconds = time.monotonic() - started
    key = re.search(r"/episodes/(up-[0-9a-f]{12})", page.url).group(1)
    assert download.suggested_filename == f"{key}.md"
    text = Path(download.path()).read_text()
    assert text.startswith("__SPEAKER_00__ _(0h 0m "), text[:200]
    missing = [w for w in EXPECTED_WORDS if w not in text.lower()]
    assert not missing, (missing, text)

    # The page then shows the transcript; the list shows both episodes done.
    expect(page.locator("ol.transcript")).to_be_visible()
    assert "download=" not in page.url
    page.goto(f"{live.web}/")
    rows = dict(
        (r.get_attribute("data-key"), r.get_attribute("data-status"))
        for r in page.locator("tr[data-key]").all()
    )
    assert rows == {"ep-3": "not started", "ep-2": "not started", "ep-1": "done", key: "done"}
    screenshot(page, live, "web-episodes.png")
    page.fill("#q", "diarization")
    page.click("form.search button")
    expect(page.locator("tr[data-key]")).to_have_count(1)
    print(f"upload transcribed and downloaded in {seconds:.0f}s")

    # The same bytes again: nothing new is stored or run, the transcript comes at once.
    page.goto(f"{live.web}/upload")
    page.set_input_files("#audio", str(live.upload_clip))
    page.check("input[name=format][value=srt]")
    with page.expect_download(timeout=30_000) as again:
        page.click("#upload-button")
    assert again.value.suggested_filename == f"{key}.srt"
    assert "-->" in Path(again.value.path()).read_text()


# -- sign-in ---------------------------------------------------------------------------------
def test_anonymous_visitor_cannot_transcribe_or_upload(page, live: Live) -> None:
    from playwright.sync_api import expect

    page.goto(f"{live.web}/episodes/ep-2")
    expect(page.locator("#status")).to_have_text("not started")
    assert page.locator("#transcribe").count() == 0
    expect(page.locator("#sign-in-to-transcribe")).to_be_visible()
    expect(page.locator("#sign-in")).to_have_text("Sign in")
    page.goto(f"{live.web}/upload")
    assert page.locator("#upload-form").count() == 0 and page.locator("#audio").count() == 0
    expect(page.locator("#sign-in-to-upload")).to_be_visible()

    before = stored(live.root)
    transcribe = f"{live.web}/episodes/ep-2/transcribe"
    assert page.request.post(transcribe, headers=JSON).status == 401
    form = page.request.post(transcribe, max_redirects=0)
    assert form.status == 303 and form.headers["location"] == "/login?next=/episodes/ep-2"
    clip = {"name": "a.wav", "mimeType": "audio/wav", "buffer": live.upload_clip.read_bytes()}
    upload = page.request.post(
        f"{live.web}/upload", multipart={"audio": clip, "format": "md"}, max_redirects=0
    )
    assert upload.status == 303 and upload.headers["location"] == "/login?next=/upload"
    # A script on the page (the browser sends its Origin and cookies) fares no better.
    status = page.evaluate(SCRIPT_POST, "ep-2")
    assert status == 401
    assert runs_of(live, "ep-2") == [] and stored(live.root) == before


def test_posts_without_the_csrf_token_are_refused(signed_in, live: Live) -> None:
    from playwright.sync_api import expect

    page = signed_in
    page.goto(f"{live.web}/episodes/ep-3")
    expect(page.locator("#transcribe")).to_be_enabled()
    token = page.get_attribute('meta[name="csrf-token"]', "content")
    assert token and page.get_attribute("#transcribe-form input[name=csrf_token]", "value") == token

    before = stored(live.root)
    status = page.evaluate(SCRIPT_POST, "ep-3")
    assert status == 403
    transcribe = f"{live.web}/episodes/ep-3/transcribe"
    for headers in (JSON, {**JSON, "x-csrf-token": token[::-1]}):
        assert page.request.post(transcribe, headers=headers).status == 403
    clip = {"name": "a.wav", "mimeType": "audio/wav", "buffer": live.upload_clip.read_bytes()}
    for fields in ({}, {"csrf_token": "forged"}):
        upload = page.request.post(
            f"{live.web}/upload", multipart={"audio": clip, "format": "md", **fields}, headers=JSON
        )
        assert upload.status == 403, upload.text()
    assert runs_of(live, "ep-3") == [] and stored(live.root) == before
    expect(page.locator("#status")).to_have_text("not started")


def test_session_cookie_flags_and_sign_out(signed_in, live: Live) -> None:
    from playwright.sync_api import expect

    page = signed_in
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["twiml_session"]
    assert session["httpOnly"] and session["sameSite"] == "Lax" and session["path"] == "/"
    assert not session["secure"]  # plain http here; https is covered in test_web_auth.py
    assert 11 * 3600 < session["expires"] - time.time() <= 12 * 3600
    assert page.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot read it
    assert "twiml_login" not in cookies  # the pre-session cookie ends with the sign-in

    page.click("#sign-out")
    expect(page.locator("#sign-in")).to_be_visible()
    assert "twiml_session" not in {c["name"] for c in page.context.cookies()}
    page.goto(f"{live.web}/episodes/ep-3")
    assert page.locator("#transcribe").count() == 0


def test_wrong_password_and_unknown_user_look_the_same_then_429(page, live: Live) -> None:
    """Last: it leaves 127.0.0.1 blocked from signing in for the window (15 min)."""

    def attempt(name: str, password: str) -> tuple[int, str, dict[str, str]]:
        page.goto(f"{live.web}/login")
        page.fill("#username", name)
        page.fill("#password", password)
        with page.expect_response(
            lambda r: r.url == f"{live.web}/login" and r.request.method == "POST"
        ) as info:
            page.click("#login-button")
        page.wait_for_load_state()
        return info.value.status, page.locator("main").inner_text(), info.value.headers

    wrong, unknown = attempt(USER, "not the password"), attempt("nobody", "not the password")
    assert wrong[:2] == unknown[:2]
    assert wrong[0] == 401 and "Wrong user name or password." in wrong[1]
    answers = [attempt(USER, f"guess {n}") for n in range(4)]
    assert [a[0] for a in answers] == [401, 401, 401, 429]  # the sixth attempt, after 5 failures
    blocked = attempt(USER, PASSWORD)  # even the right password now
    assert blocked[0] == 429 and int(blocked[2]["retry-after"]) > 0
    assert blocked[1] == attempt("nobody", "x" * 8)[1]  # the same message whichever user
    assert "Too many failed sign-ins" in blocked[1]
    assert "twiml_session" not in {c["name"] for c in page.context.cookies()}
