"""Every reference format's loader: those of scoring tools and publishers (STM, RTTM,
SRT/VTT, plain text, Podcasting 2.0 JSON) and the RAG pipeline's own files (``corrected.json``
with its ``speakers.json``, our full transcript record, the markdown transcript)."""

from __future__ import annotations

import html
import re
from itertools import groupby
from pathlib import Path
from typing import Any

from evaluation.references import (
    UNKNOWN_SPEAKER,
    Reference,
    ReferenceFormatError,
    loaded,
    names_speakers,
    numbered_lines,
    parse_float,
    read_json,
    read_lines,
    text_utterance,
)
from resources.schema import Utterance, Word, load

# -- STM and RTTM --------------------------------------------------------------------------
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
    for number, line in numbered_lines(path, (";;",)):
        fields = line.split(maxsplit=5)
        if len(fields) < 5:
            raise ReferenceFormatError(
                path, "STM line needs <file> <channel> <speaker> <begin> <end>", number
            )
        file, _channel, speaker, begin, end, *rest = fields
        text = " ".join(rest)
        if text.startswith("<"):  # optional <label> field, e.g. <o,f0,male>
            label_end = text.find(">")
            if label_end < 0:
                raise ReferenceFormatError(path, "unterminated <label> field", number)
            text = text[label_end + 1 :].strip()
        start = parse_float(path, begin, "begin time", number)
        stop = parse_float(path, end, "end time", number)
        if speaker not in _STM_SKIP_SPEAKERS and text.strip() != _STM_IGNORE:
            rows.append((file, text_utterance(speaker, start, stop, text)))
    utterances = _one_recording(path, rows, file_id, "segments")
    return loaded(path, "stm", utterances, "no STM segments found")


def load_rttm(path: str | Path, file_id: str | None = None) -> Reference:
    """NIST RTTM ``SPEAKER`` lines: turns only (``has_text`` False), enough for DER.

    ``SPEAKER <file> <channel> <onset> <duration> <NA> <NA> <speaker> <NA> <NA>``; other
    record types are skipped. ``file_id`` chooses one recording as in ``load_stm``.
    """
    path = Path(path)
    rows: list[tuple[str, Utterance]] = []
    for number, line in numbered_lines(path, (";;", "#")):
        fields = line.split()
        if fields[0] != "SPEAKER":
            continue
        if len(fields) < 8:
            raise ReferenceFormatError(path, "RTTM SPEAKER line needs at least 8 fields", number)
        onset = parse_float(path, fields[3], "onset", number)
        duration = parse_float(path, fields[4], "duration", number)
        if duration < 0:
            raise ReferenceFormatError(path, f"negative duration {duration}", number)
        rows.append((fields[1], text_utterance(fields[7], onset, onset + duration, "")))
    utterances = _one_recording(path, rows, file_id, "turns")
    return loaded(path, "rttm", utterances, "no SPEAKER lines found", has_text=False)


