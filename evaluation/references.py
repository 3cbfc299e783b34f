"""Reference transcript loaders: every format becomes one ``Reference``.

Human references come in whatever format their maker had: NIST STM (ASR benchmarks), RTTM
(diarisation benchmarks, no words), the RAG pipeline's ``corrected.json`` and markdown (our
own episodes after manual correction), SRT/VTT subtitles, or plain text. The metrics need
only a few views of them (all text, per-speaker text, turns, speaker-tagged words), so each
loader fills one model and records what the file could give (``has_speakers``,
``has_timestamps``, ``has_words``, ``has_text``); the caller computes the metrics those allow.

Loaders read UTF-8 with or without a BOM and any line ending, skip blank lines, and raise
``ReferenceFormatError`` naming the file (and line) when the content is not the format.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from resources.schema import SpeakerTranscript, SpeakerTurn, Utterance, Word

#: Speaker label used where a format carries no speaker.
UNKNOWN_SPEAKER = "UNKNOWN"


class ReferenceFormatError(ValueError):
    """A reference file whose content does not match its format."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path = str(path)
        self.line = line


@dataclass(slots=True)
class Reference:
    """A reference transcript in the shared data model, with what its source could provide.

    ``utterances`` are in file order. Without speakers every utterance has speaker
    ``UNKNOWN``; without timestamps ``start`` and ``end`` are 0.0; without words
    ``Utterance.words`` is empty and the text is in ``text_override``.
    """

    utterances: list[Utterance]
    has_speakers: bool
    has_timestamps: bool
    has_words: bool
    has_text: bool = True
    speaker_names: dict[str, str] = field(default_factory=dict)
    source: str = ""
    format: str = ""

    @property
    def text(self) -> str:
        """All text in spoken order (time order when timed, file order otherwise)."""
        return " ".join(u.text for u in self._ordered() if u.text)

    @property
    def speakers(self) -> list[str]:
        return sorted({u.speaker for u in self.utterances})

    @property
    def turns(self) -> list[SpeakerTurn]:
        """Speaker turns for DER; raises when the source has no timestamps."""
        if not self.has_timestamps:
            raise ValueError(f"{self.source or 'reference'} has no timestamps: no turns for DER")
        return [SpeakerTurn(u.start, u.end, u.speaker) for u in self._ordered() if u.end > u.start]

    @property
    def speaker_texts(self) -> dict[str, str]:
        """Each speaker's text concatenated in spoken order (for cpWER)."""
        parts: dict[str, list[str]] = {}
        for u in self._ordered():
            if u.text:
                parts.setdefault(u.speaker, []).append(u.text)
        return {spk: " ".join(texts) for spk, texts in parts.items()}

    @property
    def speaker_words(self) -> list[Word]:
        """The text as whitespace tokens, each tagged with its utterance's speaker (for WDER).

        Built from the utterance text rather than ``words`` because in a corrected transcript
        the text is authoritative and the word list may predate the correction. Token times
        are the utterance's.
        """
        return [
            Word(u.start, u.end, token, speaker=u.speaker)
            for u in self._ordered()
            for token in u.text.split()
        ]

    def name_of(self, speaker: str) -> str:
        return self.speaker_names.get(speaker, speaker)

    def _ordered(self) -> list[Utterance]:
        if not self.has_timestamps:
            return list(self.utterances)
        return sorted(self.utterances, key=lambda u: u.start)  # stable: ties keep file order

    @classmethod
    def from_transcript(cls, transcript: SpeakerTranscript, source: str = "") -> Reference:
        """Wrap a pipeline transcript (a hypothesis) in the same model as the references."""
        return cls(
            utterances=list(transcript.utterances),
            has_speakers=True,
            has_timestamps=True,
            has_words=any(u.words for u in transcript.utterances),
            speaker_names=dict(transcript.speaker_names),
            source=source or transcript.key,
            format="transcript",
        )


