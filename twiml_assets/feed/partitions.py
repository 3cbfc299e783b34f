"""The one partitioning of the project: one dynamic partition per episode key.

Dynamic (not static) because the feed grows: the sensor adds a partition for each new
key it sees. Keys follow the rules of ``twiml_assets.keys`` and never contain commas, which
would break backfills in the Dagster UI.
"""

from __future__ import annotations

from dagster import DynamicPartitionsDefinition

EPISODES = "episodes"

episode_partitions = DynamicPartitionsDefinition(name=EPISODES)
