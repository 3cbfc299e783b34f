"""The quality stage: integrity and evaluation checks, evaluation, summary, model comparison."""

from dagster import Definitions

from twiml_assets.quality.assets import evaluation, evaluation_summary, model_comparison
from twiml_assets.quality.checks import ALL_CHECKS

defs = Definitions(
    assets=[evaluation, evaluation_summary, model_comparison], asset_checks=ALL_CHECKS
)