# -- file reading helpers ------------------------------------------------------------------
def _read_lines(path: Path) -> list[str]:
    """Lines without line endings; BOM stripped; CR/CRLF/LF all accepted."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ReferenceFormatError(path, f"not UTF-8 text ({exc})") from exc
    return text.splitlines()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ReferenceFormatError(path, f"invalid JSON ({exc})") from exc


def _float(path: Path, value: Any, what: str, line: int | None = None) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ReferenceFormatError(path, f"{what} is not a number: {value!r}", line) from exc
    if not math.isfinite(number):
        raise ReferenceFormatError(path, f"{what} is not finite: {value!r}", line)
    return number


def _utterance(speaker: str, start: float, end: float, text: str) -> Utterance:
    return Utterance(speaker=speaker, start=start, end=end, text_override=text)


# -- STM -----------------------------------------------------------------------------------
_STM_SKIP_SPEAKERS = {"inter_segment_gap", "excluded_region"}
_STM_IGNORE = "ignore_time_segment_in_scoring"


def load_stm(path: str | Path, file_id: str | None = None) -> Reference:
    """NIST STM: ``<file> <channel> <speaker> <begin> <end> [<label>] <transcript>``.

    ``;;`` lines are comments; segments marked ``ignore_time_segment_in_scoring`` and
    ``inter_segment_gap``/``excluded_region`` pseudo-speakers are dropped. An STM can hold many
    recordings: pass ``file_id`` to choose one; it is an error to leave it out when there are
    several, since mixing recordings would silently corrupt every metric.
    """
    path = Path(path)
    rows: list[tuple[str, Utterance]] = []
    for number, raw in enumerate(_read_lines(path), 1):
        line = raw.strip()
        if not line or line.startswith(";;"):
            continue
        fields = line.split(maxsplit=5)
        if len(fields) < 5:
            raise ReferenceFormatError(
                path, "STM line needs <file> <channel> <speaker> <begin> <end>", number
            )
        file, _channel, speaker, begin, end = fields[:5]
        text = fields[5] if len(fields) > 5 else ""
        if text.startswith("<"):  # optional <label> field, e.g. <o,f0,male>
            label_end = text.find(">")
            if label_end < 0:
                raise ReferenceFormatError(path, "unterminated <label> field", number)
            text = text[label_end + 1 :].strip()
        start = _float(path, begin, "begin time", number)
        stop = _float(path, end, "end time", number)
        if speaker in _STM_SKIP_SPEAKERS or text.strip() == _STM_IGNORE:
            continue
        rows.append((file, _utterance(speaker, start, stop, " ".join(text.split()))))

    return Reference(
        utterances=_one_recording(path, rows, file_id, "segments", "no STM segments found"),
        has_speakers=True,
        has_timestamps=True,
        has_words=False,
        source=str(path),
        format="stm",
    )


def _one_recording(
    path: Path,
    rows: list[tuple[str, Utterance]],
    file_id: str | None,
    what: str,
    none_found: str,
) -> list[Utterance]:
    """The utterances of one recording of an STM/RTTM file (both may hold several):
    ``file_id``'s, or the only one there is; a clear error otherwise."""
    files = sorted({f for f, _ in rows})
    if file_id is not None:
        rows = [(f, u) for f, u in rows if f == file_id]
        if not rows:
            raise ReferenceFormatError(path, f"no {what} for file {file_id!r} (has {files})")
    elif len(files) > 1:
        raise ReferenceFormatError(path, f"holds several recordings {files}: pass file_id")
    if not rows:
        raise ReferenceFormatError(path, none_found)
    return [u for _, u in rows]