def _one_recording(
    path: Path, rows: list[tuple[str, Utterance]], file_id: str | None, what: str
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
    return [u for _, u in rows]


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
    return int(h or 0) * 3600 + int(m or 0) * 60 + int(s or 0) + float(f"0.{frac or 0}")


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
    lines = read_lines(path)
    is_vtt = bool(lines) and lines[0].lstrip().startswith("WEBVTT")
    utterances: list[Utterance] = []
    speaker: str | None = None
    for filled, group in groupby(enumerate(lines, 1), key=lambda item: bool(item[1].strip())):
        if not filled:  # blank lines separate blocks
            continue
        numbers, block = zip(*group, strict=True)
        number, head = numbers[0], block[0].strip()
        timings = [i for i, ln in enumerate(block) if "-->" in ln]
        if not timings:
            if is_vtt and head.startswith(("WEBVTT", "NOTE", "STYLE", "REGION")):
                continue
            raise ReferenceFormatError(path, "subtitle block without a '-->' timing line", number)
        if timings[0] > 1 and not (is_vtt and head.startswith("WEBVTT")):
            raise ReferenceFormatError(path, "text outside any subtitle cue", number)
        # Usually one cue per block; files missing the blank line between cues hold several.
        for at, stop in zip(timings, [*timings[1:], len(block)], strict=True):
            text_lines = list(block[at + 1 : stop])
            if stop < len(block) and text_lines and text_lines[-1].strip().isdigit():
                text_lines.pop()  # the next cue's SRT index
            match = _CUE_TIMING.match(block[at])
            if not match:
                raise ReferenceFormatError(
                    path, f"bad cue timing {block[at].strip()!r}", number + at
                )
            start, end = _cue_seconds(match.groups()[:4]), _cue_seconds(match.groups()[4:])
            if end < start:
                raise ReferenceFormatError(path, "cue ends before it starts", number + at)
            parts = _split_speakers(text_lines)
            words_total = sum(len(text.split()) for _, text in parts) or 1
            cursor = start
            for part_speaker, text in parts:
                speaker = part_speaker if part_speaker is not None else speaker
                share = (end - start) * len(text.split()) / words_total
                # The text as written: Utterance directly, not the collapsing text_utterance.
                who = speaker or UNKNOWN_SPEAKER
                utterances.append(Utterance(who, cursor, cursor + share, text_override=text))
                cursor += share
    fmt = "vtt" if is_vtt else "srt"
    return loaded(path, fmt, utterances, "no subtitle cues found", has_speakers=speaker is not None)


# -- plain text and Podcasting 2.0 JSON ----------------------------------------------------
def load_text(path: str | Path) -> Reference:
    """Plain text: one utterance per non-blank line, no speakers, no times. Gives WER only."""
    path = Path(path)
    utterances = [
        text_utterance(UNKNOWN_SPEAKER, 0.0, 0.0, line) for _, line in numbered_lines(path)
    ]
    return loaded(
        path, "text", utterances, "empty reference text", has_speakers=False, has_timestamps=False
    )


def load_podcast_json(path: str | Path) -> Reference:
    """A Podcasting 2.0 JSON transcript: ``{"segments": [{speaker, startTime, endTime, body}]}``.

    One utterance per segment (publishers often emit one segment per word; the metrics
    merge a speaker's abutting turns themselves). ``speaker`` is optional in the spec: a
    file with none gives WER only.
    """
    path = Path(path)
    data = read_json(path)
    segments = data.get("segments") if isinstance(data, dict) else None
    if not isinstance(segments, list):
        raise ReferenceFormatError(path, "expected a Podcasting 2.0 object with 'segments'")
    utterances: list[Utterance] = []
    for i, seg in enumerate(segments):
        if not isinstance(seg, dict) or "body" not in seg:
            raise ReferenceFormatError(path, f"segment {i} is not an object with 'body'")
        try:
            start = float(seg.get("startTime", 0.0))
            end = float(seg.get("endTime", start))
        except (TypeError, ValueError) as exc:
            raise ReferenceFormatError(path, f"segment {i}: bad startTime/endTime") from exc
        speaker = str(seg.get("speaker") or "").strip() or UNKNOWN_SPEAKER
        utterances.append(text_utterance(speaker, start, end, str(seg["body"])))
    timed = all("startTime" in seg and "endTime" in seg for seg in segments)
    has = {"has_speakers": names_speakers(utterances), "has_timestamps": timed}
    return loaded(path, "podcast-json", utterances, "no transcript segments", **has)


def is_podcast_json(path: Path) -> bool:
    """A Podcasting 2.0 transcript, not a RAG ``corrected.json`` (both are ``.json``)."""
    try:
        data = read_json(path)
    except ReferenceFormatError:
        return False
    return isinstance(data, dict) and "segments" in data and "dialogs" not in data


# -- RAG corrected.json (and our full transcript record) -----------------------------------
def _speaker(path: Path, where: str, raw: Any, speakers: list[str] | None) -> str:
    """A dialog's speaker: an index into ``speakers`` (``SPEAKER_{n:02d}`` without them),
    a label, or None for an unknown one."""
    if isinstance(raw, bool):
        raise ReferenceFormatError(path, f"{where}: speaker {raw!r} is not a label")
    if raw is None:
        return UNKNOWN_SPEAKER
    if not isinstance(raw, int):
        return str(raw)
    if speakers is None:
        return f"SPEAKER_{raw:02d}"
    if 0 <= raw < len(speakers):
        return str(speakers[raw])
    raise ReferenceFormatError(path, f"{where}: speaker index {raw} outside 'speakers' list")


def _dialogs(path: Path, dialogs: Any, speakers: list[str] | None) -> list[Utterance]:
    """Parse ``dialogs``/``utterances`` entries."""
    if not isinstance(dialogs, list):
        raise ReferenceFormatError(path, "'dialogs' must be a list")
    utterances: list[Utterance] = []
    for i, d in enumerate(dialogs):
        where = f"dialog {i}"
        if not isinstance(d, dict):
            raise ReferenceFormatError(path, f"{where} is not an object")
        missing = [k for k in ("speaker", "start", "end") if k not in d]
        if missing:
            raise ReferenceFormatError(path, f"{where} lacks {missing}")
        speaker = _speaker(path, where, d["speaker"], speakers)
        start = parse_float(path, d["start"], f"{where} start")
        end = parse_float(path, d["end"], f"{where} end")
        words = []
        for w in d.get("words") or []:
            if not isinstance(w, dict):
                raise ReferenceFormatError(path, f"{where}: a word is not an object")
            # Some aligners leave words (e.g. numbers) untimed: give them the dialog's span.
            try:
                words.append(load(Word, {"start": start, "end": end, **w, "speaker": speaker}))
            except (TypeError, ValueError) as exc:
                raise ReferenceFormatError(path, f"{where}: bad word {w!r} ({exc})") from exc
        text = d.get("text")
        if text is None:  # tolerate word-only dialogs: rebuild the text from the words
            text = " ".join(w.text.strip() for w in words if w.text.strip())
        utterances.append(text_utterance(speaker, start, end, str(text), words))
    return utterances


def speakers_json_for(corrected: Path) -> Path | None:
    """Where the layout puts ``asr/{n}.speakers.json`` relative to ``transcripts/{n}...``."""
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
    """The RAG pipeline's ``transcripts/{n}.corrected.json``.

    ``{"dialogs": [{"speaker": <int>, "start", "end", "text", "words": [...]}], "speakers":
    ["SPEAKER_00", ...]}``: the integer indexes ``speakers``. Utterance speakers are those
    labels (names can repeat or be missing, labels cannot); ``speakers.json`` (label -> name)
    fills ``speaker_names``. The dialog ``text`` is the reference text, since it is what was
    corrected. Also reads our full record ``transcripts/{key}.json`` (``utterances`` with
    string speakers).
    """
    path = Path(corrected_json_path)
    data = read_json(path)
    if not isinstance(data, dict) or not ("dialogs" in data or "utterances" in data):
        raise ReferenceFormatError(path, "expected an object with 'dialogs' (or 'utterances')")
    speakers = data.get("speakers")
    if speakers is not None and not isinstance(speakers, list):
        raise ReferenceFormatError(path, "'speakers' must be a list of labels")
    utterances = _dialogs(path, data.get("dialogs", data.get("utterances")), speakers)
    names = data.get("speaker_names")
    names = dict(names) if isinstance(names, dict) else {}
    if speakers_json_path:
        names_path = Path(speakers_json_path)
        mapping = read_json(names_path)
        if not isinstance(mapping, dict):
            raise ReferenceFormatError(names_path, "speakers.json must map label -> name")
        names.update(mapping)
    has = dict(has_speakers=names_speakers(utterances), has_words=any(u.words for u in utterances))
    names = {str(k): str(v) for k, v in names.items()}
    return loaded(path, "rag-json", utterances, speaker_names=names, **has)


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
    turns: list[tuple[str, float, float, list[str]]] = []
    for number, line in numbered_lines(path):
        if header := _MD_HEADER.match(line):
            g = header.groups()
            start, end = _md_seconds(*g[1:4]), _md_seconds(*g[4:7])
            turns.append((header["name"].strip(), start, end, [header["rest"]]))
        elif turns:
            turns[-1][3].append(line)
        elif not line.startswith("#"):
            raise ReferenceFormatError(
                path, "text before the first '__Name__ _(…)_:' turn header", number
            )
    utterances = [text_utterance(name, a, b, " ".join(text)) for name, a, b, text in turns]
    return loaded(
        path, "rag-markdown", utterances, "no '__Name__ _(0h 0m 0.00s-…)_:' turn headers found"
    )
