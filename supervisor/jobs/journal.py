"""The job journal: SQLite in WAL mode in state_dir. A job is accepted once committed here.

Writes are grouped: the daemon's loop makes its changes and commits once per pass, before it
acknowledges any submitter or hands any result out, so throughput does not pay one commit
per job. Only final states and lost attempts are written; which worker runs a job is kept in
memory, so after a crash every job not finished is simply pending again.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from supervisor.proto import wire

PENDING, RUNNING, DONE, FAILED, DEAD = "pending", "running", "done", "failed", "dead"
CANCELLED = "cancelled"
FINAL_STATES = (DONE, FAILED, DEAD, CANCELLED)
STATES = (PENDING, RUNNING, *FINAL_STATES)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    id        TEXT NOT NULL UNIQUE,
    task      TEXT NOT NULL,
    payload   BLOB NOT NULL,
    state     TEXT NOT NULL,
    attempts  INTEGER NOT NULL DEFAULT 0,  -- runs lost to a worker's death, hang or time-out
    runs      INTEGER NOT NULL DEFAULT 0,  -- times handed to a worker
    submitted REAL NOT NULL,               -- wall-clock seconds
    finished  REAL,
    result    BLOB,
    error     TEXT,                        -- JSON: {type, message, traceback} or {reason}
    not_before REAL,                       -- wall clock: a retry (or a delayed job) waits
    priority  INTEGER NOT NULL DEFAULT 5,  -- 0-9: higher runs first
    history   TEXT                         -- JSON list: the outcomes before each retry
);
CREATE INDEX IF NOT EXISTS jobs_pending ON jobs (seq) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished) WHERE finished IS NOT NULL;
"""
# Columns added since the first schema, for a journal written by an older version.
_ADDED_COLUMNS = {"not_before": "REAL", "priority": "INTEGER NOT NULL DEFAULT 5",
                  "history": "TEXT"}


