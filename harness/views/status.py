"""Status of a workspace, computed from directory names and heartbeats only.

Never opens an item file: with 100,000 items queued, listing names is
cheap and reading files is not. Imports stay light (no pydantic, no git).
"""

from __future__ import annotations

import os
import time
from typing import Any

from harness.liveness import heartbeat
from harness.queue import names
from harness.liveness.process import lock_is_held
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
            "counter": hb.get("counter"), "tokens": hb.get("tokens"),
            "cost_usd": hb.get("cost_usd"), "turns": hb.get("turns"),
        })
    coordinator = heartbeat.read(ws.coordinator_file)
    coordinator_alive = lock_is_held(ws.coordinator_lock)
    run = heartbeat.read(ws.run_file) if coordinator_alive else None
    return {
        "run": {k: run.get(k) for k in ("throughput_per_min", "eta_s", "tokens_total",
                                        "cost_usd_total", "attempts", "reclaims_total",
                                        "restarts_total")} if run else None,
        "root": str(ws.root), "counts": counts, "total": sum(counts.values()),
        "paused": ws.interrupt_reason(), "workers": workers,
        "coordinator": {"pid": coordinator.get("pid"), "host": coordinator.get("host"),
                        "started_at": coordinator.get("started_at"),
                        "alive": coordinator_alive} if coordinator else None,
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
    run = s.get("run")
    if run:
        tokens = sum((run.get("tokens_total") or {}).values())
        eta = f"{run['eta_s'] // 60}m{run['eta_s'] % 60:02d}s" if run.get("eta_s") else "-"
        lines.append(f"run      {run.get('throughput_per_min') or 0}/min  eta {eta}"
                     f"  tokens {tokens}  cost ${run.get('cost_usd_total') or 0:.2f}"
                     f"  reclaims {run.get('reclaims_total') or 0}"
                     f"  restarts {run.get('restarts_total') or 0}")
    if s["paused"]:
        lines.append("PAUSED   " + s["paused"].replace("\n", " | "))
    if s["workers"]:
        lines.append(f"{'worker':<8}{'alive':<7}{'state':<9}{'item':<28}{'try':>4}"
                     f"  {'hb age':>7}  {'tokens':>8}  {'cost':>7}  doing")
        for w in s["workers"]:
            cost = f"${w['cost_usd']:.2f}" if w.get("cost_usd") else "-"
            lines.append(f"{w['worker']:<8}{'yes' if w['alive'] else 'NO':<7}{w['state'] or '-':<9}"
                         f"{(w['item'] or '-')[:27]:<28}{w['attempt'] or '-':>4}"
                         f"  {w['heartbeat_age']:>6}s  {w.get('tokens') or '-':>8}  {cost:>7}"
                         f"  {(w['doing'] or '')[:60]}")
    for f in s["recent_failures"]:
        lines.append(f"failed   {f['item']}: {f['reason'][:100]}")
    return "\n".join(lines)


def render_event(ev: dict[str, Any]) -> str | None:
    """One line for an event an operator watching ``run`` wants to see; None for the rest
    (claims, agent starts, spawns: status shows those)."""
    kind, item, worker = ev.get("event"), ev.get("item"), ev.get("worker")
    attempt = f"{item}~{ev.get('attempt')}"
    if kind == "attempt-end":
        text = f"{worker} {attempt} {ev.get('reason')} -> {ev.get('queue')}: {ev.get('detail')}"
    elif kind == "revoke":  # its item is the claimed/ name
        name = names.try_parse(str(item))
        text = (f"revoked {f'{name.id}~{name.attempt}' if name else item} ({ev.get('why')})"
                f" -> {ev.get('outcome')}")
    elif kind == "worker-dead":
        text = f"{worker} dead: {ev.get('why')}"
    elif kind == "worker-adopted":
        text = f"{worker} adopted (pid {ev.get('pid')})"
    elif kind == "rate-limited":
        text = f"{worker} {item} rate limited: pool paused until {ev.get('resume_at')}"
    elif kind in ("circuit-open", "budget-reached"):
        text = "PAUSED " + str(ev.get("reason") or f"{kind}: {ev.get('tokens')} tokens,"
                               f" ${ev.get('cost_usd') or 0:.2f}")
    elif kind == "resumed":
        text = f"resumed: {ev.get('why')}"
    elif kind == "paused":  # by the operator; the harness's own pauses have their own events
        text = f"PAUSED by the operator: {ev.get('reason')}"
    elif kind == "scaled":
        text = f"operator: scale to {ev.get('workers')} worker(s)"
    elif kind in ("retried", "cancelled"):
        text = f"operator: {'retry' if kind == 'retried' else 'cancel'} {item}"
    elif kind == "merged":
        text = f"merged {item} ({ev.get('status')}, {str(ev.get('sha'))[:12]})"
    elif kind == "merge-conflict":
        text = f"merge conflict {item} in {', '.join(ev.get('paths') or [])}: branch kept"
    elif kind == "merge-failed":
        text = f"merge of {item} failed: {ev.get('error')}"
    elif kind == "dropped-file":
        text = f"hand-dropped file: {ev.get('action')}"
    elif kind == "memory-floor":
        text = f"memory floor: {ev.get('free_mb')} MB free, new workers " + (
            "held back" if ev.get("held") else "allowed again")
    else:
        return None
    stamp = time.strftime("%H:%M:%S", time.localtime(ev.get("ts") or time.time()))
    return f"{stamp} {text[:200]}"


def render_summary(s: dict[str, Any], look_at: bool = True) -> str:
    c = s["counts"]
    lines = [f"summary: {c['done']} done, {c['failed']} failed, {c['pending']} pending,"
             f" {c['claimed']} claimed, {c['waiting']} waiting"]
    for f in s["recent_failures"]:
        lines.append(f"  failed {f['item']}: {f['reason'][:120]}")
    if look_at:
        lines.append(f"look at: {s['root']}/queue/{{done,failed}}  {s['root']}/state/events.jsonl"
                     f"  {s['root']}/logs/")
    return "\n".join(lines)


def list_state(ws: Workspace, state: str) -> list[dict[str, Any]]:
    """The items in one state, in claim order, from names only."""
    out = []
    try:
        found = names.entries(ws.queue_dir / state)
    except FileNotFoundError:  # a workspace whose queue/ run or enqueue has not made yet
        found = []
    for entry in sorted(found):
        parsed = names.try_parse(entry)
        if parsed is None:
            out.append({"name": entry, "id": None, "foreign": True})
            continue
        due = parsed.due
        out.append({"name": entry, "id": parsed.id, "priority": parsed.priority,
                    "attempt": parsed.attempt, "free_attempts": parsed.free,
                    "due": "dependencies" if due == names.DEP else
                    (time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(due / 1000))
                     if due else None)})
    return out