# -- RTTM ----------------------------------------------------------------------------------
def load_rttm(path: str | Path, file_id: str | None = None) -> Reference:
    """NIST RTTM ``SPEAKER`` lines: turns only (``has_text`` False), enough for DER.

    ``SPEAKER <file> <channel> <onset> <duration> <NA> <NA> <speaker> <NA> <NA>``; other
    record types are skipped. ``file_id`` chooses one recording as in ``load_stm``.
    """
    path = Path(path)
    rows: list[tuple[str, Utterance]] = []
    for number, raw in enumerate(_read_lines(path), 1):
        line = raw.strip()
        if not line or line.startswith((";;", "#")):
            continue
        fields = line.split()
        if fields[0] != "SPEAKER":
            continue
        if len(fields) < 8:
            raise ReferenceFormatError(path, "RTTM SPEAKER line needs at least 8 fields", number)
        onset = _float(path, fields[3], "onset", number)
        duration = _float(path, fields[4], "duration", number)
        if duration < 0:
            raise ReferenceFormatError(path, f"negative duration {duration}", number)
        rows.append((fields[1], _utterance(fields[7], onset, onset + duration, "")))

    return Reference(
        utterances=_one_recording(path, rows, file_id, "turns", "no SPEAKER lines found"),
        has_speakers=True,
        has_timestamps=True,
        has_words=False,
        has_text=False,
        source=str(path),
        format="rttm",
    )


# -- RAG corrected.json (and our full transcript record) -----------------------------------
def _dialogs(path: Path, dialogs: Any, speakers: list[str] | None) -> tuple[list[Utterance], bool]:
    """Parse ``dialogs``/``utterances`` entries; return the utterances and whether any words."""
    if not isinstance(dialogs, list):
        raise ReferenceFormatError(path, "'dialogs' must be a list")
    utterances: list[Utterance] = []
    any_words = False
    for i, d in enumerate(dialogs):
        where = f"dialog {i}"
        if not isinstance(d, dict):
            raise ReferenceFormatError(path, f"{where} is not an object")
        missing = [k for k in ("speaker", "start", "end") if k not in d]
        if missing:
            raise ReferenceFormatError(path, f"{where} lacks {missing}")
        raw_speaker = d["speaker"]
        if isinstance(raw_speaker, bool):
            raise ReferenceFormatError(path, f"{where}: speaker {raw_speaker!r} is not a label")
        if isinstance(raw_speaker, int):
            if speakers is None:
                speaker = f"SPEAKER_{raw_speaker:02d}"
            elif 0 <= raw_speaker < len(speakers):
                speaker = str(speakers[raw_speaker])
            else:
                raise ReferenceFormatError(
                    path, f"{where}: speaker index {raw_speaker} outside 'speakers' list"
                )
        elif raw_speaker is None:
            speaker = UNKNOWN_SPEAKER
        else:
            speaker = str(raw_speaker)
        start = _float(path, d["start"], f"{where} start")
        end = _float(path, d["end"], f"{where} end")
        words = []
        for w in d.get("words") or []:
            if not isinstance(w, dict):
                raise ReferenceFormatError(path, f"{where}: a word is not an object")
            # Some aligners leave words (e.g. numbers) untimed: give them the dialog's span.
            try:
                word = Word.from_dict({"start": start, "end": end, **w, "speaker": speaker})
            except (TypeError, ValueError) as exc:
                raise ReferenceFormatError(path, f"{where}: bad word {w!r} ({exc})") from exc
            words.append(word)
        any_words = any_words or bool(words)
        text = d.get("text")
        if text is None:  # tolerate word-only dialogs: rebuild the text from the words
            text = " ".join(w.text.strip() for w in words if w.text.strip())
        utterances.append(
            Utterance(
                speaker=speaker,
                start=start,
                end=end,
                words=words,
                text_override=" ".join(str(text).split()),
            )
        )
    return utterances, any_words


def _speakers_json_for(corrected: Path) -> Path | None:
    """Where DESIGN.md puts ``asr/{n}.speakers.json`` relative to ``transcripts/{n}...``."""
    stem = corrected.name.removesuffix(".corrected.json").removesuffix(".json")
    for candidate in (
        corrected.parent / f"{stem}.speakers.json",
        corrected.parent.parent / "asr" / f"{stem}.speakers.json",
    ):
        if candidate.is_file():
            return candidate
    return None


