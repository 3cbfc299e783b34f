"""ASR and diarisation at the same time: within the cores, progress in the caller's thread,
failures that stop both, and the same transcript as one after the other.

The rules are tested with stand-in stages (plain objects with the resources' methods); the
last test runs the real models both ways on the two-speaker dialogue and compares the
outputs within the bounds measured across CPUs (``tests/model_output.py``).
"""

from __future__ import annotations

import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from resources.cores import BACKGROUND_NICENESS, thread_niceness
from resources.schema import AsrResult, DiarisationResult, SpeakerTurn
from tests.model_output import compare_words
from twiml_assets.speech.overlap import (
    Cancelled,
    ProgressRelay,
    ThreadPlan,
    plan_threads,
    run_asr_and_diarisation,
)

SR = 16_000


@pytest.mark.parametrize("cores", [2, 3, 4, 8, 16])
def test_normal_priority_threads_never_outnumber_the_cores(cores: int) -> None:
    for asr_gpu, diar_gpu, batched, can_yield in [
        (False, False, False, True),
        (False, False, True, True),
        (False, False, True, False),
        (True, False, True, True),
        (False, True, True, True),
    ]:
        plan = plan_threads(cores, asr_gpu, diar_gpu, batched, diariser_can_yield=can_yield)
        assert plan is not None and plan.asr_threads >= 1 and plan.diariser_threads >= 1
        if plan.diariser_in_background:  # batched ASR, the onnxruntime diariser beside it
            assert (asr_gpu, diar_gpu, batched, can_yield) == (False, False, True, True)
            assert plan.asr_threads == cores and plan.diariser_threads == cores
        else:
            assert plan.asr_threads + plan.diariser_threads <= cores


def test_one_core_runs_the_stages_one_after_the_other() -> None:
    assert plan_threads(1, False, False) is None
    assert plan_threads(2, False, False) == ThreadPlan(1, 1)
    assert plan_threads(2, False, False, asr_batched=True) == ThreadPlan(2, 2, True)
    assert plan_threads(4, False, False, True, diariser_can_yield=False) == ThreadPlan(2, 2)
    assert plan_threads(1, True, True) == ThreadPlan(0, 0)  # both on the GPU: nothing to split


def test_a_share_of_the_machine_given_by_omp_num_threads_is_respected(monkeypatch) -> None:
    from twiml_assets.speech.overlap import available_cores

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    machine = available_cores()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert available_cores() == 1  # a test worker's share: one stage after the other
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert available_cores() == machine


def test_the_relay_is_bounded_and_delivers_in_the_callers_thread() -> None:
    seen: list[tuple[str, float, int]] = []
    relay = ProgressRelay(lambda s, d, t: seen.append((s, d, threading.get_ident())), maxsize=4)
    report = relay.from_worker("diarise")
    worker = threading.Thread(target=lambda: [report(float(i), 100.0) for i in range(50)])
    worker.start()
    worker.join()
    assert relay.queue.qsize() == 4  # 46 reports were dropped, none blocked the worker
    relay.drain()
    assert [d for _, d, _ in seen] == [46.0, 47.0, 48.0, 49.0]  # the newest: the last arrives
    assert {ident for _, _, ident in seen} == {threading.get_ident()}
    relay.cancelled.set()
    with pytest.raises(Cancelled):
        report(51.0, 100.0)


class StandInASR:
    """``WhisperASR``'s surface: settings() and transcribe(); sleeps instead of decoding."""

    def __init__(self, seconds: float = 0.3, fail: bool = False) -> None:
        self.seconds, self.fail, self.calls = seconds, fail, []

    def settings(self) -> Any:
        return SimpleNamespace(device="cpu", cpu_threads=0, batched=False)

    def load(self, **overrides) -> None:
        self.loaded = {"thread": threading.get_ident(), **overrides}

    def transcribe(self, waveform, *, initial_prompt=None, progress=None, **overrides):
        self.calls.append({"thread": threading.get_ident(), **overrides})
        duration = len(waveform) / SR
        for i in range(1, 11):
            time.sleep(self.seconds / 10)
            if self.fail and i == 5:
                raise RuntimeError("ASR broke")
            self.reports = i
            if progress:
                progress(duration * i / 10, duration)
        return AsrResult([], "en", duration, "stand-in", {}, self.seconds)


