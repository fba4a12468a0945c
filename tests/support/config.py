"""Configurations written by tests, as a user writes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from meterline.config import load_config
from meterline.core.config import ConfigError


def problems_of(tmp_path: Path, toml: str) -> dict[str, str]:
    """field -> why, for every problem `config check` would report in `toml` over the defaults."""
    path = tmp_path / "meterline.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_config(path, {})
    return {p.field: p.why for p in caught.value.problems}
