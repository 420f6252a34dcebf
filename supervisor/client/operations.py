"""What a client asks of the daemon about jobs already queued, on its control socket
(docbrainctl's requests): cancel. On the NATS backend the client makes it itself
(supervisor.jobs.natscancel)."""

from __future__ import annotations

from supervisor.client.errors import CancelRefused
from supervisor.conf.settings import Config
from supervisor.jobs import natscancel
from supervisor.proto import control
from supervisor.proto.paths import StatePaths


class Operations:
    """Mixed into Client (supervisor.client.local), which sets these."""
    config: Config
    _paths: StatePaths

    def cancel(self, job_ids: str | list[str], terminate: bool = False) -> list[str]:
        """Cancel jobs, all or none (README: Cancel); a running one only with `terminate`.
        The ids cancelled; CancelRefused naming each that cannot be (nothing changes), or
        TimeoutError: no answer. Their waiters get JobCancelled."""
        return cancel(self.config, self._paths, job_ids, terminate)


def cancel(config: Config, paths: StatePaths, job_ids: str | list[str],
           terminate: bool) -> list[str]:
    """The request of Client.cancel (and AsyncClient's, on a thread)."""
    ids = [job_ids] if isinstance(job_ids, str) else list(job_ids)
    if config.queue.backend == "nats":  # made here, not by the daemon
        try:
            return natscancel.cancel_once(config, ids, terminate)
        except natscancel.CancelError as exc:
            raise CancelRefused(str(exc)) from None
    try:
        answer = control.call(paths.endpoint("control"), "cancel",
                              {"ids": ids, "terminate": terminate},
                              config.supervisor.control_timeout)
    except control.ControlTimeout:
        raise
    except control.ControlError as exc:
        raise CancelRefused(str(exc)) from None
    return list(answer.get("cancelled", []))
