"""The chaos catch-up: a real daemon catching up a faulty feed into a stalling S3 server.

Shared by ``tests/test_catchup_chaos.py`` (which asserts) and ``bench/chaos_catchup.py``
(which prints the figures). One call of :func:`run_chaos` does everything:

- **feed**: ``good`` generated two-speaker episodes (espeak-ng, ≈6 s each, made once and
  cached), plus one corrupt episode (random bytes behind an ID3 header) and one whose
  enclosure answers 404, served over real HTTP by ``LocalHTTPServer``. A seeded draw picks
  20 % of the good episodes whose first audio GET answers 503 and 5 % whose first GET is
  cut off mid-body (full Content-Length, then the connection closes);
- **storage**: a moto S3 server in its own process (``tests/s3_server.py``);
- **Dagster**: the project's ``dagster.yaml`` (SQLite, queued runs, gpu pool, run
  monitoring, run retries) with test-sized intervals, the code location in a code server
  and ``dagster-daemon run``; the feed sensor requests the episodes, the failure sensors
  record failures;
- **models**: stand-ins by default (``ChaosSettings.standin_models``): the code server
  serves ``tests.standin_definitions``, the project's definitions with the deterministic,
  model-free ASR, diariser and voice encoder of ``tests/standin_models.py``. This is a
  test of orchestration; loading torch and the models in each of its ~33 run workers cost
  CPU and time and told it nothing. The model step is still the real
  ``transcribe_and_diarise`` asset in the gpu pool, decoding each episode for real (the
  corrupt one still fails at its decode) and spending a quarter of the audio's length, so
  a worker can be killed in it.
  ``standin_models=False`` serves ``twiml_assets.definitions`` with the real models
  (``bench/chaos_catchup.py --models real``);
- **chaos**: the run worker of the first good episode that enters ``transcribe_and_diarise``
  is SIGKILLed; later, while runs are active, the S3 server is SIGSTOPped for
  ``s3_stall_seconds`` (its state kept) and SIGCONTinued;
- **settle**: every episode done or given up, no run queued or running, every failed run in
  its episode's ledger, and so for ``settle_quiet_seconds``; then everything the checks
  need is collected into a :class:`ChaosReport`.
"""

from __future__ import annotations

import contextlib
import email.utils
import hashlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
JOB = "episode_pipeline"
MODEL_STEP = "transcribe_and_diarise"
BUCKET = "podcast"
PREFIX = "chaos"
PARTITION_TAG = "dagster/partition"

TOPICS = (
    ("speech recognition", "Long recordings are hard because the model hears thirty seconds."),
    ("speaker diarization", "Diarization tells us who spoke when in a conversation."),
    ("word error rates", "Keep a few reference transcripts and measure every change."),
    ("voice activity detection", "Silence is removed before decoding the speech."),
    ("language models", "Large models predict the next word from the words before it."),
    ("data pipelines", "Every step writes files that the next step reads again."),
    ("graph neural networks", "Nodes pass messages to their neighbours at every layer."),
    ("reinforcement learning", "An agent learns from rewards while it explores."),
    ("computer vision", "Cameras produce pixels and the network finds the objects."),
    ("recommender systems", "Users see items that people like them enjoyed before."),
    ("time series forecasting", "Yesterday and last week both help to predict tomorrow."),
    ("model compression", "Smaller weights make the model faster on a phone."),
    ("federated learning", "The data stays on the device and only updates travel."),
    ("robotics", "The robot plans a path and then corrects it as it moves."),
    ("fairness in machine learning", "We compare the errors across groups of people."),
    ("protein folding", "The shape of a protein decides what it can do."),
    ("autonomous driving", "The car must see the road in rain and at night."),
    ("search engines", "Documents are ranked by how well they answer the question."),
    ("music generation", "The model writes a melody one note at a time."),
    ("medical imaging", "Scans are read by a model and checked by a doctor."),
    ("climate models", "Weather data from many decades trains the network."),
    ("chat assistants", "The assistant answers questions and asks when unsure."),
    ("vector databases", "Embeddings are stored so that similar texts are found fast."),
    ("active learning", "The model asks people to label the hardest examples."),
    ("causal inference", "We want to know what would happen if we changed one thing."),
    ("edge computing", "Inference runs next to the sensor instead of in the cloud."),
    ("synthetic data", "Generated examples fill the gaps in the real data set."),
    ("anomaly detection", "Rare events stand out from the usual pattern."),
    ("translation", "Sentences move from one language to another with their meaning."),
    ("privacy", "Noise is added so that no single person can be identified."),
    ("hardware accelerators", "Chips built for matrices make training much faster."),
    ("open source models", "Anyone can download the weights and study them."),
    ("evaluation benchmarks", "A good benchmark measures what users actually need."),
    ("prompt engineering", "The way a question is written changes the answer."),
)


