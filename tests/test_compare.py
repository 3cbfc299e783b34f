"""Model comparison: two configurations on generated speech, one complete table."""

from __future__ import annotations

import pandas as pd
import pytest

from twiml_assets.cli import main
from twiml_assets.quality.compare import parse_config, parse_configs


def test_config_specs_parse_profiles_and_typed_overrides() -> None:
    config = parse_config("cpu-dev:beam_size=1:compute_type=float32:num_speakers=2")
    assert config.asr == {"profile": "cpu-dev", "beam_size": 1, "compute_type": "float32"}
    assert config.diarisation["num_speakers"] == 2 and config.diarisation["pipeline"] == "offline"
    assert [c.name for c in parse_configs("cpu-dev, cpu-fast")] == ["cpu-dev", "cpu-fast"]
    with pytest.raises(ValueError, match="unknown profile"):
        parse_configs("nope")
    with pytest.raises(ValueError, match="key=value"):
        parse_config("cpu-dev:beam_size")


@pytest.mark.slow
def test_compare_two_configurations_produces_a_complete_table(dialogue, tmp_path, capsys) -> None:
    reference = tmp_path / "reference.stm"
    reference.write_text(dialogue.stm())
    code = main(
        [
            "compare",
            str(dialogue.audio_path),
            "--configs",
            "cpu-dev,cpu-dev:beam_size=1:batched=true",
            "--reference",
            str(reference),
            "--out",
            str(tmp_path / "out"),
            "--key",
            "dialogue",
        ]
    )
    assert code == 0, capsys.readouterr().err
    table = pd.read_csv(tmp_path / "out/comparisons/dialogue.csv")
    assert list(table["config"]) == ["cpu-dev", "cpu-dev:beam_size=1:batched=true"]
    assert list(table["beam_size"]) == [5, 1] and list(table["batched"]) == [False, True]
    for column in ("wer", "der", "cpwer", "rtf", "peak_rss_mb"):
        assert table[column].notna().all(), column
    assert (table["wer"] <= 0.15).all() and (table["der"] <= 0.2).all()
    assert (table["peak_rss_mb"] > 100).all() and (table["status"] == "ok").all()
    markdown = (tmp_path / "out/comparisons/dialogue.md").read_text()
    assert markdown.startswith("# Model comparison: dialogue") and "| cpu-dev |" in markdown
