"""The import contracts of the rooms (import-linter, [tool.importlinter] in pyproject.toml)
hold, and fail when a back-import breaks them; every module imports, and logs under the
name of its room. Run as processes (lint-imports) and with torch imported: not unit tests."""

from __future__ import annotations

import importlib
import logging
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

import supervisor
import workers

LINT = Path(sys.executable).with_name("lint-imports")
PACKAGES = ("supervisor", "workers")


def _modules() -> list[str]:
    names = []
    for package in (supervisor, workers):
        names.append(package.__name__)
        names += [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    return names


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    # A cache is kept only in the repository (git ignores it); copies lint afresh.
    return subprocess.run([str(LINT), "--config", str(root / "pyproject.toml"), "--no-cache"],
                          cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root)})


def test_the_import_contracts_hold() -> None:
    done = _lint(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize("module, line, contract", [
    # A leaf that reaches up into the control plane.
    ("supervisor/proto/wire.py", "from supervisor.daemon import daemon", "Layers"),
    # Two rooms that must stay independent.
    ("supervisor/jobs/held.py", "from supervisor.pool import lifecycle", "Layers"),
    # The worker program reaching into the daemon's configuration.
    ("workers/tasks.py", "from supervisor.conf import settings", "worker program"),
    # A cycle inside one room.
    ("supervisor/jobs/journal.py", "from supervisor.jobs import broker", "No import cycle"),
])
def test_a_back_import_breaks_the_contracts(tmp_path: Path, module: str, line: str,
                                            contract: str) -> None:
    for package in PACKAGES:
        shutil.copytree(REPO / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    assert _lint(tmp_path).returncode == 0  # the copy as it is keeps them
    with open(tmp_path / module, "a") as fh:
        fh.write(f"\n{line}  # noqa: E402,F401\n")
    done = _lint(tmp_path)
    assert done.returncode == 1, done.stdout
    broken = [text for text in done.stdout.split("\n\n") if "BROKEN" in text]
    assert broken and any(contract in text for text in broken), done.stdout


def test_every_module_imports() -> None:
    for name in _modules():
        importlib.import_module(name)


def test_loggers_are_named_after_their_room() -> None:
    """A log line names the room it comes from: `supervisor.jobs: ...`."""
    names = {}
    for name in _modules():
        log = getattr(importlib.import_module(name), "log", None)
        if isinstance(log, logging.Logger):
            names[name] = log.name
    assert names  # the rooms do log
    for module, logger in names.items():
        room = module.rsplit(".", 1)[0] if module.count(".") >= 1 else module
        if module == "supervisor.pool.spawner":
            assert logger == "supervisor.worker"  # the lines workers write, relayed
        else:
            assert logger == room, (module, logger)