class StandInDiariser:
    def __init__(self, seconds: float = 0.3, fail: bool = False) -> None:
        self.seconds, self.fail = seconds, fail
        self.threads: list[int] = []
        self.stopped_at: float | None = None

    def settings(self) -> Any:
        return SimpleNamespace(device="cpu", pipeline="offline")

    def load(self) -> None:
        self.loaded_in = threading.get_ident()

    def diarise(self, waveform, sample_rate=SR, *, progress=None, **speakers):
        self.threads.append(threading.get_ident())
        self.niceness = thread_niceness()
        self.thread_count = speakers.pop("threads", None)
        duration = len(waveform) / SR
        for i in range(1, 21):
            time.sleep(self.seconds / 20)
            if self.fail and i == 2:
                raise ValueError("diarisation broke")
            if progress:
                try:
                    progress(duration * i / 20, duration)
                except Cancelled:
                    self.stopped_at = duration * i / 20
                    raise
        return DiarisationResult([SpeakerTurn(0.0, duration, "A")], duration, "stand-in", {}, 0.1)


@pytest.fixture
def two_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    import twiml_assets.speech.overlap as overlap

    monkeypatch.setattr(overlap, "available_cores", lambda: 2)


class MeetingASR(StandInASR):
    """Finishes only once the diariser has started: one after the other, it never would."""

    def __init__(self, diariser_started: threading.Event) -> None:
        super().__init__(0.1)
        self.diariser_started = diariser_started
        self.met = False

    def transcribe(self, waveform, **kwargs):
        self.met = self.diariser_started.wait(timeout=30)
        return super().transcribe(waveform, **kwargs)


class MeetingDiariser(StandInDiariser):
    def __init__(self) -> None:
        super().__init__(0.1)
        self.started = threading.Event()

    def diarise(self, waveform, sample_rate=SR, **kwargs):
        self.started.set()
        return super().diarise(waveform, sample_rate, **kwargs)


def test_both_stages_run_at_once_and_progress_stays_in_the_callers_thread(two_cores) -> None:
    diariser = MeetingDiariser()
    asr = MeetingASR(diariser.started)
    reports: list[tuple[str, int]] = []
    _, diarisation, timings = run_asr_and_diarisation(
        np.zeros(10 * SR, dtype=np.float32),
        asr,
        diariser,
        progress=lambda stage, done, total: reports.append((stage, threading.get_ident())),
    )
    assert asr.met  # the diariser started while the ASR was still running
    assert diariser.threads[0] != threading.get_ident() == asr.calls[0]["thread"]
    assert asr.calls[0]["cpu_threads"] == 1 and diariser.thread_count == 1  # a core each
    assert diariser.niceness == thread_niceness()  # both at normal priority
    assert asr.loaded == {"thread": threading.get_ident(), "cpu_threads": 1}  # loaded first
    assert {stage for stage, _ in reports} == {"transcribe", "diarise"}
    assert {ident for _, ident in reports} == {threading.get_ident()}
    assert diarisation.details["overlapped_with_asr"] is True
    assert set(timings) == {"asr", "diarisation", "models"}


def test_a_diarisation_failure_stops_the_asr_at_its_next_report(two_cores) -> None:
    asr = StandInASR(2.0)
    with pytest.raises(ValueError, match="diarisation broke"):
        run_asr_and_diarisation(np.zeros(10 * SR, np.float32), asr, StandInDiariser(fail=True))
    assert asr.reports < 10  # stopped at a report, not after its whole run


