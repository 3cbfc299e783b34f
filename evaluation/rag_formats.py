"""The RAG pipeline's own files as references: ``corrected.json`` (+ ``speakers.json``), our
full transcript record, and the markdown transcript."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from evaluation.references import (
    UNKNOWN_SPEAKER,
    Reference,
    ReferenceFormatError,
    parse_float,
    read_json,
    read_lines,
    text_utterance,
)
from resources.schema import Utterance, Word


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
        start = parse_float(path, d["start"], f"{where} start")
        end = parse_float(path, d["end"], f"{where} end")
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
    entries = data["dialogs"] if "dialogs" in data else data["utterances"]
    utterances, any_words = _dialogs(path, entries, speakers)

    names: dict[str, str] = {}
    if isinstance(data.get("speaker_names"), dict):
        names.update({str(k): str(v) for k, v in data["speaker_names"].items()})
    names_path = Path(speakers_json_path) if speakers_json_path else None
    if names_path is not None:
        mapping = read_json(names_path)
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
            utterances.append(text_utterance(name, start, end, " ".join(" ".join(current).split())))
        current.clear()

    for number, raw in enumerate(read_lines(path), 1):
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
