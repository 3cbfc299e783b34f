"""ASR and diarisation of one decoded waveform at the same time, within the machine's cores.

Neither model needs the other's output, and CTranslate2's decoding of a small model
leaves cores idle, so the speaker-attributed transcript can cost about what the
transcript alone costs. Running two models at once is only safe under these rules:

- *Cores*: ASR threads + diarisation threads <= the cores this process may use
  (``os.sched_getaffinity``, ``OMP_NUM_THREADS``), split by ``plan_threads``, with one
  exception. Batched ASR (``cpu-fast``) keeps every core at normal priority, as it would
  alone, and the offline diariser runs beside it on every core at the lowest CPU priority
  (``run_in_background_priority``: nice 19 on its thread and the onnxruntime threads it
  starts, Linux only), so it takes only the cycles the ASR leaves idle: batched decoding
  of a small model keeps two cores far from busy, and its diarisation is cheap. Unbatched
  decoding leaves too few idle cycles for ``cpu-dev``'s diarisation, which then runs past
  the ASR; there the split is faster (docs/benchmarks.md). A ``cpu_threads`` the user set
  is kept as given.
- *One worker*: diarisation runs in a single worker thread; nothing else is queued on it.
- *Progress in the caller's thread*: Dagster's log and the Pipes message writer are not
  written from two threads, so the worker's progress goes through a bounded queue
  (``ProgressRelay``) that the caller's thread drains; when it is full, the oldest report
  is dropped (the newer one supersedes it), so the last report always arrives.
- *Failures*: a failure in either stage (or an interrupt) stops the other at its next
  progress report (ASR reports per decoded segment, the offline diariser per 5-minute
  segmentation block; a hub pipeline not at all, so it runs to its end), and the call
  returns only when both threads are done, since both read the waveform's scratch file,
  which the caller closes afterwards.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from resources.asr import WhisperASR, cuda_available
from resources.audio import SAMPLE_RATE, AudioSource
from resources.cores import available_cores, background_priority_works, run_in_background_priority
from resources.diarisation import PyannoteDiariser
from resources.diarisation.settings import OFFLINE
from resources.schema import AsrResult, DiarisationResult

StageCallback = Callable[[str, float, float], None]
"""Progress: (stage name, seconds of audio done, total seconds)."""

PROGRESS_QUEUE_SIZE = 32
DRAIN_SECONDS = 0.5  # how often the caller's thread relays progress while it waits


class Cancelled(Exception):
    """The other stage failed: this one stops at its next progress report."""


@dataclass(frozen=True, slots=True)
class ThreadPlan:
    """Threads per stage while both run; 0 leaves a stage's library default.
    ``diariser_in_background``: the diariser's threads run at the lowest priority."""

    asr_threads: int
    diariser_threads: int
    diariser_in_background: bool = False


