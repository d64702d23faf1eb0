"""Options every catalog command takes, shared by the command modules (light: no heavy imports)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

CONFIG_HELP = "TOML config file (default: $STRANDLINE_CONFIG, else ./strandline.toml if present)."


def config_option(f: Any) -> Any:
    """``--config/-c FILE``."""
    return click.option("--config", "-c", type=click.Path(path_type=Path, dir_okay=False), help=CONFIG_HELP)(f)
