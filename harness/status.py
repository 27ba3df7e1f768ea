"""Status of a workspace, computed from directory names and heartbeats only.

Never opens an item file: with 100,000 items queued, listing names is
cheap and reading files is not. Imports stay light (no pydantic, no git).
"""

from __future__ import annotations

import os
import time
from typing import Any

from harness import heartbeat, names
from harness.liveness import lock_is_held
from harness.workspace import Workspace

RECENT_FAILURES = 5


def collect(ws: Workspace) -> dict[str, Any]:
    """A JSON-able snapshot: counts, workers, pause state, coordinator, recent failures."""
    now = time.time()
    counts = {}
    failed: list[str] = []
    for state in names.STATES:
        try:
            entries = names.entries(ws.queue_dir / state)
        except FileNotFoundError:
            entries = []
        counts[state] = len(entries)
        if state == "failed":
            failed = entries
    workers = []
    for worker, hb in sorted(heartbeat.read_all(ws.heartbeats_dir).items()):
        workers.append({
            "worker": worker, "alive": lock_is_held(ws.worker_lock(worker)),
            "state": hb.get("state"), "item": hb.get("item_id"), "attempt": hb.get("attempt"),
            "doing": hb.get("doing"), "pid": hb.get("pid"), "generation": hb.get("generation"),
            "heartbeat_age": round(now - hb.get("written_at", now), 1),
            "counter": hb.get("counter"),
        })
    coordinator = heartbeat.read(ws.coordinator_file)
    return {
        "root": str(ws.root), "counts": counts, "total": sum(counts.values()),
        "paused": ws.interrupt_reason(), "workers": workers,
        "coordinator": {"pid": coordinator.get("pid"), "host": coordinator.get("host"),
                        "started_at": coordinator.get("started_at"),
                        "alive": lock_is_held(ws.coordinator_lock)} if coordinator else None,
        "recent_failures": _recent_failures(ws, failed),
    }


def _recent_failures(ws: Workspace, failed: list[str]) -> list[dict[str, str]]:
    def mtime(entry: str) -> float:
        try:
            return os.stat(ws.queue_dir / "failed" / entry).st_mtime
        except FileNotFoundError:
            return 0.0

    out = []
    for entry in sorted(failed, key=mtime, reverse=True)[:RECENT_FAILURES]:
        parsed = names.try_parse(entry)
        try:
            reason = (ws.queue_dir / "failed" / (entry + names.REASON_SUFFIX)).read_text().strip()
        except FileNotFoundError:
            reason = "(no reason recorded)"
        out.append({"item": parsed.id if parsed else entry, "reason": reason})
    return out


def render_text(s: dict[str, Any]) -> str:
    c = s["counts"]
    lines = [f"queue    pending {c['pending']}  claimed {c['claimed']}  waiting {c['waiting']}"
             f"  done {c['done']}  failed {c['failed']}"]
    coord = s["coordinator"]
    if coord and coord["alive"]:
        lines.append(f"coordinator  pid {coord['pid']} on {coord['host']} since {coord['started_at']}")
    else:
        lines.append("coordinator  not running")
    if s["paused"]:
        lines.append(f"PAUSED   {s['paused']}")
    if s["workers"]:
        lines.append(f"{'worker':<8}{'alive':<7}{'state':<9}{'item':<28}{'try':>4}  {'hb age':>7}  doing")
        for w in s["workers"]:
            lines.append(f"{w['worker']:<8}{'yes' if w['alive'] else 'NO':<7}{w['state'] or '-':<9}"
                         f"{(w['item'] or '-')[:27]:<28}{w['attempt'] or '-':>4}"
                         f"  {w['heartbeat_age']:>6}s  {w['doing'] or ''}")
    for f in s["recent_failures"]:
        lines.append(f"failed   {f['item']}: {f['reason'][:100]}")
    return "\n".join(lines)


def render_summary(s: dict[str, Any]) -> str:
    c = s["counts"]
    lines = [f"summary: {c['done']} done, {c['failed']} failed, {c['pending']} pending,"
             f" {c['claimed']} claimed, {c['waiting']} waiting"]
    for f in s["recent_failures"]:
        lines.append(f"  failed {f['item']}: {f['reason'][:120]}")
    lines.append(f"look at: {s['root']}/queue/{{done,failed}}  {s['root']}/state/events.jsonl"
                 f"  {s['root']}/logs/")
    return "\n".join(lines)
