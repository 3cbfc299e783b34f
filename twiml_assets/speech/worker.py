"""The model step's worker program: ``python -m twiml_assets.speech.worker``, under Dagster Pipes.

The ``subprocess`` and ``k8s`` compute backends start this module; the Modal app runs its
:func:`step_events` in a GPU container and forwards them with :func:`report`. It reads the
episode key, the storage settings and the engine settings from the Pipes extra
``model_step``, reads the audio from storage (local or ``s3://``), runs
:func:`~twiml_assets.speech.step.run_model_step`, writes the same files, and reports the
``transcript`` and ``diarisation`` materialisations back; progress comes back as Pipes logs.
It also stores the episode's voiceprints, which need the engine too, so that a control plane
without it (the slim image) runs ``speaker_names`` from them.

A failure that a re-run cannot fix (undecodable audio, a missing upstream file) exits with
status :data:`PERMANENT_EXIT` after printing its reason as the last line of stderr, so the
orchestrator can tell it from a crash.
"""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pydantic import BaseModel

from resources.asr import WhisperASR
from resources.compute import PERMANENT_EXIT, PERMANENT_PREFIX, WORKER_EXTRA
from resources.diarisation import PyannoteDiariser
from resources.storage import StorageResource
from twiml_assets.asset_io import StepOutput
from twiml_assets.speech.step import ModelStepConfig, run_model_step

MODULE = "twiml_assets.speech.worker"
MODAL_ENTRYPOINT = "run_model_step"
"""The Modal app's local entrypoint that stands for this module (``deploy/modal/app.py``)."""
SECRET_FIELDS = {"hf_token"}
"""Never sent as parameters: the worker reads them from its own environment or secrets."""


class WorkerParams(BaseModel):
    """What one model step needs besides the audio: all of it plain, JSON-able config."""

    key: str
    options: ModelStepConfig = ModelStepConfig()
    storage: dict[str, Any] = {}
    asr: dict[str, Any] = {}
    diariser: dict[str, Any] = {}

    @classmethod
    def build(
        cls,
        key: str,
        options: ModelStepConfig,
        storage: StorageResource,
        asr: WhisperASR,
        diariser: PyannoteDiariser,
    ) -> WorkerParams:
        """The run's resolved resources, as the worker rebuilds them."""
        return cls(
            key=key,
            options=options,
            storage=storage.model_dump(),
            asr=asr.model_dump(),
            diariser=diariser.model_dump(exclude=SECRET_FIELDS),
        )


def step_events(params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Run the model step; yield ``{"log": text}`` as it goes, then its two outputs."""
    p = WorkerParams.model_validate(params)
    return threaded_events(
        f"model-step-{p.key}",
        lambda log: run_model_step(
            p.key,
            p.options,
            StorageResource(**p.storage),
            WhisperASR(**p.asr),
            PyannoteDiariser(**p.diariser),
            log=log,
            # The engine is here, perhaps not on the control plane: speaker_names reads them.
            voiceprints=True,
        ),
    )


def threaded_events(
    name: str, work: Callable[[Callable[..., None]], list[StepOutput]]
) -> Iterator[dict[str, Any]]:
    """``work(log)`` in a thread: ``{"log": text, "level": ...}`` for each ``log(text,
    level="info")``, then ``{"asset", "metadata"}`` for each output.

    The thread lets progress stream out while the work goes on (Modal's remote generator
    sends each item as it is yielded). Its exception, if any, is re-raised here.
    """
    events: queue.Queue[dict[str, Any] | BaseException | None] = queue.Queue()

    def run() -> None:
        try:
            log = lambda text, level="info": events.put({"log": text, "level": level})  # noqa: E731
            for out in work(log):
                events.put({"asset": out.asset, "metadata": out.metadata})
            events.put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
            events.put(exc)

    threading.Thread(target=run, name=name, daemon=True).start()
    while (item := events.get()) is not None:
        if isinstance(item, BaseException):
            raise item
        yield item


def report(pipes: Any, events: Iterable[dict[str, Any]]) -> None:
    """Forward step events to Dagster: logs as Pipes logs, outputs as materialisations."""
    for event in events:
        if "log" in event:
            getattr(pipes.log, event.get("level", "info"))(event["log"])
        else:
            pipes.report_asset_materialization(asset_key=event["asset"], metadata=event["metadata"])


def serve(events: Callable[[dict[str, Any], Any], Iterable[dict[str, Any]]]) -> int:
    """Open Dagster Pipes, report ``events(params, pipes)``; the worker's exit status.

    A permanent failure (``resources.failures.classify``) is reported through Pipes, printed
    as the last line of stderr and ends with :data:`PERMANENT_EXIT`, so the orchestrator
    fails the step without retries and with the reason; any other error is a plain crash,
    which the step's retry policy tries again. ``main`` and the Modal app's local
    entrypoint both run this.
    """
    from dagster import Failure
    from dagster_pipes import open_dagster_pipes

    from resources.failures import classify, permanent_errors_fail_at_once

    try:
        with open_dagster_pipes() as pipes, permanent_errors_fail_at_once():
            report(pipes, events(pipes.get_extra(WORKER_EXTRA), pipes))
    except Failure as exc:
        if classify(exc).transient:
            raise
        reason = " ".join(str(exc.description).split())
        print(f"{PERMANENT_PREFIX}{reason}", file=sys.stderr, flush=True)
        return PERMANENT_EXIT
    return 0


def main() -> int:
    return serve(lambda params, _pipes: step_events(params))


if __name__ == "__main__":
    sys.exit(main())
