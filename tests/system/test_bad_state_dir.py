"""A state_dir that cannot be used: one line naming it and the problem, exit 2, from every
command, before anything is started or created.

Each kind of bad state_dir is made once; one interpreter then runs every command against it
in turn (a process per command would take most of a minute), each through
`supervisor.cli.main` exactly as the docbrainctl entry point does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO

from supervisor.proto.paths import NAME_MAX, PATH_MAX, StatePaths

COMMANDS: list[tuple[str, ...]] = [
    ("start",), ("start", "--foreground"), ("stop",), ("restart",), ("status",), ("reload",),
    ("scale", "2"), ("logs",), ("submit", "noop"), ("jobs",), ("job", "0" * 32), ("config",),
    ("doctor",), ("cleanup",), ("install-service", "--systemd", "--dry-run"),
]

DRIVER = """\
import contextlib, io, json, sys, traceback
from supervisor.cli.main import main
results = []
for args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    sys.argv = ["docbrainctl", "--config", sys.argv[2], *args]
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # what the interpreter would print: the failure looked for
            traceback.print_exc()
            code = 1
    results.append({"rc": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
print(json.dumps(results))
"""


class Kind:
    """One kind of bad state_dir: how to make it, what the message must say."""

    def __init__(self, make: Callable[[Path], str], problem: str,
                 writable_only: bool = False, read_only_mount: bool = False) -> None:
        self.make, self.problem = make, problem
        self.writable_only = writable_only      # only who may write it is wrong
        self.read_only_mount = read_only_mount  # root: needs a read-only file system


def _file(root: Path) -> str:
    (root / "state").write_text("")
    return str(root / "state")


def _below_a_file(root: Path) -> str:
    (root / "afile").write_text("")
    return str(root / "afile" / "state")


def _dangling(root: Path) -> str:
    (root / "state").symlink_to(root / "gone" / "state")
    return str(root / "state")


def _loop(root: Path) -> str:
    (root / "state").symlink_to(root / "state")
    return str(root / "state")


def _too_long(root: Path) -> str:
    path = str(root)
    while len(path) < PATH_MAX:
        path = os.path.join(path, "d" * 200)
    return path


def _long_name(root: Path) -> str:
    return str(root / ("n" * (NAME_MAX + 1)) / "state")


def _locked(root: Path) -> Path:
    """A directory we may not write: read-only for a user; for root, whom no mode bits
    stop, the driver mounts it read-only in a mount namespace of its own."""
    locked = root / "locked"
    (locked / "existing").mkdir(parents=True)
    if os.geteuid() != 0:
        (locked / "existing").chmod(0o500)
        locked.chmod(0o500)
    return locked


def _cannot_create(root: Path) -> str:
    return str(_locked(root) / "new" / "state")


def _not_writable(root: Path) -> str:
    return str(_locked(root) / "existing")


def _socket_dir_is_a_file(root: Path) -> str:
    """state_dir is fine but so deep that the sockets go to the short directory under
    $TMPDIR (the driver's TMPDIR is root/tmp), and a file is in its place."""
    state_dir = str(root / ("s" * 100))
    run_dir = StatePaths.for_state_dir(state_dir).run_dir
    assert not run_dir.startswith(state_dir)
    (root / "tmp").mkdir(exist_ok=True)
    (root / "tmp" / os.path.basename(run_dir)).write_text("")
    return state_dir


KINDS = {
    "file": Kind(_file, "is a file, not a directory"),
    "below-a-file": Kind(_below_a_file, "afile is a file, not a directory"),
    "dangling-symlink": Kind(_dangling, "is a dangling symlink (to "),
    "symlink-loop": Kind(_loop, "Too many levels of symbolic links"),
    "path-too-long": Kind(_too_long, "path too long: "),
    "name-too-long": Kind(_long_name, f"is {NAME_MAX + 1} bytes, the limit is {NAME_MAX}"),
    "cannot-create": Kind(_cannot_create, "cannot be created: ", writable_only=True,
                          read_only_mount=True),
    "not-writable": Kind(_not_writable, "existing: is ", writable_only=True,
                         read_only_mount=True),
    "socket-dir-is-a-file": Kind(_socket_dir_is_a_file, "is a file, not a directory"),
}


def _run_driver(root: Path, kind: Kind) -> dict[str, Any]:
    (root / "tmp").mkdir()
    state_dir = kind.make(root)
    config = root / "docbrain.toml"
    config.write_text(f'[supervisor]\nstate_dir = "{state_dir}"\n[models]\n')
    (root / "home").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCBRAIN_")}
    env.update(PYTHONPATH=str(REPO), HOME=str(root / "home"), TMPDIR=str(root / "tmp"))
    env.pop("XDG_CONFIG_HOME", None)
    argv = [sys.executable, "-c", DRIVER, json.dumps(COMMANDS), str(config)]
    if kind.read_only_mount and os.geteuid() == 0:
        locked = str(root / "locked")
        mount = f"mount --bind {locked} {locked} && mount -o remount,bind,ro {locked}"
        if shutil.which("unshare") is None:
            pytest.skip("root is stopped by no mode bits, and unshare(1), to mount a "
                        "read-only file system, is not installed")
        probe = subprocess.run(["unshare", "--mount", "sh", "-c", mount],
                               capture_output=True, text=True, timeout=30)
        if probe.returncode != 0:
            pytest.skip("root is stopped by no mode bits, and a read-only mount is not "
                        f"permitted here: {probe.stderr.strip()}")
        argv = ["unshare", "--mount", "sh", "-c", f'{mount} && exec "$@"', "sh", *argv]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120,
                          cwd=root)
    assert done.returncode == 0, done.stderr
    results = dict(zip((" ".join(c) for c in COMMANDS), json.loads(done.stdout)))
    return {"state_dir": state_dir, "results": results}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Kind name -> the state_dir and every command's result, made when first asked."""
    roots: list[Path] = []

    class Lazy(dict[str, Any]):
        def __missing__(self, name: str) -> Any:
            root = tmp_path_factory.mktemp(name)
            roots.append(root)
            try:
                self[name] = _run_driver(root, KINDS[name])
            except pytest.skip.Exception as skipped:  # once per kind, not per command
                self[name] = skipped
            return self[name]

    yield Lazy()
    for root in roots:  # a user's 0500 directories would stop pytest's own cleanup
        for path in (root / "locked", root / "locked" / "existing"):
            if path.exists():
                path.chmod(0o700)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("command", [" ".join(c) for c in COMMANDS])
@pytest.mark.parametrize("kind_name", list(KINDS))
def test_every_command_refuses_a_bad_state_dir(outcomes: dict[str, Any], kind_name: str,
                                               command: str) -> None:
    kind = KINDS[kind_name]
    outcome = outcomes[kind_name]
    if isinstance(outcome, pytest.skip.Exception):
        raise outcome
    result = outcome["results"][command]
    assert "Traceback" not in result["stderr"], result["stderr"]
    if command.startswith("install-service") and kind.writable_only:
        # The unit may run as another account: who may write state_dir is its business.
        assert result["rc"] == 0, result["stderr"]
        assert "ExecStart=" in result["stdout"]
        return
    assert result["rc"] == 2, result
    assert result["stdout"] == ""
    lines = result["stderr"].splitlines()
    assert len(lines) == 1, result["stderr"]
    what = "socket directory" if kind_name == "socket-dir-is-a-file" else "state_dir"
    assert lines[0].startswith(f"docbrainctl: {what} /"), lines[0]
    if what == "state_dir":  # named, a very long path by its two ends
        assert outcome["state_dir"][:40] in lines[0] and outcome["state_dir"][-40:] in lines[0]
    assert kind.problem in lines[0], lines[0]
    assert len(lines[0]) < 400


def test_nothing_is_created_by_checking(tmp_path: Path) -> None:
    """A state_dir that does not exist yet is fine, and looking at it makes nothing."""
    paths = StatePaths.for_state_dir(str(tmp_path / "a" / "b" / "state"))
    paths.check()
    assert list(tmp_path.iterdir()) == []
    paths.create()
    assert os.path.isdir(paths.run_dir)
    paths.check()  # and once made, it is still fine
