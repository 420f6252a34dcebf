"""What tests/unit/test_units.py and tests/system/test_units.py share: the parameters of
the units rendered."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from types import MappingProxyType
from typing import Any

from supervisor.conf import envguard
from supervisor.service import units
from supervisor.service.units import STATE_DIR_VAR, UnitParams

VENV_CTL = str(Path(sys.executable).parent / "docbrainctl")
# Values that need quoting; the empty one must survive as an empty value.
AWKWARD_ENV = {"EMPTY": "", "SPACED": "a b  c", "QUOTED": 'say "hi"', "SLASHED": "a\\b",
               "PERCENT": "50%", "DOLLAR": "$HOME"}


def params(tmp_path: Path, **changes: Any) -> UnitParams:
    state_dir = str(tmp_path / "state dir")
    base = UnitParams(
        program=units.program_for(sys.executable),
        config_path=str(tmp_path / "my config%.toml"),
        state_dir=state_dir,
        env=MappingProxyType({**envguard.guard_defaults(cores=4, workers=2), **AWKWARD_ENV,
                              STATE_DIR_VAR: state_dir}),
        start_timeout=120.0, stop_timeout=7.5, user="docbrain", group="docbrain")
    return dataclasses.replace(base, **changes)
