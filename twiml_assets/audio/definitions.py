"""The audio stage: each episode's audio in storage, and its fingerprint."""

from dagster import Definitions

from twiml_assets.audio.assets import raw_audio
from twiml_assets.audio.fingerprint_assets import audio_fingerprint

defs = Definitions(assets=[raw_audio, audio_fingerprint])
