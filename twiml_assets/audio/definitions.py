"""The audio stage: each episode's audio in storage."""

from dagster import Definitions

from twiml_assets.audio.assets import raw_audio

defs = Definitions(assets=[raw_audio])
