"""The offline diariser's two networks, each one call from numpy to numpy.

On the CPU they run on onnxruntime from their ONNX export (``export``), so a process
that diarises imports neither torch nor pyannote.audio; on a GPU they run on torch. The
caller says how many threads a call may use (0: the cores this process may use), because
the engine runs diarisation beside the ASR within a fixed share of the cores.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from resources.audio import SAMPLE_RATE
from resources.cores import available_cores, thread_niceness

# resemblyzer.hparams (importing resemblyzer imports torch; the CPU path does without it).
MEL_WINDOW_LENGTH_MS = 25
MEL_WINDOW_STEP_MS = 10
MEL_CHANNELS = 40
EMBEDDING_SIZE = 256


class OnnxNet:
    """An onnxruntime session per thread count and caller priority, made on first use.

    A session's pool threads are started by the thread that makes it and keep that
    thread's priority, so a caller at background priority (diarisation beside the ASR)
    gets pool threads at background priority too, never a normal-priority session's.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sessions: dict[tuple[int, int], Any] = {}
        self.lock = threading.Lock()

    def session(self, threads: int) -> Any:
        import onnxruntime as ort

        key = (threads or available_cores(), thread_niceness())
        threads = key[0]
        with self.lock:
            if key not in self.sessions:
                options = ort.SessionOptions()
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                # Idle pool threads must not spin on cores the ASR is using meanwhile.
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                self.sessions[key] = ort.InferenceSession(
                    str(self.path), options, providers=["CPUExecutionProvider"]
                )
            return self.sessions[key]

    def run(self, feeds: dict[str, np.ndarray], threads: int) -> list[np.ndarray]:
        return self.session(threads).run(None, feeds)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` for the block (0: leave them)."""
    if not threads:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class SegmentationNet:
    """PyanNet: (batch, 1, window samples) → (batch, frames, local speakers) activations.

    ``frame_step``/``frame_offset``: seconds per output frame, and the centre of frame 0's
    step, as pyannote's receptive field gives them.
    """

    window_seconds: float
    window_samples: int
    frame_step: float
    frame_offset: float

    def set_geometry(
        self, window: float, samples: int, step: float, start: float, span: float
    ) -> None:
        self.window_seconds, self.window_samples = window, samples
        self.frame_step, self.frame_offset = step, start + span / 2 - step / 2

    def __call__(self, batch: np.ndarray, threads: int = 0) -> np.ndarray:
        raise NotImplementedError


class OnnxSegmentation(SegmentationNet):
    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.net = OnnxNet(path)
        self.set_geometry(
            meta["window_seconds"],
            meta["window_samples"],
            meta["frame_step"],
            meta["frame_start"],
            meta["frame_duration"],
        )

    def __call__(self, batch: np.ndarray, threads: int = 0) -> np.ndarray:
        return self.net.run({"waveform": batch}, threads)[0]


class TorchSegmentation(SegmentationNet):
    def __init__(self, model: Any) -> None:
        self.model = model
        window = float(model.specifications.duration)
        frames = model.receptive_field
        self.set_geometry(
            window,
            model.audio.get_num_samples(window),
            frames.step,
            frames.start,
            frames.duration,
        )

    def __call__(self, batch: np.ndarray, threads: int = 0) -> np.ndarray:
        import torch

        device = next(self.model.parameters()).device
        with torch_threads(threads), torch.inference_mode():
            return self.model(torch.from_numpy(batch).to(device)).cpu().numpy()


@dataclass(frozen=True, slots=True)
class MelBasis:
    """resemblyzer's STFT window and mel filterbank, taken from librosa once (at export)
    so that computing mel frames needs numpy only."""

    window: np.ndarray  # (n_fft,) periodic Hann
    filters: np.ndarray  # (mel channels, n_fft // 2 + 1)

    @classmethod
    def from_librosa(cls) -> MelBasis:
        import librosa

        n_fft = int(SAMPLE_RATE * MEL_WINDOW_LENGTH_MS / 1000)
        window = librosa.filters.get_window("hann", n_fft, fftbins=True)
        filters = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=n_fft, n_mels=MEL_CHANNELS)
        return cls(window.astype(np.float32), filters.astype(np.float32))

    def as_dict(self) -> dict[str, list[float] | list[list[float]]]:
        return {"window": self.window.tolist(), "filters": self.filters.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MelBasis:
        return cls(
            np.asarray(data["window"], dtype=np.float32),
            np.asarray(data["filters"], dtype=np.float32),
        )


class EncoderNet:
    """GE2E: (batch, mel frames, 40) → (last LSTM state, unit embedding), 256 each."""

    hidden_size: int
    mel_basis: MelBasis

    def __call__(self, mel: np.ndarray, threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class OnnxEncoder(EncoderNet):
    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.net = OnnxNet(path)
        self.hidden_size = int(meta["hidden_size"])
        self.mel_basis = MelBasis.from_dict(meta["mel_basis"])

    def __call__(self, mel: np.ndarray, threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
        hidden, embedding = self.net.run({"mel": mel}, threads)
        return hidden, embedding


class TorchEncoder(EncoderNet):
    def __init__(self, encoder: Any) -> None:
        from resources.diarisation.export import encoder_graph

        self.graph = encoder_graph(encoder)
        self.hidden_size = int(encoder.lstm.hidden_size)
        self.mel_basis = MelBasis.from_librosa()

    def __call__(self, mel: np.ndarray, threads: int = 0) -> tuple[np.ndarray, np.ndarray]:
        import torch

        device = next(self.graph.parameters()).device
        with torch_threads(threads), torch.inference_mode():
            hidden, embedding = self.graph(torch.from_numpy(mel).to(device))
        return hidden.cpu().numpy(), embedding.cpu().numpy()
