"""The ``model_comparison`` asset as a Pipes worker: ``python -m twiml_assets.quality.worker``.

The same shape as the model step's worker (``speech/worker.py``, whose ``serve`` and
``threaded_events`` it uses): the compute backends start it where the GPUs are, it runs
:func:`~twiml_assets.quality.compare.compare_episode` (each configuration still in its own
process there), writes ``comparisons/{key}.*`` to the shared storage and reports the
materialisation with the same metadata as in-process.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from resources.quality import QualityResource
from resources.storage import StorageResource
from twiml_assets.quality.compare import ModelComparisonConfig, compare_episode
from twiml_assets.speech.worker import serve, threaded_events

MODULE = "twiml_assets.quality.worker"
MODAL_ENTRYPOINT = "run_model_comparison"
"""The Modal app's local entrypoint that stands for this module (``deploy/modal/app.py``)."""


class ComparisonParams(BaseModel):
    """What one comparison needs besides the audio: plain, JSON-able config."""

    key: str
    config: ModelComparisonConfig = ModelComparisonConfig()
    storage: dict[str, Any] = {}
    quality: dict[str, Any] = {}

    @classmethod
    def build(
        cls,
        key: str,
        config: ModelComparisonConfig,
        storage: StorageResource,
        quality: QualityResource,
    ) -> ComparisonParams:
        return cls(
            key=key, config=config, storage=storage.model_dump(), quality=quality.model_dump()
        )


def comparison_events(params: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Run the comparison; ``{"log": text}`` as it goes, then its materialisation."""
    p = ComparisonParams.model_validate(params)
    storage, quality = StorageResource(**p.storage), QualityResource(**p.quality)
    return threaded_events(
        f"model-comparison-{p.key}",
        lambda log: [
            compare_episode(
                p.key, p.config, storage, quality, log, warn=lambda text: log(text, "warning")
            )
        ],
    )


def main() -> int:
    return serve(lambda params, _pipes: comparison_events(params))


if __name__ == "__main__":
    sys.exit(main())
