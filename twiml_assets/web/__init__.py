"""The web app (``twiml-transcribe web``): episodes, transcripts, uploads, Dagster runs.

See docs/web.md. ``create_app`` builds the FastAPI app from :class:`WebSettings`.
"""

from twiml_assets.web.app import create_app
from twiml_assets.web.settings import WebSettings

__all__ = ["WebSettings", "create_app"]