def load_rag_corrected(
    corrected_json_path: str | Path, speakers_json_path: str | Path | None = None
) -> Reference:
    """The RAG pipeline's ``transcripts/{n}.corrected.json`` (DESIGN.md "Storage layout").

    ``{"dialogs": [{"speaker": <int>, "start", "end", "text", "words": [...]}], "speakers":
    ["SPEAKER_00", ...]}``: the integer indexes ``speakers``. Utterance speakers are those
    labels (names can repeat or be missing, labels cannot); ``speakers.json`` (label -> name)
    fills ``speaker_names``. The dialog ``text`` is the reference text, since it is what was
    corrected. Also reads our full record ``transcripts/{key}.json`` (``utterances`` with
    string speakers).
    """
    path = Path(corrected_json_path)
    data = _read_json(path)
    if not isinstance(data, dict) or not ("dialogs" in data or "utterances" in data):
        raise ReferenceFormatError(path, "expected an object with 'dialogs' (or 'utterances')")
    speakers = data.get("speakers")
    if speakers is not None and not isinstance(speakers, list):
        raise ReferenceFormatError(path, "'speakers' must be a list of labels")
    entries = data["dialogs"] if "dialogs" in data else data["utterances"]
    utterances, any_words = _dialogs(path, entries, speakers)

    names: dict[str, str] = {}
    if isinstance(data.get("speaker_names"), dict):
        names.update({str(k): str(v) for k, v in data["speaker_names"].items()})
    names_path = Path(speakers_json_path) if speakers_json_path else None
    if names_path is not None:
        mapping = _read_json(names_path)
        if not isinstance(mapping, dict):
            raise ReferenceFormatError(names_path, "speakers.json must map label -> name")
        names.update({str(k): str(v) for k, v in mapping.items()})
    return Reference(
        utterances=utterances,
        has_speakers=any(u.speaker != UNKNOWN_SPEAKER for u in utterances),
        has_timestamps=True,
        has_words=any_words,
        speaker_names=names,
        source=str(path),
        format="rag-json",
    )


# -- RAG markdown --------------------------------------------------------------------------
_MD_TIME = r"(\d+)h\s*(\d+)m\s*(\d+(?:\.\d+)?)s"
_MD_HEADER = re.compile(
    rf"^__(?P<name>.+?)__\s+_\(\s*{_MD_TIME}\s*-\s*{_MD_TIME}\s*\)_:\s*(?P<rest>.*)$"
)


def _md_seconds(h: str, m: str, s: str) -> float:
    return int(h) * 3600 + int(m) * 60 + float(s)


def load_rag_markdown(path: str | Path) -> Reference:
    """The RAG pipeline's ``markdown/{n}.md``.

    Each turn is a header ``__{Name}__ _({h}h {m}m {s:.2f}s-{h}h {m}m {s:.2f}s)_:`` followed by
    its text wrapped at 80 columns (re-joined with spaces here); turns are separated by blank
    lines. Text on the header line after the colon is accepted too. Markdown headings
    (``#`` lines) before the first turn are skipped; any other text there is an error, since
    it would belong to no speaker. Speakers are the display names the file shows.
    """
    path = Path(path)
    utterances: list[Utterance] = []
    current: list[str] = []
    header: tuple[str, float, float] | None = None

    def flush() -> None:
        if header is not None:
            name, start, end = header
            utterances.append(_utterance(name, start, end, " ".join(" ".join(current).split())))
        current.clear()

    for number, raw in enumerate(_read_lines(path), 1):
        line = raw.strip()
        match = _MD_HEADER.match(line)
        if match:
            flush()
            g = match.groups()
            start = _md_seconds(g[1], g[2], g[3])
            end = _md_seconds(g[4], g[5], g[6])
            header = (match["name"].strip(), start, end)
            if match["rest"]:
                current.append(match["rest"])
        elif not line:
            continue
        elif header is None:
            if line.startswith("#"):
                continue
            raise ReferenceFormatError(
                path, "text before the first '__Name__ _(…)_:' turn header", number
            )
        else:
            current.append(line)
    flush()
    if not utterances:
        raise ReferenceFormatError(path, "no '__Name__ _(0h 0m 0.00s-…)_:' turn headers found")
    return Reference(
        utterances=utterances,
        has_speakers=True,
        has_timestamps=True,
        has_words=False,
        source=str(path),
        format="rag-markdown",
    )


