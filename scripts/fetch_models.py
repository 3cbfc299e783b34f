"""Put the offline diarisation weights in place, from registry packages only.

pyannote's segmentation checkpoint ships inside the ``whisperx`` wheel. We download
that wheel without dependencies (installing whisperx would pin another torch) and
copy the one file out. Then both offline networks are exported to ONNX for the CPU
(``resources.diarisation.export``). Idempotent: does nothing when the files are there.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from resources.model_paths import WHISPERX_WHEEL, segmentation_checkpoint  # noqa: E402


def pip_python() -> str:
    """The interpreter whose pip downloads the wheel: this one, or ``TWIML_PIP_PYTHON`` where
    this environment has no pip (a locked image's venv; deploy/Dockerfile.gpu)."""
    return os.environ.get("TWIML_PIP_PYTHON") or sys.executable


def fetch_segmentation() -> Path:
    target = segmentation_checkpoint(must_exist=False)
    if target.exists() and target.stat().st_size > 1_000_000:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [pip_python(), "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, WHISPERX_WHEEL],
            check=True,
        )
        wheel = next(Path(tmp).glob("whisperx-*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read("whisperx/assets/pytorch_model.bin")
    partial = target.with_suffix(".part")
    partial.write_bytes(data)
    partial.replace(target)
    return target


def export_networks(segmentation: Path) -> None:
    """The ONNX exports the CPU diariser runs (made here once, not on a first run)."""
    from resources.diarisation.export import encoder_onnx, segmentation_onnx
    from resources.model_paths import resemblyzer_encoder

    for path, _ in (segmentation_onnx(segmentation), encoder_onnx(resemblyzer_encoder())):
        print(f"==> ONNX export for the CPU diariser: {path}")


def main() -> None:
    path = fetch_segmentation()
    print(f"==> offline segmentation weights: {path}")
    export_networks(path)


if __name__ == "__main__":
    main()
