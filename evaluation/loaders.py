"""One entry point for every reference format: the loader is chosen by the file's ending
(and, for ``.json``, by its content)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from evaluation import formats
from evaluation.references import Reference, ReferenceFormatError

_LOADERS: dict[str, Callable[[Path], Reference]] = {
    ".stm": formats.load_stm,
    ".rttm": formats.load_rttm,
    **dict.fromkeys((".md", ".markdown"), formats.load_rag_markdown),
    **dict.fromkeys((".srt", ".vtt"), formats.load_subtitles),
    **dict.fromkeys((".txt", ".text"), formats.load_text),
}

SUPPORTED_SUFFIXES: tuple[str, ...] = (*_LOADERS, ".json")


def load_reference(path: str | Path, speakers_json_path: str | Path | None = None) -> Reference:
    """Load a reference of any supported format, chosen by file extension.

    ``.json`` is a Podcasting 2.0 transcript, the RAG ``corrected.json`` (its ``speakers.json``
    is looked up beside it or in ``../asr/`` when not given) or our full transcript record. A
    ``speakers.json`` alone is not a reference and is refused.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".json":
        if formats.is_podcast_json(path):
            return formats.load_podcast_json(path)
        if path.name.endswith(".speakers.json"):
            raise ReferenceFormatError(
                path, "a speakers.json holds names only; load its corrected.json instead"
            )
        names = speakers_json_path or formats.speakers_json_for(path)
        return formats.load_rag_corrected(path, names)
    loader = _LOADERS.get(suffix)
    if loader is None:
        raise ReferenceFormatError(
            path, f"unknown reference format {suffix!r}; supported: {list(SUPPORTED_SUFFIXES)}"
        )
    return loader(path)


def load_references(paths: Iterable[Path]) -> tuple[list[tuple[Path, Reference]], list[str]]:
    """Load what can be loaded; the rest become ``"name: reason"`` lines (never an exception).

    A broken reference must not fail an episode: it is reported in metadata instead.
    """
    loaded: list[tuple[Path, Reference]] = []
    errors: list[str] = []
    for path in paths:
        try:
            loaded.append((path, load_reference(path)))
        except (ValueError, OSError) as exc:
            errors.append(f"{path.name}: {exc}")
    return loaded, errors