# -- settings and the fault plan ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ChaosSettings:
    good: int = 30
    seed: int = 13
    share_503: float = 0.20
    share_cut: float = 0.05
    s3_stall_seconds: float = 20.0
    stall_after_done: int = 8  # stall S3 once this many episodes are done (and runs active)
    sensor_interval: int = 5
    retry_cooldown: float = 15.0
    max_attempts: int = 3
    max_runs_per_tick: int = 4
    max_in_flight: int = 4
    s3_timeout: float = 2.0  # a stalled S3 call fails after ≈5 × 2 s and backoff
    monitoring_poll_seconds: int = 5
    free_slots_after_seconds: int = 5
    threads_per_run: int = 1  # OMP/MKL threads of a run: two runs share two cores
    settle_quiet_seconds: float = 15.0
    settle_timeout: float = 1200.0
    standin_models: bool = True  # tests.standin_definitions; False: the real models

    @property
    def code_location(self) -> str:
        """The module the code server serves (and its run workers load)."""
        return "tests.standin_definitions" if self.standin_models else "twiml_assets.definitions"


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """Which episode gets which fault, drawn once from the seed."""

    numbers: tuple[int, ...]  # every episode of the feed, 1..n
    corrupt: int
    missing: int  # its enclosure answers 404
    unavailable: frozenset[int]  # first GET answers 503
    cut_off: frozenset[int]  # first GET sends part of the body, then closes

    @classmethod
    def draw(cls, settings: ChaosSettings) -> FaultPlan:
        rng = random.Random(settings.seed)
        numbers = tuple(range(1, settings.good + 3))
        corrupt, missing = rng.sample(numbers, 2)
        good = [n for n in numbers if n not in (corrupt, missing)]
        n503 = max(1, round(settings.share_503 * len(good)))
        ncut = max(1, round(settings.share_cut * len(good)))
        faulty = rng.sample(good, n503 + ncut)
        return cls(numbers, corrupt, missing, frozenset(faulty[:n503]), frozenset(faulty[n503:]))

    @property
    def good(self) -> list[int]:
        return [n for n in self.numbers if n not in (self.corrupt, self.missing)]

    @property
    def clean(self) -> list[int]:
        """Good episodes without a download fault (the kill's candidates)."""
        return [n for n in self.good if n not in self.unavailable | self.cut_off]


def key(n: int) -> str:
    return f"ep-{n}"


