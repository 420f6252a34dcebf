"""Where workers find task modules: [workers] task_path, [env] PYTHONPATH, the README's own
example as written (its mytasks.py and docbrain.toml, taken from README.md)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO, Instance

from supervisor.conf.config import ConfigError, load_config

MODULE = '''\
from workers import task


@task("found.here")
def here(payload):
    return {"from": __file__, "payload": payload}
'''


def _readme_block(lang: str, first_line: str) -> str:
    """The README's fenced block of `lang` whose first line starts with `first_line`."""
    text = (REPO / "README.md").read_text()
    for block in re.findall(rf"```{lang}\n(.*?)```", text, re.S):
        if block.startswith(first_line):
            return str(block)
    raise AssertionError(f"README.md has no ```{lang} block starting {first_line!r}")


def test_task_path_is_relative_to_the_config_file_and_must_exist(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    config = tmp_path / "conf" / "docbrain.toml"
    config.parent.mkdir()
    config.write_text('[workers]\ntask_path = ["../app", "/"]\n')
    loaded = load_config(str(config), environ={})
    assert loaded.workers.task_path == (str(tmp_path / "app"), "/")
    config.write_text('[workers]\ntask_path = ["nowhere"]\n')
    try:
        load_config(str(config), environ={})
    except ConfigError as exc:
        assert str(exc) == (f"workers.task_path: 'nowhere' is not a directory "
                            f"({tmp_path / 'conf' / 'nowhere'})")
    else:
        raise AssertionError("a task_path entry that is no directory was accepted")


def test_module_path_puts_task_path_before_env_pythonpath(tmp_path: Path) -> None:
    config = tmp_path / "docbrain.toml"
    config.write_text(f'[workers]\ntask_path = ["."]\n[env]\nPYTHONPATH = "/a:{tmp_path}:/b"\n')
    assert load_config(str(config), environ={}).module_path() == (str(tmp_path), "/a", "/b")


def test_bad_task_path_is_one_line_exit_2(instance: Instance) -> None:
    instance.write_config('task_path = ["missing-dir"]\n')
    for args in (("config",), ("start",)):
        result = instance.ctl(*args)
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().count("\n") == 0, result.stderr
        assert "workers.task_path: 'missing-dir' is not a directory" in result.stderr


def _submit(instance: Instance, task: str) -> dict[str, object]:
    result = instance.ctl("submit", task, '{"n": 1}', "--wait")
    assert result.returncode == 0, result.stderr
    value = json.loads(result.stdout)
    assert isinstance(value, dict)
    return value


def test_workers_import_from_task_path_and_env_pythonpath(instance: Instance) -> None:
    """Neither directory is on the PYTHONPATH that docbrainctl runs with."""
    app = instance.root / "app"
    app.mkdir()
    (app / "apptasks.py").write_text(MODULE)
    other = instance.root / "elsewhere"
    other.mkdir()
    (other / "othertasks.py").write_text(MODULE.replace("found.here", "found.there"))
    instance.write_config(f'tasks = ["apptasks", "othertasks"]\ntask_path = ["app"]\n'
                          f'[env]\nPYTHONPATH = "{other}"\n', workers=1)
    result = instance.ctl("start")
    assert result.returncode == 0, result.stderr
    assert _submit(instance, "found.here") == {"from": str(app / "apptasks.py"),
                                               "payload": {"n": 1}}
    assert _submit(instance, "found.there")["from"] == str(other / "othertasks.py")


def test_the_readme_example_works_as_written(instance: Instance) -> None:
    module = _readme_block("python", "# mytasks.py")
    config = _readme_block("toml", "# docbrain.toml, in the same directory as mytasks.py")
    app = instance.root / "readme"
    app.mkdir()
    (app / "mytasks.py").write_text(module)
    # The test's own state_dir, and no model (the example's tasks need none).
    (app / "docbrain.toml").write_text(
        config + f'[supervisor]\nstate_dir = "{instance.state_dir}"\n[models]\n')
    # As the README says: from any directory (here /, the file named by its full path).
    ctl = [sys.executable, "-m", "supervisor", "--config", str(app / "docbrain.toml")]
    try:
        started = subprocess.run([*ctl, "start"], cwd="/", env=instance.env,
                                 capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr
        submitted = subprocess.run([*ctl, "submit", "demo.echo", '{"text": "hello"}', "--wait"],
                                   cwd="/", env=instance.env, capture_output=True, text=True,
                                   timeout=120)
        assert submitted.returncode == 0, submitted.stderr
        assert json.loads(submitted.stdout) == {"text": "hello"}
    finally:
        subprocess.run([*ctl, "stop"], cwd="/", env=instance.env, capture_output=True,
                       timeout=120)