# -- SRT / VTT -----------------------------------------------------------------------------
_CUE_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{1,2})(?:[.,](\d{1,3}))?"
_CUE_TIMING = re.compile(rf"^\s*{_CUE_TIME}\s*-->\s*{_CUE_TIME}")
_VOICE = re.compile(r"<v(?:\.[\w.-]+)?\s+([^>]+)>", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>|\{\\[^}]*\}")  # HTML-like tags and ASS overrides ({\an8})
# "Name: text" or "[Name] text"/"[Name]: text". A name is 1-4 words each starting with an
# upper-case letter or digit (SPEAKER_00, Sam Charrington, Dr. Jane Doe), so sentence openings
# such as "Here's the thing: ..." are not taken for speakers.
_NAME = r"[A-Z0-9][\w.'’-]*(?:\s+[A-Z0-9][\w.'’-]*){0,3}"
_PREFIX = re.compile(rf"^(?:\[(?P<bracket>[^\]]{{1,40}})\]\s*:?|(?P<name>{_NAME})\s*:)\s+(?=\S)")


def _cue_seconds(groups: tuple[str | None, ...]) -> float:
    h, m, s, frac = groups
    seconds = int(h or 0) * 3600 + int(m or 0) * 60 + int(s or 0)
    if frac:
        seconds += int(frac) / 10 ** len(frac)
    return float(seconds)


def _split_speakers(lines: list[str]) -> list[tuple[str | None, str]]:
    """Split a cue's text lines into (speaker or None, text) parts at speaker prefixes."""
    parts: list[tuple[str | None, str]] = []
    for raw in lines:
        voice = _VOICE.search(raw)
        line = html.unescape(_TAG.sub("", raw)).strip()
        if not line:
            continue
        speaker: str | None = voice.group(1).strip() if voice else None
        prefix = _PREFIX.match(line)
        if prefix:
            speaker = (prefix["bracket"] or prefix["name"]).strip()
            line = line[prefix.end() :]
        if speaker is None and parts:
            parts[-1] = (parts[-1][0], f"{parts[-1][1]} {line}")
        else:
            parts.append((speaker, line))
    return parts