def item_report(ws: Workspace, item_id: str) -> dict[str, Any] | None:
    """Everything known about one item: its state, document, attempts with results and logs."""
    import orjson

    where = None
    for state in names.STATES:
        try:
            entries = names.entries(ws.queue_dir / state)
        except FileNotFoundError:
            return None
        for entry in entries:
            parsed = names.try_parse(entry)
            if parsed is not None and parsed.id == item_id:
                where = (state, entry)
    reservation = ws.queue_dir / "ids" / item_id
    if where is None and not reservation.exists():
        return None
    try:
        document = orjson.loads(reservation.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        document = {"error": f"cannot read {reservation}: {exc}"}
    report: dict[str, Any] = {"id": item_id, "state": where[0] if where else "lost",
                              "name": where[1] if where else None, "item": document,
                              "branch": f"harness/{item_id}", "attempts": []}
    if where and where[0] == "failed":
        reason = ws.queue_dir / "failed" / (where[1] + names.REASON_SUFFIX)
        report["reason"] = reason.read_text().strip() if reason.exists() else None
    item_logs = ws.logs_dir / item_id
    attempts = sorted((int(d.name) for d in item_logs.iterdir() if d.name.isdigit())
                      if item_logs.is_dir() else [])
    for n in attempts:
        d = ws.attempt_dir(item_id, n)
        entry = {"attempt": n, "log_dir": str(d)}
        for key in ("result", "metrics"):
            try:
                entry[key] = orjson.loads((d / f"{key}.json").read_bytes())
            except (OSError, orjson.JSONDecodeError):
                entry[key] = None
        report["attempts"].append(entry)
    return report
