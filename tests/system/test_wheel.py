"""A wheel built from the project installs every room and runs: `docbrainctl status` of a
fresh environment that has the wheel (and borrows only the dependencies of this one)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from conftest import REPO


def _sources(dest: Path) -> None:
    """The files git has (or would add), copied: the build writes only into the copy."""
    listed = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source, target = REPO / name, dest / name
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read_bytes())


def test_a_built_wheel_installs_and_runs(tmp_path: Path) -> None:
    src, dist, env_dir = tmp_path / "src", tmp_path / "dist", tmp_path / "env"
    _sources(src)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(dist), str(src)], check=True, timeout=300)
    (wheel,) = dist.glob("docbrain_supervisor-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("supervisor/cli/main.py", "supervisor/jobs/broker.py",
                   "supervisor/jobs/store.py", "supervisor/proto/wire.py",
                   "supervisor/pool/pool.py", "supervisor/doctor/probe.py",
                   "supervisor/service/units.py", "supervisor/conf/settings.py",
                   "supervisor/daemon/daemon.py", "workers/main.py"):
        assert module in names, module
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True,
                   timeout=120)
    python = env_dir / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", str(wheel)], check=True, timeout=300)
    # The dependencies come from this environment's site-packages, added after the new
    # one's own: the project itself is imported from the wheel, not from this checkout.
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    Path(site.stdout.strip(), "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DOCBRAIN_CONFIG")}
    where = subprocess.run([str(python), "-c", "import supervisor.jobs.broker, workers.main; "
                            "print(supervisor.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    assert where.stdout.strip().startswith(site.stdout.strip())
    config = tmp_path / "docbrain.toml"
    config.write_text(f'[supervisor]\nstate_dir = "{tmp_path / "state"}"\n')
    status = subprocess.run([str(env_dir / "bin" / "docbrainctl"), "--config", str(config),
                             "status"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=120)
    assert status.returncode == 3, status.stdout + status.stderr  # LSB: not running
    assert status.stderr.startswith("docbrainctl: docbrain is not running")
    version = subprocess.run([str(env_dir / "bin" / "docbrainctl"), "--version"], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and "docbrainctl, version 0.1.0" in version.stdout