@dataclass
class StoredJob:
    id: str
    task: str
    payload: bytes
    state: str
    attempts: int
    runs: int
    submitted: float
    finished: float | None
    result: bytes | None
    error: dict[str, Any] | None  # while pending: the last failure of a job to be retried
    not_before: float | None = None
    priority: int = wire.DEFAULT_PRIORITY
    # What the job came to before each `docbrainctl retry`: state, attempts, runs,
    # finished, error.
    history: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The job as docbrainctl shows it (the result and payload as JSON values)."""
        return {
            "id": self.id, "task": self.task, "state": self.state, "priority": self.priority,
            "attempts": self.attempts,
            "runs": self.runs, "submitted": self.submitted, "finished": self.finished,
            "error": self.error,
            "retry_at": self.not_before if self.state == PENDING and self.runs else None,
            "scheduled_at": self.not_before if self.state == PENDING and not self.runs
            else None,
        }

    def info(self) -> dict[str, Any]:
        """The summary and its result, decoded; ValueError for a result that is not strict
        JSON (only an older version let a worker store NaN)."""
        info = self.summary()
        info["history"] = self.history
        if self.result is not None:
            try:
                info["result"] = wire.loads(self.result)
            except ValueError as exc:
                raise ValueError(f"job {self.id}: its stored result is not JSON: {exc}") \
                    from None
        return info


def matching(jobs: list[StoredJob], task: str | None,
             since: float | None) -> list[StoredJob]:
    """The jobs of `task`, submitted since `since` (where a store cannot ask for them)."""
    return [job for job in jobs if (task is None or job.task == task) and
            (since is None or job.submitted >= since)]


_COLUMNS = ("id, task, payload, state, attempts, runs, submitted, finished, result, error, "
            "not_before, priority, history")


def _row(row: tuple[Any, ...]) -> StoredJob:
    values = list(row)
    values[9] = json.loads(values[9]) if values[9] else None
    values[12] = json.loads(values[12]) if values[12] else []
    return StoredJob(*values)


class Journal:
    def __init__(self, path: str, synchronous: str = "normal") -> None:
        # Autocommit mode: transactions are begun and committed explicitly (group commits).
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a commit survives the daemon being killed (the WAL is in the page cache);
        # FULL also survives the machine losing power, at one fsync per commit.
        self.db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
        self.db.executescript(_SCHEMA)
        have = {row[1] for row in self.db.execute("PRAGMA table_info(jobs)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in have:
                self.db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
        self._in_tx = False

    def _begin(self) -> None:
        if not self._in_tx:
            self.db.execute("BEGIN")
            self._in_tx = True

    def commit(self) -> bool:
        """Commit what this pass wrote; True if there was anything."""
        if not self._in_tx:
            return False
        self.db.execute("COMMIT")
        self._in_tx = False
        return True

    def add(self, job_id: str, task: str, payload: bytes, now: float,
            priority: int = wire.DEFAULT_PRIORITY, not_before: float | None = None) -> bool:
        """Record a new pending job; False if a job with this id exists already."""
        self._begin()
        cur = self.db.execute(
            "INSERT OR IGNORE INTO jobs (id, task, payload, state, submitted, priority, "
            "not_before) VALUES (?, ?, ?, 'pending', ?, ?, ?)",
            (job_id, task, payload, now, priority, not_before))
        return cur.rowcount == 1

    def finish(self, job_id: str, state: str, attempts: int, runs: int, now: float,
               result: bytes | None = None, error: dict[str, Any] | None = None) -> None:
        self._begin()
        self.db.execute(
            "UPDATE jobs SET state = ?, attempts = ?, runs = ?, finished = ?, result = ?, "
            "error = ?, not_before = NULL WHERE id = ?",
            (state, attempts, runs, now, result, json.dumps(error) if error else None, job_id))

    def lost(self, job_id: str, attempts: int, runs: int) -> None:
        """A run was lost (the worker died); the job stays pending with one attempt more."""
        self._begin()
        self.db.execute("UPDATE jobs SET attempts = ?, runs = ? WHERE id = ?",
                        (attempts, runs, job_id))

    def retry(self, job_id: str, attempts: int, runs: int, not_before: float,
              error: dict[str, Any] | None) -> None:
        """The job's task raised and it will run again, not before `not_before`."""
        self._begin()
        self.db.execute("UPDATE jobs SET attempts = ?, runs = ?, not_before = ?, error = ? "
                        "WHERE id = ?",
                        (attempts, runs, not_before, json.dumps(error) if error else None,
                         job_id))

    def resubmit(self, job: StoredJob) -> None:
        """An ended job runs again (`docbrainctl retry`): pending, at the end of the queue,
        with its attempts reset, its outcome added to its history."""
        history = [*job.history, {"state": job.state, "attempts": job.attempts,
                                  "runs": job.runs, "finished": job.finished,
                                  "error": job.error}]
        self._begin()
        self.db.execute(
            "UPDATE jobs SET seq = (SELECT MAX(seq) + 1 FROM jobs), state = 'pending', "
            "attempts = 0, runs = 0, finished = NULL, result = NULL, error = NULL, "
            "not_before = NULL, history = ? WHERE id = ?", (json.dumps(history), job.id))

    def select(self, state: str, task: str | None, before: float | None) -> list[str]:
        """The ids of the jobs in `state` (of `task`, and ended -- or, pending, submitted --
        before `before`, if given), oldest first."""
        where: list[str] = ["state = ?"]
        args: list[Any] = [state]
        if task is not None:
            where.append("task = ?")
            args.append(task)
        if before is not None:
            where.append("COALESCE(finished, submitted) < ?")
            args.append(before)
        cur = self.db.execute(f"SELECT id FROM jobs WHERE {' AND '.join(where)} ORDER BY seq",
                              args)
        return [row[0] for row in cur]

    def delete(self, job_ids: list[str]) -> None:
        """Forget these jobs (`docbrainctl purge`)."""
        self._begin()
        self.db.executemany("DELETE FROM jobs WHERE id = ?", [(i,) for i in job_ids])

    def pending(self) -> Iterable[StoredJob]:
        """Every job not finished, oldest first: what a (re)started daemon must run."""
        cur = self.db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE state = 'pending' ORDER BY seq")
        return (_row(r) for r in cur)

    def get(self, job_id: str) -> StoredJob | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _row(row) if row else None

    def recent(self, state: str | None, limit: int, task: str | None = None,
               since: float | None = None) -> list[StoredJob]:
        """The newest jobs (of a state, of a task, submitted since a time, if given)."""
        where: list[str] = []
        args: list[Any] = []
        for clause, value in (("state = ?", state), ("task = ?", task),
                              ("submitted >= ?", since)):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = f"WHERE {' AND '.join(where)}" if where else ""
        cur = self.db.execute(
            f"SELECT {_COLUMNS} FROM jobs {sql} ORDER BY seq DESC LIMIT ?", (*args, limit))
        return [_row(r) for r in cur]

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATES, 0)
        for state, n in self.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state"):
            counts[state] = n
        return counts

    def purge(self, finished_before: float) -> int:
        """Forget finished jobs older than the result TTL."""
        self._begin()
        cur = self.db.execute("DELETE FROM jobs WHERE finished IS NOT NULL AND finished < ?",
                              (finished_before,))
        return cur.rowcount

    def close(self) -> None:
        if self._in_tx:
            self.commit()
        self.db.close()
