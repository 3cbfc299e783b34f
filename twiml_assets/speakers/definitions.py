"""The speakers stage: names for the diarisation's labels."""

from dagster import Definitions

from twiml_assets.speakers.assets import speaker_names

defs = Definitions(assets=[speaker_names])
