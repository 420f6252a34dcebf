"""What the configuration tests share: an environment with no DOCBRAIN_* variables, and a
configuration file written from a test's text."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A minimal environment: state_dir goes under tmp_path, no DOCBRAIN_* variables."""
    return {"XDG_STATE_HOME": str(tmp_path / "xdg")}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "docbrain.toml"
    path.write_text(textwrap.dedent(text))
    return str(path)
