"""The published contracts: checked-in JSON Schemas match the models; the config rejects bad input clearly."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon.config import load_config
from daemon.errors import ConfigError
from schemas.generate import OUT, rendered


def test_checked_in_json_schemas_are_current() -> None:
    stale = [name for name, text in rendered().items() if not (OUT / name).exists() or (OUT / name).read_text() != text]
    assert not stale, f"stale schemas {stale}: run `make schemas`"


def test_env_overrides_the_config_file_and_keeps_its_other_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "strandline.toml"
    cfg.write_text(
        '[kafka]\nbootstrap = "file:1"\ntopic_prefix = "fromfile"\n[[datasets]]\nname = "sales"\nroot = "data/sales"\n'
    )
    monkeypatch.setenv("STRANDLINE_KAFKA_BOOTSTRAP", "env:2")
    config = load_config(cfg)
    assert config.kafka.bootstrap == "env:2"
    assert config.kafka.topic_prefix == "fromfile"
    assert config.datasets[0].root == str(tmp_path / "data" / "sales")
    assert config.state_dir == tmp_path / ".strandline"


def test_a_bad_config_names_the_file_the_key_and_what_is_allowed(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[datasets]]\nname = "no spaces allowed"\nroot = "x"\n')
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    message = str(info.value)
    assert str(cfg) in message and "datasets.0.name" in message and "allowed" in message


def test_unknown_keys_are_errors_not_silently_ignored(tmp_path: Path) -> None:
    cfg = tmp_path / "typo.toml"
    cfg.write_text("setle_seconds = 3\n")
    with pytest.raises(ConfigError, match="setle_seconds"):
        load_config(cfg)
