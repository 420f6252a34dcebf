"""The doctor's probe: a fresh interpreter, as a worker or a new daemon would be, imports
torch and loads each model, then prints one marked JSON line for `docbrainctl doctor`."""

from __future__ import annotations

import json
import time
from typing import Any

from supervisor.conf.settings import ModelSettings
from supervisor.doctor.checks import PROBE_MARK


def _one_line(exc: BaseException) -> str:
    return (f"{type(exc).__name__}: {exc}".strip().splitlines() or [""])[0]


def probe_main(supervisor_dir: str | None, request: str) -> None:
    """The probe's side: import torch, load each model, print one marked JSON line."""
    from supervisor.daemon.models import preload

    out: dict[str, Any] = {"supervisor_dir": supervisor_dir, "models": {}}
    started = time.perf_counter()
    try:
        import torch
        out.update(torch_version=str(torch.__version__), torch_threads=torch.get_num_threads(),
                   torch_import_s=time.perf_counter() - started)
    except Exception as exc:  # an ImportError, or an OSError from a broken library
        out["torch_error"] = _one_line(exc)
    else:
        for name, settings in json.loads(request).items():
            started = time.perf_counter()
            try:
                encoder = preload({name: ModelSettings(**settings)})[name]
                out["models"][name] = {"dim": encoder.dim, "form": encoder.form,
                                       "note": encoder.note,
                                       "load_s": time.perf_counter() - started}
            except Exception as exc:
                out["models"][name] = {"error": _one_line(exc)}
    print(PROBE_MARK + json.dumps(out), flush=True)
