"""The transcription engine without Dagster: one recording in, all output files out.

The CLI, the notebook and the benchmarks call this; the Dagster assets call the same
steps (decode, transcribe, diarise, merge, write) one asset at a time. The audio is
decoded once and the same waveform goes to both models.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resources.asr import WhisperASR
from resources.audio import AudioSource, open_waveform
from resources.diarisation import PyannoteDiariser
from resources.schema import AsrResult, DiarisationResult, SpeakerTranscript
from resources.storage import StorageResource
from twiml_assets.keys import upload_key_for_file, validate_key
from twiml_assets.outputs.files import write_all_outputs
from twiml_assets.speech.merge import merge_words
from twiml_assets.speech.overlap import StageCallback, run_asr_and_diarisation


@dataclass(slots=True)
class EngineResult:
    """Everything one engine run produced, for callers that want more than files."""

    key: str
    transcript: SpeakerTranscript
    asr: AsrResult
    diarisation: DiarisationResult
    files: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def real_time_factor(self) -> float:
        """Wall time of decode, models (ASR and diarisation together) and merge per second."""
        total = sum(self.timings.get(k, 0.0) for k in ("decode", "models", "merge"))
        return total / self.transcript.duration if self.transcript.duration else 0.0


def episode_prompt(title: str | None, description: str | None, limit: int = 600) -> str | None:
    """Initial prompt from episode metadata: names and jargon Whisper should spell right.

    Whisper only reads the last 224 tokens of a prompt, so it is kept short.
    """
    text = " ".join(part.strip() for part in (title, description) if part and part.strip())
    return text[:limit] or None


def run_models(
    waveform: AudioSource,
    key: str,
    asr: WhisperASR,
    diariser: PyannoteDiariser,
    *,
    initial_prompt: str | None = None,
    num_speakers: int | None = None,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    progress: StageCallback | None = None,
    overlap: bool = True,
) -> tuple[SpeakerTranscript, AsrResult, DiarisationResult, dict[str, float]]:
    """ASR + diarisation (at the same time where cores allow) + merge of one waveform."""
    asr_result, diarisation, timings = run_asr_and_diarisation(
        waveform,
        asr,
        diariser,
        initial_prompt=initial_prompt,
        num_speakers=num_speakers,
        min_speakers=min_speakers,
        max_speakers=max_speakers,
        progress=progress,
        overlap=overlap,
    )
    started = time.perf_counter()
    transcript = merge_words(asr_result, diarisation, key)
    timings["merge"] = time.perf_counter() - started
    return transcript, asr_result, diarisation, timings


def transcribe_file(
    audio: str | Path,
    out: str | Path | StorageResource,
    *,
    asr: WhisperASR | None = None,
    diariser: PyannoteDiariser | None = None,
    key: str | None = None,
    title: str | None = None,
    description: str | None = None,
    num_speakers: int | None = None,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    info: dict[str, Any] | None = None,
    progress: StageCallback | None = None,
    overlap: bool = True,
) -> EngineResult:
    """Transcribe one local audio file and write every output under ``out``.

    ``key`` defaults to ``up-<sha256>`` of the file; pass ``ep-<n>`` to
    write the RAG files under an episode number. Settings come from ``asr`` and
    ``diariser`` (defaults: the offline cpu-dev profile). ``overlap=False`` runs
    diarisation after ASR instead of beside it (less peak memory, more wall time).
    Storage that cannot take the outputs fails here, before the audio is decoded
    (``StorageError``; ``StorageUnavailableError`` when it cannot be reached).
    """
    audio = Path(audio)
    asr = asr or WhisperASR()
    diariser = diariser or PyannoteDiariser()
    storage = out if isinstance(out, StorageResource) else StorageResource(root=str(out))
    if not audio.exists():
        from resources.audio import AudioDecodeError

        raise AudioDecodeError(f"audio file not found: {audio}")
    key = validate_key(key) if key else upload_key_for_file(audio)
    storage.check_writable()  # an hour of compute is lost if the first write fails

    started = time.perf_counter()
    with open_waveform(audio, label=key) as waveform:
        timings = {"decode": time.perf_counter() - started}
        transcript, asr_result, diarisation, model_timings = run_models(
            waveform,
            key,
            asr,
            diariser,
            initial_prompt=episode_prompt(title, description),
            num_speakers=num_speakers,
            min_speakers=min_speakers,
            max_speakers=max_speakers,
            progress=progress,
            overlap=overlap,
        )
    timings.update(model_timings)

    started = time.perf_counter()
    source = {"audio": str(audio), "title": title}
    files = write_all_outputs(
        storage, transcript, asr_result, diarisation, info=info, timings=timings, source=source
    )
    timings["write"] = time.perf_counter() - started
    return EngineResult(key, transcript, asr_result, diarisation, files, timings)
