"""The feed stage: the feed snapshot, episode metadata and the sensor that follows the feed."""

from dagster import Definitions

from twiml_assets.feed.assets import episode_metadata, feed_catalog
from twiml_assets.feed.sensor import build_feed_sensor
from twiml_assets.settings import PlatformSettings


def definitions(settings: PlatformSettings) -> Definitions:
    """The sensor's period and default state come from the settings."""
    sensor = build_feed_sensor(
        minimum_interval_seconds=settings.sensor_interval,
        running_by_default=settings.sensor_status == "running",
    )
    return Definitions(assets=[feed_catalog, episode_metadata], sensors=[sensor])
