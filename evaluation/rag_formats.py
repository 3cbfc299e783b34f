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
    loaded,
    names_speakers,
    numbered_lines,
    parse_float,
    read_json,
    text_utterance,
)
from resources.schema import Utterance, Word, load


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
    return loaded(
        path,
        "rag-json",
        utterances,
        has_speakers=names_speakers(utterances),
        has_words=any(u.words for u in utterances),
        speaker_names={str(k): str(v) for k, v in names.items()},
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
