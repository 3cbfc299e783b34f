"""The speech stage: one model step that makes the transcript and the diarisation."""

from dagster import Definitions

from twiml_assets.speech.assets import transcribe_and_diarise

defs = Definitions(assets=[transcribe_and_diarise])
