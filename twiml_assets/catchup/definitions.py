"""The catch-up's own definitions: the failure sensors and the failed_episodes table."""

from dagster import Definitions

from twiml_assets.catchup.sensors import build_failure_sensors, failed_episodes
from twiml_assets.catchup.status import RetryRules
from twiml_assets.settings import PlatformSettings


def definitions(settings: PlatformSettings) -> Definitions:
    """Failure sensors as often as the feed sensor, at least every 30 s."""
    rules = RetryRules(settings.max_attempts, settings.retry_cooldown)
    sensors = build_failure_sensors(rules, min(30, settings.sensor_interval))
    return Definitions(assets=[failed_episodes], sensors=sensors)