def plan_threads(
    cores: int,
    asr_on_gpu: bool,
    diariser_on_gpu: bool,
    asr_batched: bool = False,
    diariser_can_yield: bool = True,
) -> ThreadPlan | None:
    """How to share ``cores`` between the two stages; None: run them one after the other.

    On one core there is nothing to share. A stage on the GPU still needs one core to feed
    it; the other gets the rest. With both on the CPU, batched ASR and a diariser that can
    yield (onnxruntime, on Linux) each get every core and the diariser runs in the
    background (module docstring); otherwise each gets half the cores (the ASR the odd one).
    """
    if asr_on_gpu and diariser_on_gpu:
        return ThreadPlan(0, 0)
    if cores < 2:
        return None
    if asr_on_gpu:
        return ThreadPlan(1, cores - 1)
    if diariser_on_gpu:
        return ThreadPlan(cores - 1, 1)
    if asr_batched and diariser_can_yield:
        return ThreadPlan(cores, cores, diariser_in_background=True)
    return ThreadPlan(cores - cores // 2, cores // 2)


class ProgressRelay:
    """Progress from the worker thread, delivered in the caller's thread (bounded queue)."""

    def __init__(self, progress: StageCallback | None, maxsize: int = PROGRESS_QUEUE_SIZE):
        self.progress = progress
        self.queue: queue.Queue[tuple[str, float, float]] = queue.Queue(maxsize)
        self.cancelled = threading.Event()

    def from_worker(self, stage: str) -> Callable[[float, float], None]:
        """The worker's callback: queues a report, or stops the worker once cancelled."""

        def report(done: float, total: float) -> None:
            if self.cancelled.is_set():
                raise Cancelled(f"{stage} stopped: the other stage failed")
            while True:
                try:
                    self.queue.put_nowait((stage, done, total))
                    return
                except queue.Full:  # the oldest report is superseded by this one: drop it
                    with contextlib.suppress(queue.Empty):
                        self.queue.get_nowait()

        return report

    def drain(self, timeout: float = 0.0) -> None:
        """Deliver what is queued; wait up to ``timeout`` s for the first report."""
        try:
            item = self.queue.get(timeout=timeout) if timeout else self.queue.get_nowait()
        except queue.Empty:
            return
        while True:
            if self.progress is not None:
                self.progress(*item)
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return


def run_asr_and_diarisation(
    waveform: AudioSource,
    asr: WhisperASR,
    diariser: PyannoteDiariser,
    *,
    initial_prompt: str | None = None,
    num_speakers: int | None = None,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    progress: StageCallback | None = None,
    overlap: bool = True,
) -> tuple[AsrResult, DiarisationResult, dict[str, float]]:
    """ASR and diarisation of one waveform; concurrently when ``overlap`` and cores allow.

    Timings: each stage's own seconds, and ``models``, the wall time of both together.
    """
    speakers = dict(num_speakers=num_speakers, min_speakers=min_speakers, max_speakers=max_speakers)
    plan = plan_for(asr, diariser) if overlap else None
    started = time.perf_counter()
    if plan is None:
        asr_result = transcribe_while_loading(
            waveform, asr, diariser, initial_prompt, stage(progress, "transcribe"), overlap
        )
        diarisation = diarise(waveform, diariser, speakers, stage(progress, "diarise"))
        overlapped = False
    else:
        asr_result, diarisation = run_both(
            waveform, asr, diariser, plan, initial_prompt, speakers, progress
        )
        overlapped = True
    timings = {
        "asr": asr_result.seconds,
        "diarisation": diarisation.seconds,
        "models": time.perf_counter() - started,
    }
    diarisation.details["overlapped_with_asr"] = overlapped
    return asr_result, diarisation, timings


def plan_for(asr: WhisperASR, diariser: PyannoteDiariser) -> ThreadPlan | None:
    asr_settings = asr.settings()
    asr_device = asr_settings.device
    diariser_settings = diariser.settings()
    diariser_device = diariser_settings.device
    gpu = cuda_available() if "auto" in (asr_device, diariser_device) else False
    return plan_threads(
        available_cores(),
        asr_on_gpu=asr_device == "cuda" or (asr_device == "auto" and gpu),
        diariser_on_gpu=diariser_device.startswith("cuda") or (diariser_device == "auto" and gpu),
        asr_batched=asr_settings.batched,
        diariser_can_yield=diariser_settings.pipeline == OFFLINE and background_priority_works(),
    )


def transcribe_while_loading(
    waveform: AudioSource,
    asr: WhisperASR,
    diariser: PyannoteDiariser,
    initial_prompt: str | None,
    progress: Callable[[float, float], None] | None,
    load_ahead: bool,
) -> AsrResult:
    """ASR with every core; meanwhile, where asked, the diariser's imports and model loads.

    Loading is imports and reading weights, not a compute pool, so it does not take the
    ASR's cores; it takes the seconds of loading off the wall time when diarisation has to
    wait for the cores (batched ASR on few cores).
    """
    if not load_ahead:
        return asr.transcribe(waveform, initial_prompt=initial_prompt, progress=progress)
    asr.load()  # imports first, so that two threads never import at once
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="diariser-load") as worker:
        loading = worker.submit(diariser.load)
        result = asr.transcribe(waveform, initial_prompt=initial_prompt, progress=progress)
        loading.result()  # a load failure is diarisation's, raised here as it would be there
    return result


def stage(progress: StageCallback | None, name: str) -> Callable[[float, float], None] | None:
    return (lambda done, total: progress(name, done, total)) if progress else None


def diarise(
    waveform: AudioSource,
    diariser: PyannoteDiariser,
    speakers: dict[str, int | None],
    progress: Callable[[float, float], None] | None,
    threads: int = 0,
    background: bool = False,
) -> DiarisationResult:
    """Diarise on ``threads`` threads (0: the cores this process may use); ``background``:
    at the lowest CPU priority (this is the worker thread's last job, so it keeps it)."""
    if background:
        run_in_background_priority()
    duration = len(waveform) / SAMPLE_RATE
    if progress:
        progress(0.0, duration)
    return diariser.diarise(waveform, SAMPLE_RATE, progress=progress, threads=threads, **speakers)


def run_both(
    waveform: AudioSource,
    asr: WhisperASR,
    diariser: PyannoteDiariser,
    plan: ThreadPlan,
    initial_prompt: str | None,
    speakers: dict[str, int | None],
    progress: StageCallback | None,
) -> tuple[AsrResult, DiarisationResult]:
    """Diarisation in one worker thread, ASR in this one, progress relayed to this one."""
    relay = ProgressRelay(progress)
    overrides: dict[str, Any] = {}
    if plan.asr_threads and asr.settings().cpu_threads == 0:
        overrides["cpu_threads"] = plan.asr_threads
    # Whisper's imports and model load before the worker starts its own imports: no two
    # threads import at once, and the model is the one the transcription will use.
    asr.load(**overrides)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="diarise") as worker:
        future = worker.submit(
            diarise,
            waveform,
            diariser,
            speakers,
            relay.from_worker("diarise"),
            plan.diariser_threads,
            plan.diariser_in_background,
        )

        def asr_progress(done: float, total: float) -> None:
            relay.drain()
            failed_first(future)
            if progress is not None:
                progress("transcribe", done, total)

        try:
            asr_result = asr.transcribe(
                waveform, initial_prompt=initial_prompt, progress=asr_progress, **overrides
            )
            while not future.done():
                relay.drain(DRAIN_SECONDS)
        except BaseException:
            relay.cancelled.set()
            while not future.done():  # the worker reads the waveform: wait for it to stop
                relay.drain(DRAIN_SECONDS)
            raise
        relay.drain()
        return asr_result, future.result()


def failed_first(future: Future[DiarisationResult]) -> None:
    """Stop the ASR at once when diarisation has already failed."""
    if future.done() and future.exception() is not None:
        raise future.exception()  # type: ignore[misc]
