"""Where the diariser's models come from: device choice, cached loaders, hub checks.

On the CPU the offline networks run on onnxruntime (``networks``, ``export``), on a GPU on
torch; hub pipelines always run on torch.

Loaded models are cached per process, keyed by (weights, device), so every episode of a
run, every resource instance and speaker naming share one copy.
"""

from __future__ import annotations

import logging
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from resources.diarisation.export import encoder_onnx, segmentation_onnx
from resources.diarisation.networks import (
    EncoderNet,
    OnnxEncoder,
    OnnxSegmentation,
    SegmentationNet,
    TorchEncoder,
    TorchSegmentation,
)
from resources.model_paths import ModelNotFoundError

HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
HUB_HINT = (
    "accept the model's user conditions on https://huggingface.co/{name} and set HF_TOKEN "
    "(or the resource's hf_token), or download the pipeline once and point `pipeline` at the "
    "local directory / config.yaml; `pipeline: offline` needs no hub at all"
)


def resolve_device(device: str) -> str:
    """``auto`` → cuda when torch sees a GPU, else cpu; an unusable cuda is an error."""
    if device == "cpu":  # no torch import for the common case: the CPU runs onnxruntime
        return device
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but torch sees no CUDA device; use 'cpu' or 'auto'"
        )
    return device


@lru_cache(maxsize=4)
def load_segmentation_model(path: str, device: str) -> SegmentationNet:
    """The segmentation network for the PyanNet checkpoint at ``path``: its ONNX export on
    onnxruntime on the CPU (exported on first use), the torch model elsewhere."""
    if device == "cpu":
        return OnnxSegmentation(*segmentation_onnx(Path(path)))
    return TorchSegmentation(load_torch_segmentation(path, device))


@lru_cache(maxsize=4)
def load_speaker_encoder(path: str, device: str) -> EncoderNet:
    """The GE2E encoder network for resemblyzer's weights at ``path`` (as above)."""
    if not Path(path).exists():
        raise ModelNotFoundError(
            f"speaker encoder weights not found at {path}: pip install resemblyzer"
        )
    if device == "cpu":
        return OnnxEncoder(*encoder_onnx(Path(path)))
    return TorchEncoder(load_torch_encoder(path, device))


@lru_cache(maxsize=4)
def load_torch_segmentation(path: str, device: str) -> Any:
    """The pyannote.audio segmentation ``Model`` at ``path``, on ``device``, in eval mode."""
    import torch
    from pyannote.audio import Model

    logging.getLogger("lightning.pytorch.utilities.migration").setLevel(logging.WARNING)
    model = Model.from_pretrained(path)
    if model is None:
        raise ModelNotFoundError(f"pyannote could not load a segmentation model from {path}")
    model.eval()
    return model.to(torch.device(device))


@lru_cache(maxsize=4)
def load_torch_encoder(path: str, device: str) -> Any:
    """resemblyzer's GE2E ``VoiceEncoder`` with the weights at ``path``, on ``device``."""
    from resemblyzer import VoiceEncoder

    encoder = VoiceEncoder(device=device, verbose=False, weights_fpath=path)
    encoder.eval()
    return encoder


@lru_cache(maxsize=2)
def load_hub_pipeline(name: str, device: str, token: str | None) -> Any:
    """A pyannote ``Pipeline`` from a local path or the hub (token needed for gated ones)."""
    import torch
    from pyannote.audio import Pipeline

    try:
        pipeline = Pipeline.from_pretrained(name, token=token)
    except Exception as exc:  # noqa: BLE001 - hub/IO errors come in many types
        raise ModelNotFoundError(
            f"could not load pyannote pipeline {name!r} ({exc}); " + HUB_HINT.format(name=name)
        ) from exc
    if pipeline is None:  # pyannote returns None (after printing) for gated/missing repos
        raise ModelNotFoundError(
            f"pyannote pipeline {name!r} is not available: " + HUB_HINT.format(name=name)
        )
    return pipeline.to(torch.device(device))


def check_pipeline_source(name: str, token: str | None) -> None:
    """Tell, before any download attempt, why a non-offline ``pipeline`` cannot load."""
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.yaml").exists():
            raise ModelNotFoundError(
                f"{path} has no config.yaml: point `pipeline` at a pyannote pipeline"
            )
        return
    if name.startswith(("/", ".", "~")) or name.endswith((".yaml", ".yml")):
        raise ModelNotFoundError(
            f"local pipeline {name!r} does not exist: give the directory holding a pyannote "
            "config.yaml (or the file itself), a hub id, or 'offline'"
        )
    if not HUB_ID.match(name):
        raise ModelNotFoundError(
            f"pipeline {name!r} is neither 'offline', an existing local path nor a hub id "
            "(owner/name); use 'offline' or e.g. 'pyannote/speaker-diarization-community-1'"
        )
    if not token:
        raise ModelNotFoundError(
            f"pipeline {name!r} comes from the Hugging Face hub and no token is set: "
            + HUB_HINT.format(name=name)
        )