def test_an_asr_failure_stops_the_diariser_and_waits_for_it(two_cores) -> None:
    diariser = StandInDiariser(4.0)
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(RuntimeError, match="ASR broke"):
        run_asr_and_diarisation(np.zeros(10 * SR, np.float32), StandInASR(0.2, fail=True), diariser)
    # The worker stopped at its next report, before its 4 s were up (it never got to the
    # end of the audio), and the call returned only once it had: no diarise thread is left.
    assert diariser.stopped_at is not None and diariser.stopped_at < 10.0
    assert not [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_batched_asr_keeps_the_cores_and_the_diariser_runs_in_the_background(two_cores) -> None:
    asr, diariser = StandInASR(0.1), StandInDiariser(0.1)
    asr.settings = lambda: SimpleNamespace(device="cpu", cpu_threads=0, batched=True)
    before = thread_niceness()
    _, diarisation, _ = run_asr_and_diarisation(np.zeros(5 * SR, np.float32), asr, diariser)
    # Both get the two cores; the diariser's thread only takes what the ASR leaves idle.
    assert asr.calls[0]["cpu_threads"] == 2 and diariser.thread_count == 2
    assert diariser.threads[0] != threading.get_ident() == asr.calls[0]["thread"]
    assert diariser.niceness == BACKGROUND_NICENESS
    assert thread_niceness() == before  # the caller's (the ASR's) thread is untouched
    assert diarisation.details["overlapped_with_asr"] is True


def test_one_core_transcribes_while_the_diariser_loads_then_diarises(monkeypatch) -> None:
    import twiml_assets.speech.overlap as overlap

    monkeypatch.setattr(overlap, "available_cores", lambda: 1)
    asr, diariser = StandInASR(0.1), StandInDiariser(0.1)
    _, diarisation, _ = run_asr_and_diarisation(np.zeros(5 * SR, np.float32), asr, diariser)
    assert "cpu_threads" not in asr.calls[0]  # the one core for the ASR
    assert diariser.loaded_in != threading.get_ident()  # loaded beside it
    assert diariser.threads == [threading.get_ident()]  # diarised after it
    assert diariser.niceness == thread_niceness()  # at the caller's priority
    assert diarisation.details["overlapped_with_asr"] is False


def test_sequential_when_asked(two_cores) -> None:
    asr, diariser = StandInASR(0.1), StandInDiariser(0.1)
    _, diarisation, _ = run_asr_and_diarisation(
        np.zeros(5 * SR, np.float32), asr, diariser, overlap=False
    )
    assert diariser.threads == [threading.get_ident()]
    assert "cpu_threads" not in asr.calls[0]
    assert diarisation.details["overlapped_with_asr"] is False


@pytest.mark.model_output
def test_overlapped_models_write_what_sequential_ones_write(dialogue, two_cores) -> None:
    """The real models both ways on the dialogue: same words, times and speakers within the
    cross-CPU bounds, the same speaker count, turns within 0.02 DER of each other."""
    from evaluation.metrics import diarisation_error_rate
    from resources.asr import WhisperASR
    from resources.audio import open_waveform
    from resources.diarisation import PyannoteDiariser
    from twiml_assets.speech.engine import run_models

    asr, diariser = WhisperASR(profile="cpu-dev"), PyannoteDiariser.for_profile("cpu-dev")
    with open_waveform(dialogue.audio_path) as waveform:
        runs = {
            overlap: run_models(waveform, "up-test", asr, diariser, overlap=overlap)
            for overlap in (False, True)
        }
    (seq, _, seq_d, _), (ovl, _, ovl_d, _) = runs[False], runs[True]
    assert ovl_d.details["overlapped_with_asr"] and not seq_d.details["overlapped_with_asr"]
    problems = compare_words(seq.words, ovl.words).problems()
    assert problems == [], problems
    assert len(seq.speakers) == len(ovl.speakers)
    # Torch on one thread instead of two: the same turns up to last-bit differences.
    assert diarisation_error_rate(seq_d.turns, ovl_d.turns).der <= 0.02
