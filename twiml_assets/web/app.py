"""The FastAPI app: episode list, episode page, transcript downloads, audio, uploads, sign-in.

Server-rendered HTML (Jinja2, autoescaped) reading the storage root directly; Dagster is
reached only through :class:`DagsterClient`, and no request waits for a run: launching
queues it, and the pages poll ``/api/episodes/{key}`` for progress. Transcribe and upload
need a signed-in user and a CSRF token (auth.py); reading may stay public.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from resources.storage import StorageError, StorageResource
from twiml_assets.audio.fingerprint import ChromaprintMissingError
from twiml_assets.audio.links import Link, published_fingerprints, read_link
from twiml_assets.audio.uploads import (
    SidecarIndex,
    UndecodableUploadError,
    UploadError,
    UploadLimits,
    format_size,
    register_upload,
    stage_upload,
)
from twiml_assets.catchup import ledger
from twiml_assets.feed.source import EpisodeInfo
from twiml_assets.keys import is_upload_key, is_valid_key
from twiml_assets.web.audit import AuditLog
from twiml_assets.web.auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    LOGIN_COOKIE,
    LOGIN_COOKIE_SECONDS,
    OPEN_PATHS,
    Auth,
    SignInRequired,
    Viewer,
    load_secret,
    safe_next,
)
from twiml_assets.web.dagster_client import DagsterClient, DagsterUnavailableError, RunInfo
from twiml_assets.web.http import (
    AllowedHosts,
    SecurityHeaders,
    Site,
    has_form,
    read_limited_form,
    read_small_form,
    wants_json,
    whole_number,
)
from twiml_assets.web.library import (
    FORMATS,
    STATUSES,
    DamagedTranscriptError,
    Library,
    episode_status,
    failure_json,
)
from twiml_assets.web.limits import SlidingWindow
from twiml_assets.web.settings import WebSettings
from twiml_assets.web.users import MAX_PASSWORD, UsersError, UserStore

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
PAGE_SIZE = 50
MIB = 1024 * 1024
ADD_USER_HINT = "twiml-transcribe users add NAME"
WRONG_LOGIN = "Wrong user name or password."
TOO_MANY_LOGINS = "Too many failed sign-ins. Wait a while, then try again."
BUSY_LOGINS = "Too many sign-ins at this moment. Try again in a few seconds."
STORAGE_DOWN = "storage unavailable, try again"
UNDECODABLE = (
    "the file cannot be decoded as audio: it may be cut off or damaged; check that it plays, "
    "then upload it again"
)
INTERNAL_ERROR = "something went wrong on the server; the error is in its log"
MAX_PAGE_DIGITS = 6  # page numbers up to 999999: far past any list, and cheap to parse
# Password checks at once: each argon2id verify holds 64 MiB for its time. One more is
# answered 503 at once (nothing waits, no thread is held) and its attempt does not count.
MAX_VERIFYING = 4
T = TypeVar("T")


def attempt(
    call: Callable[[], T], default: T, error: type[Exception] = DagsterUnavailableError
) -> tuple[T, bool]:
    """(``call()``, True), or (``default``, False) when the service behind it is unavailable."""
    try:
        return call(), True
    except error:
        return default, False


class ServiceUnavailableError(UploadError):
    """An upload that could not be registered for a reason of this host, not of the file."""

    status = 503


def parse_similarity(text: str) -> float | None:
    """The similarity an upload's redirect carries, when it is a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0.0 <= value <= 1.0 else None


def page_number(text: str) -> int:
    """The ``?page=`` number (empty: 1): 1 to 999999 in ASCII digits, else a 400, never a
    500."""
    number = whole_number(text, MAX_PAGE_DIGITS) if text else 1
    if number is None or number < 1:
        raise HTTPException(400, f"page must be a whole number from 1 to {'9' * MAX_PAGE_DIGITS}")
    return number


class App(FastAPI):
    """FastAPI with SecurityHeaders around Starlette's error middleware too, so the 500 of an
    unexpected exception carries the same headers as every other answer."""

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())


def link_json(link: Link | None) -> dict[str, Any] | None:
    """The link for the status JSON: the two keys and how alike they sound."""
    if link is None:
        return None
    return {
        "episode": link.episode,
        "upload": link.upload,
        "similarity": link.similarity,
        "transcript_reusable": link.reusable,
    }


