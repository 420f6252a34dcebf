"""Every check of the doctor, in the order `docbrainctl doctor` prints them."""

from __future__ import annotations

from collections.abc import Callable

from supervisor.doctor.checks import (Facts, check_celery, check_control, check_daemon,
                                      check_guards, check_import_name, check_instances,
                                      check_models, check_orphans, check_queue,
                                      check_start_method, check_state_dir, check_torch)
from supervisor.doctor.devices import check_gpus
from supervisor.doctor.verdict import Status, Verdict

Check = Callable[[Facts], Verdict]
CHECKS: tuple[tuple[str, Check], ...] = (
    ("daemon", check_daemon),
    ("instances", check_instances),
    ("orphans", check_orphans),
    ("celery", check_celery),
    ("guards", check_guards),
    ("start-method", check_start_method),
    ("torch", check_torch),
    ("models", check_models),
    ("gpus", check_gpus),
    ("state-dir", check_state_dir),
    ("import-name", check_import_name),
    ("control", check_control),
    ("queue", check_queue),
)


def run_checks(facts: Facts) -> list[tuple[str, Verdict]]:
    results = []
    for name, check in CHECKS:
        try:
            results.append((name, check(facts)))
        except Exception as exc:  # one broken check must not hide the others' answers
            results.append((name, Verdict(Status.FAIL, f"the check itself failed: "
                                          f"{type(exc).__name__}: {exc}", "report this bug")))
    return results
