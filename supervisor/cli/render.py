"""Human-readable output of docbrainctl: the status table."""

from __future__ import annotations

import textwrap
from typing import Any


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


WIDTH = 100  # columns of the text view; `status --json` keeps everything


def clip(text: str, width: int = WIDTH) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _job(w: dict[str, Any]) -> str:
    """The job a worker runs now, and for how long: `embed 3f2a9c1e 4.2s`."""
    if not w.get("current_job"):
        return "-"
    return f"{w.get('current_task') or '?'} {w['current_job'][:8]} " \
           f"{duration(w.get('current_job_s'))}"


def status(data: dict[str, Any]) -> str:
    sup = data["supervisor"]
    workers = data["workers"]
    serving = sum(1 for w in workers if w["state"] in ("READY", "BUSY"))
    target = sup.get("workers_target", len(workers))
    head = (f"docbrain {sup['version']}  {sup['state']}  pid {sup['pid']}  "
            f"up {duration(sup['uptime_s'])}  workers {serving}/{target} serving")
    lines = [head, clip(f"state_dir {sup['state_dir']}")]
    queue = data.get("queue")
    if queue:
        shown = [f"{queue[k]:,} {k}" for k in ("pending", "running", "done", "failed", "dead")]
        if queue.get("cancelled"):
            shown.append(f"{queue['cancelled']:,} cancelled")
        waits = [f"{queue[k]:,} {what}" for k, what in (("retrying", "waiting to retry"),
                                                          ("scheduled", "scheduled"))
                 if queue.get(k)]
        if waits:
            shown[0] += f" ({', '.join(waits)})"
        lines.append("queue: " + ", ".join(shown))
    store = data.get("store") or {}
    if store.get("backend") == "nats":
        where = f"on {store['server']}" if store.get("server") else \
            f"NOT CONNECTED ({store.get('problem') or 'reconnecting'})"
        lines.append(clip(f"shared: stream {store['stream']} {where}: "
                          f"{store['stream_pending']:,} waiting, "
                          f"{store['stream_running']:,} leased (all hosts)"))
    rows = []
    for w in workers:
        note = w["reason"] if w["state"] == "FATAL" else (w["last_exit"] or "-")
        if w.get("removing"):
            note = "removing (a smaller count)"
        cpu = "-" if w["cpu_percent"] is None else f"{w['cpu_percent']:.1f}"
        rows.append([str(w["slot"]), str(w["pid"] or "-"), w["state"], duration(w["uptime_s"]),
                     str(w["restarts"]), size(w["rss_bytes"]), cpu, _job(w), note])
    body = table(["SLOT", "PID", "STATE", "UPTIME", "RESTARTS", "RSS", "CPU%", "JOB",
                  "LAST EXIT"], rows)
    lines += [clip(line) for line in body.splitlines()]
    for w in workers:  # the table may clip a reason: here it is whole
        if w["state"] == "FATAL" and w["reason"]:
            lines += textwrap.wrap(f"slot {w['slot']} is FATAL: {w['reason']}", WIDTH,
                                   subsequent_indent="  ")
    for w in [w for w in workers if set((w.get("devices") or {}).values()) - {"cpu"}]:  # where each model runs, and what its GPU holds
        placed = ", ".join(f"{name} on {d}" for name, d in sorted(w["devices"].items()))
        held = w.get("gpu_memory_bytes")
        lines.append(clip(f"slot {w['slot']}: {placed}"
                          f"{'' if w.get('gpu') is None else ' (GPU ' + str(w['gpu']) + ')'}"
                          f"{'' if held is None else ', ' + size(held) + ' held on the GPU'}"))
    standby = sup.get("standby")
    if standby:
        lines.append(f"standby: pid {standby['pid']} "
                     f"({'loaded' if standby['ready'] else 'loading'})")
    lines += [clip(line) for line in _reload(sup).splitlines() if line]
    env = " ".join(f"{k}={v!r}" for k, v in sorted(data["env"].items()))
    lines += textwrap.wrap(env, WIDTH, initial_indent="env: ", subsequent_indent="     ",
                           break_on_hyphens=False) or ["env:"]
    return "\n".join(lines)


def _reload(sup: dict[str, Any]) -> str:
    """A line while a reload runs or after one failed; nothing in the usual case."""
    reload = sup.get("reload") or {}
    lines = ""
    if reload.get("state") in ("loading", "rolling"):
        lines += f"\nreload {reload['generation']}: {reload['state']}"
    elif reload.get("state") == "failed":
        lines += f"\nlast reload ({reload['generation']}) failed: {reload['error']}"
    return lines