# -- the episodes: generated once, cached --------------------------------------------------------
def cache_dir() -> Path:
    base = os.environ.get("TWIML_CHAOS_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "twiml-transcribe" / "chaos"


def episode_lines(i: int) -> tuple[tuple[str, str], ...]:
    topic, sentence = TOPICS[i % len(TOPICS)]
    return (("HOST", f"Today we talk about {topic}."), ("GUEST", sentence))


@dataclass(frozen=True, slots=True)
class Clip:
    path: Path
    duration: float


def clips(count: int, directory: Path | None = None) -> list[Clip]:
    """``count`` different short dialogues as MP3, generated on the first call only."""
    from twiml_assets.demo.synth import synthesize_dialogue

    out = []
    directory = directory or cache_dir()
    for i in range(count):
        lines = episode_lines(i)
        digest = hashlib.sha256(json.dumps([lines, i, "v2"]).encode()).hexdigest()[:12]
        path = directory / f"clip-{i:03d}-{digest}.mp3"
        meta = path.with_suffix(".json")
        if not (path.is_file() and meta.is_file()):
            directory.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp.mp3")
            episode = synthesize_dialogue(tmp, lines, seed=i)
            os.replace(tmp, path)
            meta.write_text(json.dumps({"duration": episode.duration}))
        out.append(Clip(path, json.loads(meta.read_text())["duration"]))
    return out


# -- the faulty feed -----------------------------------------------------------------------------
class ChaosFeed:
    """The feed and its audio on a LocalHTTPServer, with the plan's faults on first GETs."""

    def __init__(self, server: Any, plan: FaultPlan, audio: dict[int, bytes], durations: dict):
        self.server, self.plan = server, plan
        self.lock = threading.Lock()
        self.gets: Counter[str] = Counter()
        self.served: Counter[str] = Counter()  # fault kind → times served
        self.sha256 = {n: hashlib.sha256(data).hexdigest() for n, data in audio.items()}
        episodes = []
        from twiml_assets.demo.feed_server import DemoEpisode, render_rss

        for n in plan.numbers:
            path = f"audio/{n}.mp3"
            data = audio.get(n, b"")
            if n != plan.missing:
                server.put(path, data, "audio/mpeg")
            if n in plan.unavailable | plan.cut_off:
                server.hooks["/" + path] = self._first_get_fails
            episodes.append(
                DemoEpisode(
                    n,
                    f"Chaos episode {n} - #{n}",
                    f"Episode {n} of the chaos feed.",
                    path,
                    len(data) or 100_000,
                    durations.get(n, 6.0),
                    email.utils.formatdate(1704103200 + n * 86400, usegmt=True),
                    f"chaos-guid-{n}",
                )
            )
        server.put("feed.xml", render_rss(episodes, server.base_url))
        self.url = server.url("feed.xml")

    def _first_get_fails(self, handler: Any) -> bool:
        if handler.command != "GET":
            return False
        route = handler.route
        with self.lock:
            self.gets[route] += 1
            first = self.gets[route] == 1
        if not first:
            return False
        n = int(route.rsplit("/", 1)[1].split(".")[0])
        if n in self.plan.unavailable:
            with self.lock:
                self.served["503"] += 1
            handler.send_plain(503, "service unavailable (chaos)\n")
            return True
        resource = self.server.lookup(route)
        body = resource.body
        headers = {
            "Content-Type": resource.content_type,
            "Content-Length": str(len(body)),
            "ETag": resource.etag,
            "Last-Modified": email.utils.formatdate(resource.last_modified, usegmt=True),
            "Accept-Ranges": "bytes",
        }
        handler.send_headers(200, headers)
        handler.wfile.write(body[: len(body) // 2])
        handler.wfile.flush()
        handler.close_connection = True
        with contextlib.suppress(OSError):
            handler.connection.shutdown(socket.SHUT_RDWR)
        with self.lock:
            self.served["cut"] += 1
        return True

    def audio_requests(self) -> dict[int, list[dict[str, str]]]:
        """Every GET of each episode's audio: its headers, in order."""
        out: dict[int, list[dict[str, str]]] = defaultdict(list)
        for command, route, headers in list(self.server.log):
            match = re.fullmatch(r"/audio/(\d+)\.mp3", route)
            if command == "GET" and match:
                out[int(match.group(1))].append(headers)
        return dict(out)


# -- processes -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_group(process: subprocess.Popen, timeout: float = 60) -> None:
    """Ctrl+C to a process started in a session of its own and all its children."""
    if process.poll() is None or _group_alive(process.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        deadline = time.time() + timeout
        while time.time() < deadline and _group_alive(process.pid):
            process.poll()
            time.sleep(0.5)
        if _group_alive(process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def instance_yaml(home: Path, settings: ChaosSettings) -> None:
    """The project's dagster.yaml with test-sized run-monitoring intervals."""
    config = yaml.safe_load((REPO / "dagster.yaml").read_text())
    config["run_monitoring"].update(
        poll_interval_seconds=settings.monitoring_poll_seconds,
        free_slots_after_run_end_seconds=settings.free_slots_after_seconds,
    )
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


# -- the report ----------------------------------------------------------------------------------
@dataclass(slots=True)
class RunInfo:
    run_id: str
    key: str
    status: str
    created: float
    start: float | None
    end: float | None
    tags: dict[str, str]
    events: Counter  # event type → count
    step_retries: list[tuple[str, str]]  # (step, reason) of each STEP_UP_FOR_RETRY
    materialised: Counter  # asset → count
    engine_messages: list[str]
    steps_started: list[str]
    steps_succeeded: list[str]
    step_spans: list[tuple[str, float, float | None]] = field(default_factory=list)


@dataclass(slots=True)
class ChaosReport:
    settings: ChaosSettings
    plan: FaultPlan
    started: float = 0.0  # the daemon's start
    first_run: float | None = None
    settled_at: float | None = None
    runs: list[RunInfo] = field(default_factory=list)
    statuses: dict[str, Any] = field(default_factory=dict)  # key → EpisodeStatus
    ledgers: dict[str, Any] = field(default_factory=dict)  # key → FailureLedger
    objects: list[str] = field(default_factory=list)  # every key in the bucket
    multipart_uploads: list[str] = field(default_factory=list)
    local_leftovers: list[str] = field(default_factory=list)  # staging/cache temp files
    stored_audio_sha256: dict[str, str] = field(default_factory=dict)  # key → the sidecar's
    served_audio_sha256: dict[str, str] = field(default_factory=dict)  # key → the feed's
    pool_claimed: list[Any] = field(default_factory=list)
    pool_pending: list[Any] = field(default_factory=list)
    pool_slots: int = 0
    audio_requests: dict[int, list[dict[str, str]]] = field(default_factory=dict)
    served: dict[str, int] = field(default_factory=dict)
    kills: list[dict[str, Any]] = field(default_factory=list)
    stall: dict[str, Any] = field(default_factory=dict)
    timeline: list[tuple[float, str]] = field(default_factory=list)

    # -- derived figures
    @property
    def settle_seconds(self) -> float | None:
        return None if self.settled_at is None else self.settled_at - self.started

    def runs_of(self, episode_key: str) -> list[RunInfo]:
        return sorted((r for r in self.runs if r.key == episode_key), key=lambda r: r.created)

    def states(self) -> Counter:
        return Counter(s.state.value for s in self.statuses.values())

    def overlapping_runs(self) -> list[tuple[str, str]]:
        """Pairs of runs of one episode whose lifetimes overlap."""
        pairs = []
        by_key = defaultdict(list)
        for r in self.runs:
            by_key[r.key].append(r)
        for runs in by_key.values():
            for i, a in enumerate(runs):
                for b in runs[i + 1 :]:
                    a0, a1 = a.start or a.created, a.end or time.time()
                    b0, b1 = b.start or b.created, b.end or time.time()
                    if a0 < b1 and b0 < a1:
                        pairs.append((a.run_id, b.run_id))
        return pairs

    def runs_after_done(self) -> list[str]:
        """Runs created after their episode's first successful run ended."""
        late = []
        by_key = defaultdict(list)
        for r in self.runs:
            by_key[r.key].append(r)
        for runs in by_key.values():
            done = [r.end for r in runs if r.status == "SUCCESS" and r.end]
            if done:
                late += [r.run_id for r in runs if r.created > min(done)]
        return late

    def step_retries(self) -> Counter:
        """STEP_UP_FOR_RETRY by (step, reason's error class)."""
        out: Counter = Counter()
        for r in self.runs:
            for step, reason in r.step_retries:
                out[(step, reason)] += 1
        return out

    def run_retries(self) -> list[RunInfo]:
        """Runs the daemon's run_retries launched (a parent run that crashed)."""
        return [r for r in self.runs if "dagster/parent_run_id" in r.tags]

    def sensor_rerequests(self) -> list[RunInfo]:
        """Runs the feed sensor requested again after a failure (attempt 2 or more)."""
        return [
            r
            for r in self.runs
            if "dagster/parent_run_id" not in r.tags and int(r.tags.get("twiml/attempt", 1)) > 1
        ]

    def download_retries(self) -> dict[str, int]:
        """GETs of an episode's audio after its first one, by the fault of the first."""
        out = {"503": 0, "cut": 0, "other": 0}
        for n, gets in self.audio_requests.items():
            extra = max(0, len(gets) - 1)
            kind = (
                "503"
                if n in self.plan.unavailable
                else "cut"
                if n in self.plan.cut_off
                else "other"
            )
            out[kind] += extra
        return out

    def steps_across_stall(self) -> list[str]:
        """Steps running while S3 was stopped: episode, step and how long each took."""
        start, end = self.stall.get("start"), self.stall.get("end")
        if start is None:
            return []
        spans = [  # a step of a killed run ends with its run
            (r.key, step, began, stop or r.end or end)
            for r in self.runs
            for step, began, stop in r.step_spans
        ]
        return [
            f"{key} {step} {stop - began:.1f} s"
            for key, step, began, stop in spans
            if began < end and stop > start
        ]

    def figures(self) -> dict[str, Any]:
        states = self.states()
        retries = self.step_retries()
        by_reason: Counter = Counter()
        for (_, reason), count in retries.items():
            by_reason[reason] += count
        downloads = self.download_retries()
        return {
            "episodes": len(self.plan.numbers),
            "done": states.get("done", 0),
            "given_up": states.get("given_up", 0),
            "other_states": {k: v for k, v in states.items() if k not in ("done", "given_up")},
            "runs": len(self.runs),
            "first_gets_503": self.served.get("503", 0),
            "first_gets_cut_off": self.served.get("cut", 0),
            "download_retries_after_503": downloads["503"],
            "download_retries_after_cut_off": downloads["cut"],
            "download_retries_other": downloads["other"],
            "cut_off_downloads_resumed_with_range": sum(
                1
                for n, gets in self.audio_requests.items()
                if n in self.plan.cut_off and any("Range" in g for g in gets[1:])
            ),
            "step_retries": sum(retries.values()),
            "step_retries_by_step_and_error": {f"{s}: {e}": c for (s, e), c in retries.items()},
            "step_retries_by_error": dict(by_reason),
            "run_retries": len(self.run_retries()),
            "sensor_rerequests": len(self.sensor_rerequests()),
            "killed_runs": len(self.kills),
            "s3_stall_seconds": round(self.stall.get("seconds", 0.0), 1),
            "steps_across_s3_stall": self.steps_across_stall(),
            "killed_run_ledger_reasons": [
                a.reason
                for k in self.kills
                for a in getattr(self.ledgers.get(k["key"]), "attempts", [])
                if a.run_id == k["run_id"]
            ],
            "settle_seconds": None if self.settle_seconds is None else round(self.settle_seconds),
            "first_run_to_settle_seconds": None
            if self.settled_at is None or self.first_run is None
            else round(self.settled_at - self.first_run),
            "duplicate_runs": len(self.overlapping_runs()) + len(self.runs_after_done()),
            "gpu_slots_claimed_after_settle": len(self.pool_claimed),
            "gpu_steps_pending_after_settle": len(self.pool_pending),
            "storage_temp_objects": len(temp_objects(self.objects)),
            "multipart_uploads_left": len(self.multipart_uploads),
        }


def temp_objects(objects: list[str]) -> list[str]:
    """Bucket keys that look like partial or temporary files."""
    bad = []
    for obj in objects:
        name = obj.rsplit("/", 1)[-1]
        if name.startswith(".") or re.search(r"\.(part|tmp|temp|partial)(\.|$)|~$", name):
            bad.append(obj)
    return bad


# -- the run ---------------------------------------------------------------------------------
class Chaos:
    """One catch-up under faults; ``run()`` returns the report."""

    def __init__(self, workdir: Path, settings: ChaosSettings | None = None, log=print):  # noqa: ANN001
        self.workdir = Path(workdir)
        self.settings = settings or ChaosSettings()
        self.plan = FaultPlan.draw(self.settings)
        self.report = ChaosReport(self.settings, self.plan)
        self.log = log
        self.processes: list[subprocess.Popen] = []
        self.stalled = threading.Event()
        self.stall_thread: threading.Thread | None = None

    def note(self, text: str) -> None:
        t = time.time() - (self.report.started or time.time())
        self.report.timeline.append((round(t, 1), text))
        self.log(f"[chaos {t:7.1f}s] {text}")

    # -- set-up
    def run(self) -> ChaosReport:
        from tests.s3_server import provision, start_server
        from twiml_assets.demo.http_server import LocalHTTPServer

        self.workdir.mkdir(parents=True, exist_ok=True)
        made = clips(len(self.plan.good))
        audio = {n: made[i].path.read_bytes() for i, n in enumerate(self.plan.good)}
        durations = {n: made[i].duration for i, n in enumerate(self.plan.good)}
        rng = random.Random(self.settings.seed)
        audio[self.plan.corrupt] = b"ID3\x04\x00\x00\x00\x00\x00\x00" + rng.randbytes(40_000)

        endpoint, self.moto = start_server(log=self.workdir / "moto.log")
        self.processes.append(self.moto)
        try:
            writer, _ = provision(endpoint, BUCKET)
            with LocalHTTPServer() as server, self._env(endpoint, writer):
                self.feed = ChaosFeed(server, self.plan, audio, durations)
                self.endpoint = endpoint
                self._start_dagster()
                self._catch_up()
                self._collect()
                self.report.audio_requests = self.feed.audio_requests()
                self.report.served = dict(self.feed.served)
        finally:
            if self.stall_thread is not None:
                self.stall_thread.join(timeout=self.settings.s3_stall_seconds + 10)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.moto.pid, signal.SIGCONT)
            for process in reversed(self.processes[1:]):
                stop_group(process)
            if self.moto.poll() is None:
                self.moto.terminate()
                self.moto.wait(timeout=10)
        return self.report

    @contextlib.contextmanager
    def _env(self, endpoint: str, writer: tuple[str, str]) -> Iterator[None]:
        """This process's own S3 client settings (statuses, listings), restored after."""
        names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "TWIML_S3_TIMEOUT")
        saved = {n: os.environ.get(n) for n in names}
        os.environ.update(
            AWS_ACCESS_KEY_ID=writer[0],
            AWS_SECRET_ACCESS_KEY=writer[1],
            TWIML_S3_TIMEOUT=str(self.settings.s3_timeout),
        )
        self.writer = writer
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def _start_dagster(self) -> None:
        s = self.settings
        self.home = self.workdir / "dagster_home"
        instance_yaml(self.home, s)
        self.tmp = self.workdir / "tmp"
        self.tmp.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TWIML_", "DAGSTER_"))}
        env.update(
            DAGSTER_HOME=str(self.home),
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
            PYTHONPATH=str(REPO),  # this checkout's code, not the venv's editable install
            TMPDIR=str(self.tmp),  # the runs' download staging and S3 read cache
            AWS_ACCESS_KEY_ID=self.writer[0],
            AWS_SECRET_ACCESS_KEY=self.writer[1],
            TWIML_FEED_URL=self.feed.url,
            TWIML_STORAGE_ROOT=f"s3://{BUCKET}/{PREFIX}",
            TWIML_S3_ENDPOINT_URL=self.endpoint,
            TWIML_S3_TIMEOUT=str(s.s3_timeout),
            TWIML_SENSOR_INTERVAL=str(s.sensor_interval),
            TWIML_SENSOR_STATUS="running",
            TWIML_MAX_RUNS_PER_TICK=str(s.max_runs_per_tick),
            TWIML_MAX_IN_FLIGHT=str(s.max_in_flight),
            TWIML_MAX_ATTEMPTS=str(s.max_attempts),
            TWIML_RETRY_COOLDOWN=str(s.retry_cooldown),
            TWIML_CATCHUP_ORDER="oldest_first",
            OMP_NUM_THREADS=str(s.threads_per_run),
            MKL_NUM_THREADS=str(s.threads_per_run),
        )
        self.env = env
        port = free_port()
        workspace = self.workdir / "workspace.yaml"
        workspace.write_text(
            yaml.safe_dump(
                {
                    "load_from": [
                        {
                            "grpc_server": {
                                "host": "127.0.0.1",
                                "port": port,
                                "location_name": "twiml_assets",
                            }
                        }
                    ]
                }
            )
        )
        code_log = self.workdir / "code-server.log"
        self.code_server = subprocess.Popen(
            [str(BIN / "dagster"), "code-server", "start", "-h", "127.0.0.1", "-p", str(port)]
            + ["-m", s.code_location],
            cwd=REPO,
            env=env,
            stdout=code_log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its gRPC server and run workers are in its group
        )
        self.processes.append(self.code_server)
        self._wait_serving(port, code_log)
        daemon_log = self.workdir / "daemon.log"
        self.daemon = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
            cwd=REPO,
            env=env,
            stdout=daemon_log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(self.daemon)
        self.report.started = time.time()
        self.note(f"daemon started ({s.code_location}); faults: {self._plan_text()}")

    def _plan_text(self) -> str:
        p = self.plan
        return (
            f"corrupt ep-{p.corrupt}, 404 ep-{p.missing}, "
            f"503 {sorted(p.unavailable)}, cut-off {sorted(p.cut_off)}"
        )

    def _wait_serving(self, port: int, log: Path) -> None:
        from dagster._grpc.client import DagsterGrpcClient

        client = DagsterGrpcClient(port=port, host="127.0.0.1")
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.code_server.poll() is not None:
                raise RuntimeError(f"code server exited: {log.read_text()[-3000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                if client.health_check_query() == "SERVING":
                    return
            time.sleep(0.5)
        raise RuntimeError(f"code server not serving: {log.read_text()[-3000:]}")

    # -- the catch-up and the chaos
    def _catch_up(self) -> None:
        from dagster import DagsterInstance, RunsFilter
        from dagster._core.instance.ref import InstanceRef

        s = self.settings
        deadline = time.time() + s.settle_timeout
        quiet_since = None
        with DagsterInstance.from_ref(InstanceRef.from_dir(str(self.home))) as instance:
            self.instance = instance
            while time.time() < deadline:
                for process in (self.code_server, self.daemon):
                    if process.poll() is not None:
                        raise RuntimeError(f"{process.args[:3]} exited with {process.returncode}")
                try:
                    runs = instance.get_runs(RunsFilter(job_name=JOB))
                except Exception as exc:  # noqa: BLE001 - SQLite busy: next poll
                    self.log(f"instance busy: {exc}")
                    time.sleep(1)
                    continue
                if runs and self.report.first_run is None:
                    self.report.first_run = min(r_created(instance, r) for r in runs)
                    self.note("first run requested")
                self._maybe_kill(instance, runs)
                self._maybe_stall(instance, runs)
                if self.stalled.is_set() or (self.stall_thread and self.stall_thread.is_alive()):
                    quiet_since = None
                elif self._settled(instance, runs):
                    quiet_since = quiet_since or time.time()
                    if time.time() - quiet_since >= s.settle_quiet_seconds:
                        self.report.settled_at = quiet_since
                        self.note("settled")
                        return
                else:
                    quiet_since = None
                time.sleep(0.5)
        self.note("settle timeout")

    def _maybe_kill(self, instance: Any, runs: list) -> None:
        """SIGKILL the worker of a clean episode's run as its model step starts."""
        from dagster import DagsterEventType, DagsterRunStatus

        if any(k["landed"] is not False for k in self.report.kills):
            self._confirm_kills(instance)
            return
        clean = {key(n) for n in self.plan.clean}
        killed = {k["key"] for k in self.report.kills}
        for run in runs:
            episode = run.tags.get(PARTITION_TAG)
            if run.status != DagsterRunStatus.STARTED or episode not in clean - killed:
                continue
            events = instance.all_logs(
                run.run_id, of_type={DagsterEventType.STEP_START, DagsterEventType.ENGINE_EVENT}
            )
            model_started = any(
                e.dagster_event.event_type == DagsterEventType.STEP_START
                and e.step_key == MODEL_STEP
                for e in events
            )
            if not model_started:
                continue
            pid = None
            for e in events:
                if (e.user_message or e.message or "").startswith("Started process for run"):
                    pid = int(e.dagster_event.engine_event_data.metadata["pid"].value)
            line = cmdline(pid) if pid else ""
            if not pid or "multiprocessing" not in line or os.getpgid(pid) != self.code_server.pid:
                continue
            os.kill(pid, signal.SIGKILL)
            self.report.kills.append(
                {
                    "run_id": run.run_id,
                    "key": episode,
                    "pid": pid,
                    "at": time.time(),
                    "landed": None,
                }
            )
            self.note(
                f"SIGKILL run worker pid {pid} of {episode} ({run.run_id[:8]}) in {MODEL_STEP}"
            )
            return

    def _confirm_kills(self, instance: Any) -> None:
        """Did the kill land during the model step? (Not if the step had just finished.)"""
        from dagster import DagsterEventType

        for kill in self.report.kills:
            if kill["landed"] is not None:
                continue
            run = instance.get_run_by_id(kill["run_id"])
            if not run.is_finished:
                continue
            events = instance.all_logs(run.run_id, of_type={DagsterEventType.STEP_SUCCESS})
            kill["landed"] = not any(e.step_key == MODEL_STEP for e in events)
            kill["status"] = run.status.value
            self.note(
                f"killed run {run.run_id[:8]} ended {run.status.value}; in model step: "
                f"{kill['landed']}"
            )

    def _maybe_stall(self, instance: Any, runs: list) -> None:
        """SIGSTOP the S3 server for a while once enough is done and a run has just started
        (its first steps read and write storage)."""
        from dagster import DagsterEventType, DagsterRunStatus

        if self.stall_thread is not None:
            return
        done = sum(1 for r in runs if r.status == DagsterRunStatus.SUCCESS)
        active = [r for r in runs if r.status == DagsterRunStatus.STARTED]
        if done < self.settings.stall_after_done:
            return
        starting = [
            r
            for r in active
            if not instance.all_logs(r.run_id, of_type={DagsterEventType.STEP_SUCCESS})
        ]
        if not starting:
            return
        self.report.stall = {"active_runs": [r.tags.get(PARTITION_TAG) for r in active]}
        self.stall_thread = threading.Thread(target=self._stall, daemon=True)
        self.stall_thread.start()

    def _stall(self) -> None:
        seconds = self.settings.s3_stall_seconds
        os.kill(self.moto.pid, signal.SIGSTOP)
        self.stalled.set()
        started = time.time()
        self.note(f"S3 server SIGSTOP (runs active: {self.report.stall['active_runs']})")
        try:
            time.sleep(seconds)
        finally:
            os.kill(self.moto.pid, signal.SIGCONT)
            self.stalled.clear()
            self.report.stall.update(start=started, end=time.time(), seconds=time.time() - started)
            self.note("S3 server SIGCONT")

    def _settled(self, instance: Any, runs: list) -> bool:
        """Every episode done or given up, nothing in flight, every failure in the ledger."""
        from twiml_assets.catchup import ledger
        from twiml_assets.catchup.status import EpisodeState, RetryRules, episode_statuses

        if not runs or any(not r.is_finished for r in runs):
            return False
        if any(k["landed"] is None for k in self.report.kills):
            return False
        storage = self.storage()
        rules = RetryRules(self.settings.max_attempts, self.settings.retry_cooldown)
        keys = [key(n) for n in self.plan.numbers]
        try:
            statuses = episode_statuses(instance, storage, rules, keys)
            ledgers = ledger.load_all(storage)
        except Exception as exc:  # noqa: BLE001 - S3 briefly unreachable: not settled
            self.log(f"status unavailable: {exc}")
            return False
        final = (EpisodeState.DONE, EpisodeState.GIVEN_UP)
        if any(st.state not in final for st in statuses.values()):
            return False
        recorded = {a.run_id for lg in ledgers.values() for a in lg.attempts}
        failed = [r.run_id for r in runs if r.status.value in ("FAILURE", "CANCELED")]
        return all(run_id in recorded for run_id in failed)

    def storage(self) -> Any:
        from resources.storage import StorageResource

        return StorageResource(
            root=f"s3://{BUCKET}/{PREFIX}",
            endpoint_url=self.endpoint,
            timeout_seconds=self.settings.s3_timeout,
        )

    # -- what the checks need
    def _collect(self) -> None:
        from dagster import RunsFilter

        from twiml_assets.catchup import ledger
        from twiml_assets.catchup.status import RetryRules, episode_statuses
        from twiml_assets.layout import EpisodeFiles

        instance, report = self.instance_for_collect(), self.report
        with instance:
            # Slots of finished runs are freed free_slots_after_run_end_seconds after their end.
            deadline = time.time() + 4 * (
                self.settings.free_slots_after_seconds + self.settings.monitoring_poll_seconds
            )
            while True:
                info = instance.event_log_storage.get_concurrency_info("gpu")
                if (not info.claimed_slots and not info.pending_steps) or time.time() > deadline:
                    break
                time.sleep(1)
            report.pool_claimed = list(info.claimed_slots)
            report.pool_pending = list(info.pending_steps)
            report.pool_slots = info.slot_count
            records = instance.get_run_records(RunsFilter(job_name=JOB))
            report.runs = [run_info(instance, rec) for rec in records]
            storage = self.storage()
            rules = RetryRules(self.settings.max_attempts, self.settings.retry_cooldown)
            keys = [key(n) for n in self.plan.numbers]
            report.statuses = episode_statuses(instance, storage, rules, keys)
            report.ledgers = ledger.load_all(storage)
        client = storage.backend().client
        paginator = client.get_paginator("list_objects_v2")
        report.objects = [
            obj["Key"]
            for page in paginator.paginate(Bucket=BUCKET)
            for obj in page.get("Contents", [])
        ]
        uploads = client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
        report.multipart_uploads = [u["Key"] for u in uploads]
        (self.workdir / "objects.json").write_text(json.dumps(report.objects, indent=1))
        report.local_leftovers = [
            str(p.relative_to(self.tmp))
            for folder in ("twiml-transcribe-downloads", "twiml-transcribe-s3")
            for p in (self.tmp / folder).rglob("*")
            if p.is_file() and (p.name.startswith(".") or p.name.endswith(".part"))
        ]
        for n in self.plan.good:
            sidecar = storage.read_json(EpisodeFiles(key(n)).audio_sidecar)
            report.stored_audio_sha256[key(n)] = sidecar["sha256"]
            report.served_audio_sha256[key(n)] = self.feed.sha256[n]

    def instance_for_collect(self) -> Any:
        from dagster import DagsterInstance
        from dagster._core.instance.ref import InstanceRef

        return DagsterInstance.from_ref(InstanceRef.from_dir(str(self.home)))


def r_created(instance: Any, run: Any) -> float:
    from dagster import RunsFilter

    (record,) = instance.get_run_records(RunsFilter(run_ids=[run.run_id]))
    return record.create_timestamp.timestamp()


def run_info(instance: Any, record: Any) -> RunInfo:
    from dagster import DagsterEventType

    run = record.dagster_run
    events: Counter = Counter()
    retries, engine, started, succeeded = [], [], [], []
    materialised: Counter = Counter()
    spans: list[tuple[str, float, float | None]] = []
    for e in instance.all_logs(run.run_id):
        if not e.dagster_event:
            continue
        if e.dagster_event.event_type_value in STEP_ENDS and spans and spans[-1][0] == e.step_key:
            spans[-1] = (e.step_key, spans[-1][1], e.timestamp)
        event = e.dagster_event
        events[event.event_type_value] += 1
        if event.event_type == DagsterEventType.STEP_UP_FOR_RETRY:
            error = event.event_specific_data.error
            retries.append((e.step_key, error_class(error)))
        elif event.event_type == DagsterEventType.ENGINE_EVENT:
            engine.append(e.message or "")
        elif event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
            materialised[event.asset_key.to_user_string()] += 1
        elif event.event_type == DagsterEventType.STEP_START:
            started.append(e.step_key)
            spans.append((e.step_key, e.timestamp, None))
        elif event.event_type == DagsterEventType.STEP_SUCCESS:
            succeeded.append(e.step_key)
    return RunInfo(
        run.run_id,
        run.tags.get(PARTITION_TAG, ""),
        run.status.value,
        record.create_timestamp.timestamp(),
        record.start_time,
        record.end_time,
        dict(run.tags),
        events,
        retries,
        materialised,
        engine,
        started,
        succeeded,
        spans,
    )


STEP_ENDS = {"STEP_SUCCESS", "STEP_FAILURE", "STEP_UP_FOR_RETRY"}
WRAPPERS = ("Failure", "DagsterExecutionStepExecutionError", "RetryRequested")


def error_class(error: Any) -> str:
    """The class of a serialised error, under Dagster's wrappers (``StorageUnavailableError``)."""
    names = []
    link = error
    while link is not None:
        names.append(getattr(link, "cls_name", None) or "?")
        link = getattr(link, "cause", None) or getattr(link, "context", None)
    return next((n for n in names if n not in WRAPPERS), names[-1] if names else "?")


def run_chaos(workdir: Path, settings: ChaosSettings | None = None, log=print) -> ChaosReport:  # noqa: ANN001
    return Chaos(workdir, settings, log).run()
