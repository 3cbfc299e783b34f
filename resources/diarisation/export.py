"""The offline diariser's two networks exported once to ONNX, for onnxruntime on the CPU.

Running them on onnxruntime rather than torch takes the imports out of every process
that diarises: ``pyannote.audio`` pulls in Lightning, torch's compiler and sympy, about
7 s of CPU, and torch itself another 3 s, on each CLI run, model step and worker. The
export needs those imports once: ``scripts/fetch_models.py`` does it at set-up, and a
process that finds no export (or one of other weights) does it on first use.

Each ``.onnx`` file has a JSON sidecar holding the SHA-256 of the weights it came from and
what the runtime needs to know without pyannote (window length, frame geometry), so a
changed checkpoint is exported again rather than silently ignored. Files are written to a
temporary name and renamed: two processes exporting at once each write a whole file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from resources.diarisation.networks import MEL_CHANNELS, MelBasis
from resources.model_paths import models_dir

EXPORT_FORMAT = 1  # bump when the exported graphs or the sidecar change
ONNX_OPSET = 17
SEGMENTATION_BATCH_EXAMPLE = 2  # any batch size works at run time (dynamic axis)
ENCODER_EXAMPLE_FRAMES = 160  # 1.6 s of 10 ms mel frames; time is a dynamic axis too


def export_dir() -> Path:
    return models_dir() / "onnx"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sidecar(onnx_path: Path, source: Path) -> dict[str, Any] | None:
    """The sidecar of an export of ``source`` in the current format, else None (stale)."""
    sidecar = onnx_path.with_suffix(".json")
    if not (onnx_path.exists() and sidecar.exists()):
        return None
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != EXPORT_FORMAT or meta.get("source_sha256") != sha256(source):
        return None
    return meta


def write_atomically(target: Path, write: Callable[[Path], Any]) -> None:
    """``write(path)`` to a temporary file beside ``target``, then rename it into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from other users of the cache
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def export_graph(module: Any, example: Any, target: Path, names: dict[str, Any]) -> None:
    import torch

    def write(path: Path) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=names["inputs"],
                output_names=names["outputs"],
                dynamic_axes=names["dynamic"],
                opset_version=ONNX_OPSET,
                dynamo=False,
            )

    write_atomically(target, write)


def write_sidecar(onnx_path: Path, meta: dict[str, Any]) -> None:
    text = json.dumps({"format": EXPORT_FORMAT, **meta}, indent=2)
    write_atomically(onnx_path.with_suffix(".json"), lambda p: p.write_text(text))


def current_export(
    name: str, source: Path, export: Callable[[Path, Path], None]
) -> tuple[Path, dict[str, Any]]:
    """The export ``name`` of ``source`` and its sidecar, made by ``export`` where missing or
    made from other weights."""
    target = export_dir() / name
    meta = read_sidecar(target, source)
    if meta is None:
        export(source, target)
        meta = read_sidecar(target, source)
        if meta is None:
            raise RuntimeError(f"exporting {source} to {target} left no current export")
    return target, meta


def segmentation_onnx(checkpoint: Path) -> tuple[Path, dict[str, Any]]:
    """The ONNX export of the PyanNet ``checkpoint`` and its sidecar (exported if needed)."""
    return current_export("pyannote-segmentation.onnx", checkpoint, export_segmentation)


def export_segmentation(checkpoint: Path, target: Path) -> None:
    import torch

    from resources.diarisation.models import load_torch_segmentation

    model = load_torch_segmentation(str(checkpoint), "cpu")
    window = float(model.specifications.duration)
    samples = model.audio.get_num_samples(window)
    example = torch.zeros(SEGMENTATION_BATCH_EXAMPLE, 1, samples)
    names = {
        "inputs": ["waveform"],
        "outputs": ["activations"],
        "dynamic": {"waveform": {0: "batch"}, "activations": {0: "batch"}},
    }
    export_graph(model, example, target, names)
    frames = model.receptive_field
    write_sidecar(
        target,
        {
            "source_sha256": sha256(checkpoint),
            "window_seconds": window,
            "window_samples": samples,
            "frame_step": float(frames.step),
            "frame_start": float(frames.start),
            "frame_duration": float(frames.duration),
        },
    )


def encoder_onnx(weights: Path) -> tuple[Path, dict[str, Any]]:
    """The ONNX export of resemblyzer's GE2E encoder ``weights`` (exported if needed)."""
    return current_export("resemblyzer-ge2e.onnx", weights, export_encoder)


def export_encoder(weights: Path, target: Path) -> None:
    import torch

    from resources.diarisation.models import load_torch_encoder

    graph = encoder_graph(load_torch_encoder(str(weights), "cpu"))
    example = torch.zeros(2, ENCODER_EXAMPLE_FRAMES, MEL_CHANNELS)
    names = {
        "inputs": ["mel"],
        "outputs": ["hidden", "embedding"],
        "dynamic": {
            "mel": {0: "batch", 1: "frames"},
            "hidden": {0: "batch"},
            "embedding": {0: "batch"},
        },
    }
    export_graph(graph, example, target, names)
    write_sidecar(
        target,
        {
            "source_sha256": sha256(weights),
            "hidden_size": int(graph.lstm.hidden_size),
            "mel_basis": MelBasis.from_librosa().as_dict(),
        },
    )


def encoder_graph(encoder: Any) -> Any:
    """What the diariser asks of the GE2E encoder: the last LSTM layer's final state and
    the unit-length embedding computed from it (``VoiceEncoder.forward``'s head)."""
    import torch

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm, self.linear, self.relu = encoder.lstm, encoder.linear, encoder.relu

        def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            _, (state, _) = self.lstm(mel)
            last = state[-1]
            embedding = self.relu(self.linear(last))
            return last, embedding / embedding.norm(dim=1, keepdim=True).clamp_min(1e-8)

    return Graph().eval()
