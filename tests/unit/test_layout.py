"""The rooms of the code: names of modules written in strings (the probe script, the
Makefile, the entry point) are real, packaging finds every subpackage, and files and
classes stay small. The import contracts: tests/system/test_import_contracts.py."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
import setuptools
from conftest import REPO

from supervisor.doctor.facts import PROBE_SCRIPT

PACKAGES = ("supervisor", "workers")
MAX_FILE_LINES = 400
MAX_CLASS_LINES = 270
# setuptools (imported for its package finder) warns when something imported distutils first.
pytestmark = pytest.mark.filterwarnings("ignore:Setuptools is replacing distutils")


def test_the_probe_script_names_the_probe_module() -> None:
    modules = re.findall(r"^from (\S+) import probe_main$", PROBE_SCRIPT, re.M)
    assert modules == ["supervisor.doctor.probe"]
    assert hasattr(importlib.import_module(modules[0]), "probe_main")


def test_the_makefile_and_the_entry_point_name_real_modules() -> None:
    makefile = (REPO / "Makefile").read_text()
    named = re.findall(r"python -m ([\w.]+)", makefile)
    assert "supervisor.service.units" in named
    for name in named:
        assert importlib.util.find_spec(name) is not None, name
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    module, _, function = project["scripts"]["docbrainctl"].partition(":")
    assert callable(getattr(importlib.import_module(module), function))


def test_packaging_finds_every_subpackage() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    find = config["tool"]["setuptools"]["packages"]["find"]
    found = set(setuptools.find_packages(str(REPO), include=find["include"]))
    on_disk = {str(p.parent.relative_to(REPO)).replace("/", ".")
               for package in PACKAGES for p in (REPO / package).rglob("__init__.py")}
    assert found == on_disk
    assert {"supervisor.jobs", "supervisor.proto", "supervisor.cli"} <= found


def test_files_and_classes_stay_small() -> None:
    too_long = []
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            text = path.read_text()
            lines = text.count("\n")
            if lines > MAX_FILE_LINES:
                too_long.append(f"{path.relative_to(REPO)}: {lines} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.ClassDef):
                    size = (node.end_lineno or node.lineno) - node.lineno + 1
                    if size > MAX_CLASS_LINES:
                        too_long.append(f"{path.relative_to(REPO)}: class {node.name} {size}")
    assert too_long == []
