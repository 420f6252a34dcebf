"""Human-readable output of docbrainctl: the status table."""

from __future__ import annotations

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


def status(data: dict[str, Any]) -> str:
    sup = data["supervisor"]
    head = (f"docbrain {sup['version']}  {sup['state']}  pid {sup['pid']}  "
            f"up {duration(sup['uptime_s'])}  state_dir {sup['state_dir']}")
    rows = []
    for w in data["workers"]:
        note = w["reason"] if w["state"] == "FATAL" else (w["last_exit"] or "-")
        if w.get("removing"):
            note = "removing (a smaller count)"
        cpu = "-" if w["cpu_percent"] is None else f"{w['cpu_percent']:.1f}"
        rows.append([str(w["slot"]), str(w["pid"] or "-"), w["state"], duration(w["uptime_s"]),
                     str(w["restarts"]), size(w["rss_bytes"]), cpu, note])
    body = table(["SLOT", "PID", "STATE", "UPTIME", "RESTARTS", "RSS", "CPU%", "LAST EXIT"], rows)
    env = " ".join(f"{k}={v!r}" for k, v in sorted(data["env"].items()))
    standby = sup.get("standby")
    spare = (f"\nstandby: pid {standby['pid']} ({'loaded' if standby['ready'] else 'loading'})"
             if standby else "")
    return f"{head}\n{body}{spare}{_reload(sup)}\nenv: {env}"


def _reload(sup: dict[str, Any]) -> str:
    """A line while a reload runs or after one failed; nothing in the usual case."""
    reload = sup.get("reload") or {}
    lines = ""
    if reload.get("state") in ("loading", "rolling"):
        lines += f"\nreload {reload['generation']}: {reload['state']}"
    elif reload.get("state") == "failed":
        lines += f"\nlast reload ({reload['generation']}) failed: {reload['error']}"
    return lines
