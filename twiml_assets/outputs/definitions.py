"""The outputs stage: the speaker transcript, the RAG files and the subtitles."""

from dagster import Definitions

from twiml_assets.outputs.assets import rag_outputs, speaker_transcript, subtitles

defs = Definitions(assets=[speaker_transcript, rag_outputs, subtitles])
