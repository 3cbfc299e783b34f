"""JSON Schemas of the files the RAG pipeline and our own tools read.

They document the output formats in machine-checkable form: tests validate
every written file against them, and integrity checks can too.
"""

from __future__ import annotations

from typing import Any

import jsonschema

_NUMBER = {"type": "number", "minimum": 0}
WORD = {
    "type": "object",
    "required": ["word", "start", "end", "probability"],
    "properties": {
        "word": {"type": "string"},
        "start": _NUMBER,
        "end": _NUMBER,
        "probability": {"type": "number", "minimum": 0, "maximum": 1},
        "speaker": {"type": "string"},
    },
}

CORRECTED_JSON = {
    "type": "object",
    "required": ["dialogs", "speakers"],
    "additionalProperties": False,
    "properties": {
        "speakers": {"type": "array", "items": {"type": "string"}},
        "dialogs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["speaker", "start", "end", "text", "words"],
                "properties": {
                    "speaker": {"type": "integer", "minimum": 0},
                    "start": _NUMBER,
                    "end": _NUMBER,
                    "text": {"type": "string"},
                    "words": {"type": "array", "items": WORD},
                },
            },
        },
    },
}

SPEAKERS_JSON = {
    "type": "object",
    "patternProperties": {"^.+$": {"type": "string", "minLength": 1}},
    "additionalProperties": False,
}

FULL_RECORD = {
    "type": "object",
    "required": [
        "schema_version",
        "key",
        "created",
        "duration",
        "language",
        "speakers",
        "speaker_names",
        "asr",
        "diarisation",
        "timings",
        "utterances",
    ],
    "properties": {
        "schema_version": {"const": 1},
        "key": {"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]*$"},
        "duration": _NUMBER,
        "speakers": {"type": "array", "items": {"type": "string"}},
        "speaker_names": {"type": "object", "additionalProperties": {"type": "string"}},
        "asr": {"type": "object", "required": ["model", "config", "seconds"]},
        "diarisation": {"type": "object", "required": ["model", "config", "seconds", "turns"]},
        "timings": {"type": "object", "additionalProperties": _NUMBER},
        "utterances": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["speaker", "start", "end", "text", "words"],
                "properties": {"words": {"type": "array", "items": WORD}},
            },
        },
    },
}


def validate(document: Any, schema: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` naming the offending part."""
    jsonschema.validate(document, schema)