def create_app(settings: WebSettings | None = None) -> FastAPI:
    """The app for ``settings`` (default: from the environment)."""
    settings = settings or WebSettings.from_env()
    root = {"root": settings.storage_root} if settings.storage_root else {}
    storage = StorageResource(**root)
    dagster = DagsterClient(settings.graphql_url, timeout=settings.graphql_timeout)
    library, sidecars = Library(storage), SidecarIndex(storage)
    fingerprints = published_fingerprints(storage)  # read once each, reused by every upload
    launch_locks: dict[str, threading.Lock] = {}
    locks_lock = threading.Lock()
    users = UserStore(settings.users_file)
    users.dummy_hash()
    auth = Auth(settings, users, load_secret(settings))
    site = Site(settings.public_url, auth.scheme)
    same_origin = site.same_origin
    audit = AuditLog(settings.audit_path)
    login_failures = SlidingWindow(settings.login_max_failures, settings.login_window_seconds)
    uploads_done = SlidingWindow(settings.uploads_per_hour, 3600.0)
    proxy_mode = bool(settings.proxy_user_header and settings.trusted_proxies)
    verifying = threading.BoundedSemaphore(MAX_VERIFYING)
    logged: set[str] = set()  # problems of the host logged once, not at every request

    def log_once(message: str) -> None:
        if message not in logged:
            logged.add(message)
            log.error("%s", message)

    def no_users() -> bool:
        """True when nobody can sign in (the pages then say how to add a user).

        A users file that cannot be read or parsed is not "no users": its problem is logged
        (once; the file's name and the parse error, never its contents), sign-in answers the
        usual "wrong name or password", and the pages do not suggest adding a user.
        """
        try:
            return not users.users() and not proxy_mode
        except UsersError as exc:
            log_once(f"nobody can sign in with a password until the users file is fixed: {exc}")
            return False

    if no_users():
        log.warning(
            "no web users in %s: nobody can transcribe or upload; add one with `%s`",
            settings.users_file,
            ADD_USER_HINT,
        )

    def episode_state(key: str, link: Link | None) -> dict[str, Any]:
        """The JSON the pages poll: status, run progress, download links once done."""
        run, reachable = attempt(lambda: dagster.latest_run(key), None)
        done = library.is_done(key)
        failures = library.failures(key).get(key)
        return {
            "key": key,
            "status": episode_status(done, run, failures, settings.max_attempts),
            "done": done,
            "failure": None if done else failure_json(failures),
            "run": run.to_json() if run else None,
            "dagster": "ok" if reachable else "unavailable",
            "downloads": {f: f"/episodes/{key}/transcript.{f}" for f in FORMATS} if done else {},
            "link": link_json(link),
        }

    def launch(key: str) -> tuple[RunInfo, bool]:
        """(run, newly launched): an active run is reused; the key's lock stops two clicks (or an
        upload and a click) at the same moment from both seeing "no run" and launching two."""
        with locks_lock:
            lock = launch_locks.setdefault(key, threading.Lock())
        with lock:
            current = dagster.runs(key, limit=1)
            if current and current[0].active:
                return current[0], False
            # A person asked for it: a given-up episode's attempts count from zero again.
            ledger.retry(storage, key)
            return dagster.launch(key), True

    def require_reader(request: Request) -> None:
        """With TWIML_WEB_PUBLIC_READ off, every route but sign-in and health needs a user."""
        if settings.public_read or request.url.path in OPEN_PATHS:
            return
        query = f"?{request.url.query}" if request.url.query else ""
        auth.require_user(request, safe_next(request.url.path + query))

    async def sent_token(request: Request) -> object:
        """The CSRF token of a POST: the ``X-CSRF-Token`` header, else the form field."""
        header = request.headers.get(CSRF_HEADER)
        if header is not None or not has_form(request):
            return header
        return (await read_small_form(request)).get(CSRF_FIELD)

    def upload_limits(viewer: Viewer) -> tuple[UploadLimits, int]:
        """(size and type limits, uploads per hour) of ``viewer``: their own, else global."""
        user = users.get(viewer.name or "")
        max_bytes = settings.limits.max_bytes
        per_hour = settings.uploads_per_hour
        if user is not None and user.max_upload_mb is not None:
            max_bytes = int(user.max_upload_mb * MIB)
        if user is not None and user.uploads_per_hour is not None:
            per_hour = user.uploads_per_hour
        return UploadLimits(max_bytes, settings.limits.types), per_hour

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # The published episodes' fingerprints are read in the background at start, so the
        # first upload does not wait for hundreds of storage reads.
        threading.Thread(target=warm_fingerprints, name="fingerprints", daemon=True).start()
        yield

    def warm_fingerprints() -> None:
        try:
            fingerprints.refresh()
        except Exception as exc:  # noqa: BLE001 - storage down: the first upload reads them
            log.warning("could not read the episodes' fingerprints yet: %s", exc)

    app = App(
        title="twiml-transcribe",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        dependencies=[Depends(require_reader)],
        lifespan=lifespan,
    )
    app.add_middleware(AllowedHosts, site=site)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals.update(
        formats=FORMATS,
        limits=settings.limits,
        poll_seconds=settings.poll_seconds,
        max_upload=format_size(settings.limits.max_bytes),
    )

    def render(
        request: Request,
        name: str,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        **context: Any,
    ) -> Response:
        viewer = auth.viewer(request)
        query = f"?{request.url.query}" if request.url.query else ""
        context.update(
            viewer=viewer,
            csrf_token=viewer.csrf,
            here=safe_next(request.url.path + query),
            no_users=no_users(),
            add_user_hint=ADD_USER_HINT,
        )
        response = templates.TemplateResponse(
            request, name, context, status_code=status_code, headers=headers
        )
        if viewer.signed_in:  # pages with a CSRF token are never cached
            response.headers["cache-control"] = "no-store"
        return response

    def login_page(
        request: Request,
        target: str,
        status_code: int = 200,
        error: str = "",
        headers: dict[str, str] | None = None,
    ) -> Response:
        token, cookie = auth.login_token(request)
        response = render(
            request, "login.html", status_code, headers, login_csrf=token, next=target, error=error
        )
        response.headers["cache-control"] = "no-store"
        if cookie:
            auth.set_cookie(response, request, LOGIN_COOKIE, cookie, LOGIN_COOKIE_SECONDS)
        return response

    def episode_or_404(key: str) -> EpisodeInfo:
        episode = library.episode(key)
        if episode is None:
            raise HTTPException(404, "no such episode")
        return episode

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if wants_json(request) or request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=exc.status_code)
        return render(
            request, "error.html", exc.status_code, message=message, status=exc.status_code
        )

    @app.exception_handler(SignInRequired)
    async def sign_in_required(request: Request, exc: SignInRequired) -> Response:
        if wants_json(request) or request.url.path.startswith("/api/"):
            return JSONResponse({"error": "sign in first"}, status_code=401)
        return RedirectResponse(f"/login?next={quote(exc.next_path, safe='/')}", status_code=303)

    @app.exception_handler(DamagedTranscriptError)
    async def damaged_transcript(request: Request, exc: DamagedTranscriptError) -> Response:
        """A stored record the pages cannot read (logged by Library): say which, no traceback."""
        if wants_json(request) or request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(exc)}, status_code=500)
        return render(request, "error.html", 500, message=str(exc), status=500)

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        """A bug: one sentence for the client; Starlette re-raises it for the server log."""
        if wants_json(request) or request.url.path.startswith("/api/"):
            return JSONResponse({"error": INTERNAL_ERROR}, status_code=500)
        try:
            return render(request, "error.html", 500, message=INTERNAL_ERROR, status=500)
        except Exception:  # noqa: BLE001 - the page itself failed: plain text, still no details
            log.exception("the error page failed too")
            return PlainTextResponse(INTERNAL_ERROR, status_code=500)

    @app.exception_handler(StorageError)
    async def storage_error(request: Request, exc: StorageError) -> Response:
        log.error("storage error on %s: %s", request.url.path, exc)
        return render(
            request, "error.html", 503, message="the storage is not available", status=503
        )

    @app.get("/")
    def index(request: Request, q: str = "", status: str = "", page: str = "1") -> Response:
        """Every episode with its status; ``q`` searches titles (and keys)."""
        wanted = page_number(page)  # a bad number is a 400 before any work
        episodes = library.episodes()
        done = library.done_keys()
        runs, reachable = attempt(dagster.latest_runs, {})
        failures = library.failures()
        needle = q.strip().lower()[:200]
        status = status if status in STATUSES else ""
        rows = [
            {
                "episode": e,
                "status": episode_status(
                    e.key in done, runs.get(e.key), failures.get(e.key), settings.max_attempts
                ),
                "failure": None if e.key in done else failure_json(failures.get(e.key)),
                "upload": is_upload_key(e.key),
            }
            for e in episodes
            if not needle or needle in e.title.lower() or needle in e.key
        ]
        rows = [row for row in rows if not status or row["status"] == status]
        pages = max(1, math.ceil(len(rows) / PAGE_SIZE))
        page_no = min(wanted, pages)
        return render(
            request,
            "index.html",
            rows=rows[(page_no - 1) * PAGE_SIZE : page_no * PAGE_SIZE],
            total=len(rows),
            all_count=len(episodes),
            q=q[:200],
            status=status,
            statuses=STATUSES,
            page_no=page_no,
            pages=pages,
            dagster_ok=reachable,
        )

    @app.get("/episodes/{key}")
    def episode_page(
        request: Request, key: str, download: str = "", notice: str = "", similarity: str = ""
    ) -> Response:
        episode = episode_or_404(key)
        link = read_link(storage, key)
        state = episode_state(key, link)
        return render(
            request,
            "episode.html",
            episode=episode,
            state=state,
            transcript=library.transcript(key),
            has_audio=library.audio_relpath(key) is not None,
            upload=is_upload_key(key),
            download=download if download in FORMATS else "",
            notice=notice if notice in {"linked", "uploaded"} else "",
            similarity=parse_similarity(similarity),
            link=link,
            linked_episode=library.episode(link.other(key)) if link else None,
            dagster_ok=state["dagster"] == "ok",
        )

    @app.get("/upload")
    def upload_form(request: Request) -> Response:
        viewer = auth.viewer(request)
        limits = upload_limits(viewer)[0] if viewer.signed_in else settings.limits
        return render(
            request,
            "upload.html",
            error="",
            limits=limits,
            max_upload=format_size(limits.max_bytes),
        )

    # -- sign-in ----------------------------------------------------------------------------
    @app.get("/login")
    def login_form(request: Request) -> Response:
        target = safe_next(request.query_params.get("next"))
        if auth.viewer(request).signed_in:
            return RedirectResponse(target, status_code=303)
        return login_page(request, target)

    @app.post("/login", dependencies=[Depends(same_origin)])
    async def login(request: Request) -> Response:
        """Sign in; a wrong password and an unknown name get the same answer, as slowly.

        The attempt is counted before the password is verified, atomically, so concurrent
        requests cannot all pass the check: at most ``login_max_failures`` verifications per
        window per address. The name's failures from every address stop only addresses that
        have failed that name themselves, so nobody can lock a user out from elsewhere. A
        right password gives the attempt back and clears the name's counts.
        """
        form = await read_small_form(request)
        target = safe_next(str(form.get("next") or ""))
        if not auth.check_login_token(request, form.get(CSRF_FIELD)):
            message = "The sign-in form has expired or came from elsewhere; try again."
            return login_page(request, target, 403, message)
        name = str(form.get("username") or "")[:200]
        password = str(form.get("password") or "")[:MAX_PASSWORD]
        address = auth.address(request)
        known = users.get(name)
        who = known.name if known else None  # an unknown name may be a mistyped password
        folded = name.strip().lower()[:64]
        keys = [f"ip:{address}", f"pair:{address}|{folded}"]
        shared = {f"user:{folded}": keys[1]}
        wait = login_failures.take_all(keys, shared)
        if wait:
            audit.record("login_failed", who, address, reason="rate limited")
            return login_page(request, target, 429, TOO_MANY_LOGINS, {"retry-after": str(wait)})
        if not verifying.acquire(blocking=False):
            login_failures.give_back(*keys, *shared)  # not verified: the attempt does not count
            audit.record("login_failed", who, address, reason="busy")
            return login_page(request, target, 503, BUSY_LOGINS, {"retry-after": "2"})
        try:
            user = await run_in_threadpool(users.authenticate, name, password)
        finally:
            verifying.release()
        if user is None:
            audit.record("login_failed", who, address, reason="wrong name or password")
            return login_page(request, target, 401, WRONG_LOGIN)
        login_failures.give_back(keys[0])
        for key in (keys[1], *shared):
            login_failures.clear(key)
        response = RedirectResponse(target, status_code=303)
        auth.start_session(response, request, user.name)
        audit.record("login", user.name, address)
        return response

    @app.post("/logout", dependencies=[Depends(same_origin)])
    async def logout(request: Request) -> Response:
        viewer = auth.viewer(request)
        response = RedirectResponse("/", status_code=303)
        if viewer.via != "session":  # anonymous, or signed in by the proxy: nothing to end
            return response
        auth.check_csrf(viewer, await sent_token(request))
        auth.end_session(response, request, viewer)
        audit.record("logout", viewer.name, auth.address(request))
        return response

    async def writer(request: Request, next_path: str) -> Viewer:
        """The signed-in user of a same-origin POST with a valid CSRF token."""
        same_origin(request)
        viewer = auth.require_user(request, next_path)
        auth.check_csrf(viewer, await sent_token(request))
        return viewer

    async def transcribe_writer(request: Request, key: str) -> None:
        await writer(request, f"/episodes/{key}")

    @app.api_route("/episodes/{key}/audio", methods=["GET", "HEAD"])
    def audio(key: str) -> Response:
        """The stored audio; Starlette's FileResponse answers Range requests (seeking)."""
        if not is_valid_key(key):
            raise HTTPException(404, "no such episode")
        found = library.audio_file(key)
        if found is None:
            raise HTTPException(404, "no audio stored for this episode")
        path, media_type = found
        return FileResponse(
            path, media_type=media_type, headers={"cache-control": "private, max-age=3600"}
        )

    @app.api_route("/episodes/{key}/transcript.{fmt}", methods=["GET", "HEAD"])
    def transcript_file(key: str, fmt: str) -> Response:
        if not is_valid_key(key) or fmt not in FORMATS:
            raise HTTPException(404, "no such transcript")
        data = library.download(key, fmt)
        if data is None:
            raise HTTPException(404, "no transcript yet")
        return Response(
            data,
            media_type=FORMATS[fmt].media_type,
            headers={"content-disposition": f'attachment; filename="{key}.{fmt}"'},
        )

    @app.get("/api/episodes/{key}")
    def status_json(key: str) -> JSONResponse:
        episode_or_404(key)
        return JSONResponse(
            episode_state(key, read_link(storage, key)), headers={"cache-control": "no-store"}
        )

    @app.post("/episodes/{key}/transcribe", dependencies=[Depends(transcribe_writer)])
    def transcribe(request: Request, key: str) -> Response:
        """Queue the episode's run and return at once; the page polls for progress."""
        episode_or_404(key)
        try:
            run, launched = launch(key)
        except DagsterUnavailableError as exc:
            raise HTTPException(503, str(exc)) from None
        audit.record(
            "transcribe",
            auth.viewer(request).name,
            auth.address(request),
            key=key,
            launched=launched,
            run=run.run_id,
        )
        if wants_json(request):
            return JSONResponse(
                {"key": key, "launched": launched, "run": run.to_json()}, status_code=202
            )
        return RedirectResponse(f"/episodes/{key}", status_code=303)

    @app.post("/upload", dependencies=[Depends(same_origin)])
    async def upload(request: Request) -> Response:
        """Store the file as ``up-<hash>`` (or link a published duplicate), launch its run, and
        send the browser to its page with ``?download=<fmt>``: the download starts once done.

        The user, the hourly count and a header CSRF token are checked before the body is
        read; a form-field token right after parsing, before anything is staged or stored.
        """
        viewer = auth.require_user(request, "/upload")
        header_token = request.headers.get(CSRF_HEADER)
        if header_token is not None:
            auth.check_csrf(viewer, header_token)
        limits, per_hour = upload_limits(viewer)
        count_key = f"upload:{viewer.name}"
        wait = uploads_done.take(count_key, per_hour)
        if wait:
            message = (
                f"upload limit reached: at most {per_hour} upload"
                f"{'s' if per_hour != 1 else ''} per hour; try again in {-(-wait // 60)} min"
            )
            log.info("upload refused (429) for %s: %s", viewer.name, message)
            if wants_json(request):
                return JSONResponse(
                    {"error": message}, status_code=429, headers={"retry-after": str(wait)}
                )
            return render(
                request,
                "upload.html",
                429,
                {"retry-after": str(wait)},
                error=message,
                limits=limits,
                max_upload=format_size(limits.max_bytes),
            )
        form = None

        def refuse(exc: UploadError) -> Response:
            log.info("upload refused (%s): %s", exc.status, exc)
            if wants_json(request):
                return JSONResponse({"error": str(exc)}, status_code=exc.status)
            return render(
                request,
                "upload.html",
                exc.status,
                error=str(exc),
                limits=limits,
                max_upload=format_size(limits.max_bytes),
            )

        counted = False
        try:
            form = await read_limited_form(request, limits.max_bytes)
            if header_token is None:
                auth.check_csrf(viewer, form.get(CSRF_FIELD))
            file = form.get("audio")
            fmt = str(form.get("format") or "md")
            if fmt not in FORMATS:
                raise UploadError(f"unknown transcript format {fmt[:20]!r}")
            if not isinstance(file, UploadFile):
                raise UploadError("choose an audio file to upload")
            staged = await run_in_threadpool(stage_upload, file.file, limits, file.filename)
            counted = True
        except UploadError as exc:
            return refuse(exc)
        finally:
            if form is not None:
                await form.close()
            if not counted:  # refused uploads do not count towards the hourly limit
                uploads_done.give_back(count_key)
        registered = None
        try:
            registered = await run_in_threadpool(
                register_upload, storage, staged, sidecars, fingerprints
            )
        except UndecodableUploadError as exc:  # audio by its first bytes, but undecodable
            # The decoder's words name the staged temporary file: for the log only.
            log.warning("upload %s by %s cannot be decoded: %s", staged.key, viewer.name, exc)
            return refuse(UndecodableUploadError(UNDECODABLE))
        except UploadError as exc:
            return refuse(exc)
        except ChromaprintMissingError as exc:  # the web host lacks libchromaprint or ffmpeg
            log_once(f"uploads cannot be fingerprinted on this host: {exc}")
            return refuse(ServiceUnavailableError(str(exc)))
        except StorageError as exc:
            log.error("storage error while registering an upload: %s", exc)
            return refuse(ServiceUnavailableError(STORAGE_DOWN))
        finally:
            staged.discard()
            if registered is None:  # refused (or failed) at registration: does not count
                uploads_done.give_back(count_key)
        key = registered.key
        run_json, launched, error = None, False, None
        if not library.is_done(key):
            try:
                run, launched = await run_in_threadpool(launch, key)
                run_json = run.to_json()
            except DagsterUnavailableError as exc:
                error = str(exc)
        audit.record(
            "upload",
            viewer.name,
            auth.address(request),
            key=key,
            size=staged.size,
            sha256=staged.sha256,
            linked=registered.linked,
            stored=registered.stored,
            launched=launched,
        )
        notice = "linked" if registered.linked else "uploaded"
        target = f"/episodes/{key}?download={fmt}&notice={notice}"
        if registered.similarity is not None:
            target += f"&similarity={registered.similarity:.2f}"
        if wants_json(request):
            return JSONResponse(
                {
                    "key": key,
                    "linked": registered.linked,
                    "similarity": registered.similarity,
                    "stored": registered.stored,
                    "launched": launched,
                    "run": run_json,
                    "error": error,
                    "episode_url": target,
                    "download_url": f"/episodes/{key}/transcript.{fmt}",
                },
                status_code=202,
            )
        return RedirectResponse(target, status_code=303)

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        up = {
            "storage": attempt(lambda: storage.list("feed"), None, StorageError)[1],
            "dagster": attempt(dagster.repository, None)[1],
        }
        body = {name: "ok" if ok else "unavailable" for name, ok in up.items()}
        return JSONResponse(body, status_code=200 if up["storage"] else 503)

    return app