def load_subtitles(path: str | Path) -> Reference:
    """SRT or WebVTT subtitles: one utterance per cue (per speaker within a cue).

    The speaker comes from a VTT voice tag ``<v Name>`` or a leading ``Name:`` / ``[Name]``;
    a cue without one continues the previous cue's speaker (long turns name the speaker only
    on their first cue). A cue naming several speakers is split, its time shared out by word
    count. Formatting tags and HTML entities are removed; VTT ``NOTE``/``STYLE``/``REGION``
    blocks and cue settings are ignored. ``has_speakers`` is True when any cue names one.
    """
    path = Path(path)
    lines = _read_lines(path)
    is_vtt = bool(lines) and lines[0].lstrip().startswith("WEBVTT")
    utterances: list[Utterance] = []
    speaker: str | None = None
    seen_speaker = False

    # Group into blank-line-separated blocks, remembering each block's first line number.
    blocks: list[tuple[int, list[str]]] = []
    block: list[str] = []
    for number, raw in enumerate(lines, 1):
        if raw.strip():
            if not block:
                blocks.append((number, block))
            block.append(raw)
        else:
            block = []
    for number, block in blocks:
        timings = [i for i, ln in enumerate(block) if "-->" in ln]
        if not timings:
            head = block[0].strip()
            if is_vtt and head.startswith(("WEBVTT", "NOTE", "STYLE", "REGION")):
                continue
            raise ReferenceFormatError(path, "subtitle block without a '-->' timing line", number)
        if timings[0] > 1 and not (is_vtt and block[0].strip().startswith("WEBVTT")):
            raise ReferenceFormatError(path, "text outside any subtitle cue", number)
        # Usually one cue per block; files missing the blank line between cues hold several.
        for k, at in enumerate(timings):
            stop = timings[k + 1] if k + 1 < len(timings) else len(block)
            text_lines = block[at + 1 : stop]
            if k + 1 < len(timings) and text_lines and text_lines[-1].strip().isdigit():
                text_lines = text_lines[:-1]  # the next cue's SRT index
            match = _CUE_TIMING.match(block[at])
            if not match:
                raise ReferenceFormatError(
                    path, f"bad cue timing {block[at].strip()!r}", number + at
                )
            start = _cue_seconds(match.groups()[:4])
            end = _cue_seconds(match.groups()[4:])
            if end < start:
                raise ReferenceFormatError(path, "cue ends before it starts", number + at)
            parts = _split_speakers(text_lines)
            words_total = sum(len(text.split()) for _, text in parts) or 1
            cursor = start
            for part_speaker, text in parts:
                if part_speaker is not None:
                    speaker = part_speaker
                    seen_speaker = True
                share = (end - start) * len(text.split()) / words_total
                utterances.append(
                    _utterance(speaker or UNKNOWN_SPEAKER, cursor, cursor + share, text)
                )
                cursor += share
    if not utterances:
        raise ReferenceFormatError(path, "no subtitle cues found")
    return Reference(
        utterances=utterances,
        has_speakers=seen_speaker,
        has_timestamps=True,
        has_words=False,
        source=str(path),
        format="vtt" if is_vtt else "srt",
    )


# -- plain text ----------------------------------------------------------------------------
def load_text(path: str | Path) -> Reference:
    """Plain text: one utterance per non-blank line, no speakers, no times. Gives WER only."""
    path = Path(path)
    utterances = [
        _utterance(UNKNOWN_SPEAKER, 0.0, 0.0, " ".join(line.split()))
        for line in _read_lines(path)
        if line.strip()
    ]
    if not utterances:
        raise ReferenceFormatError(path, "empty reference text")
    return Reference(
        utterances=utterances,
        has_speakers=False,
        has_timestamps=False,
        has_words=False,
        source=str(path),
        format="text",
    )


# -- dispatch ------------------------------------------------------------------------------
_LOADERS: dict[str, Callable[[Path], Reference]] = {
    ".stm": load_stm,
    ".rttm": load_rttm,
    ".md": load_rag_markdown,
    ".markdown": load_rag_markdown,
    ".srt": load_subtitles,
    ".vtt": load_subtitles,
    ".txt": load_text,
    ".text": load_text,
}

SUPPORTED_SUFFIXES: tuple[str, ...] = (*_LOADERS, ".json")


def load_reference(path: str | Path, speakers_json_path: str | Path | None = None) -> Reference:
    """Load a reference of any supported format, chosen by file extension.

    ``.json`` is the RAG ``corrected.json`` (its ``speakers.json`` is looked up beside it or in
    ``../asr/`` when not given) or our full transcript record. A ``speakers.json`` alone is
    not a reference and is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        if path.name.endswith(".speakers.json"):
            raise ReferenceFormatError(
                path, "a speakers.json holds names only; load its corrected.json instead"
            )
        names = speakers_json_path or _speakers_json_for(path)
        return load_rag_corrected(path, names)
    loader = _LOADERS.get(suffix)
    if loader is None:
        raise ReferenceFormatError(
            path, f"unknown reference format {suffix!r}; supported: {list(SUPPORTED_SUFFIXES)}"
        )
    return loader(path)


def load_references(paths: Iterable[str | Path]) -> list[Reference]:
    """``load_reference`` over several files (e.g. one per episode)."""
    return [load_reference(p) for p in paths]
