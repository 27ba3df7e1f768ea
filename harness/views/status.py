"""Status of a workspace, computed from directory names and heartbeats only.

Never opens an item file: with 100,000 items queued, listing names is
cheap and reading files is not. Imports stay light (no pydantic, no git).
"""

from __future__ import annotations

import os
import time
from typing import Any

from harness.liveness import heartbeat, hosts
from harness.queue import fsops, names
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
            listing = os.listdir(ws.queue_dir / state)
        except FileNotFoundError:
            listing = []
        if state == "failed":
            failed = [n for n in listing if names.is_entry(n)]
            counts[state] = len(failed)
        else:
            counts[state] = names.count_entries(listing)  # no test per name: 1M of them
    workers = []
    heartbeats, corrupt = heartbeat.scan(ws.heartbeats_dir)
    for worker, hb in sorted(heartbeats.items()):
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
    last_run = heartbeat.read(ws.run_file)
    run = last_run if coordinator_alive else None
    host_list = _hosts(ws, now)
    if run is None and host_list:
        run = _sum_runs(ws, [h["host"] for h in host_list if h["alive"]])
    return {
        "run": {k: run.get(k) for k in ("throughput_per_min", "eta_s", "tokens_total",
                                        "cost_usd_total", "attempts", "reclaims_total",
                                        "restarts_total", "integration_lag",
                                        "push_retries_total")} if run else None,
        "root": str(ws.root), "counts": counts, "total": sum(counts.values()),
        "paused": ws.interrupt_reason(), "resume_at": ws.resume_at(), "workers": workers,
        "coordinator": {"pid": coordinator.get("pid"), "host": coordinator.get("host"),
                        "started_at": coordinator.get("started_at"),
                        "alive": coordinator_alive} if coordinator else None,
        "hosts": host_list,
        "recent_failures": failures(ws, failed, last=RECENT_FAILURES)[::-1],
        # the last run's items that succeeded without changing anything (also after it ended)
        "no_changes": (last_run or {}).get("no_changes") or [],
        "no_changes_total": (last_run or {}).get("no_changes_total"),
        "corrupt_heartbeats": [
            {"worker": w, "path": str(ws.heartbeat_file(w).relative_to(ws.root)), "error": e,
             "alive": lock_is_held(ws.worker_lock(w))} for w, e in sorted(corrupt.items())],
    }


def _hosts(ws: Workspace, now: float) -> list[dict[str, Any]]:
    """Each host of a multi-host workspace: its coordinator, its last tick, dead or alive."""
    out = []
    for host, lease in sorted(hosts.leases(ws).items()):
        r = lease.record
        tomb = hosts.buried(ws, host, lease.generation)
        out.append({"host": host, "pid": r.get("pid"), "machine": r.get("host"),
                    "started_at": r.get("started_at"), "generation": lease.generation,
                    "alive": tomb is None and lock_is_held(ws.hosts_dir / f"{host}.lock"),
                    "dead_by": tomb.get("by") if tomb else None,
                    "tick_age": round(now - r.get("written_at", now), 1)})
    return out


def _sum_runs(ws: Workspace, live: list[str]) -> dict[str, Any] | None:
    """The run counters of every live host, added up (throughput and tokens are per host)."""
    total: dict[str, Any] = {}
    for host in live:
        run = heartbeat.read(ws.hosts_dir / f"{host}.run.json") or {}
        for key, value in run.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
            elif isinstance(value, dict) and key == "tokens_total":
                sub_total = total.setdefault(key, {})
                for k, v in value.items():
                    sub_total[k] = sub_total.get(k, 0) + (v or 0)
    if total:
        total["eta_s"] = None  # the hosts' ETAs do not add up
    return total or None


def failures(ws: Workspace, failed: list[str] | None = None, last: int | None = None
             ) -> list[dict[str, str]]:
    """Items in failed/ with their reasons, in the order they entered failed/, oldest first.

    That order is the entry's ctime (set by the rename or link into failed/, as
    Queue.terminal_ages has it; the mtime is the enqueue's write, the file is never
    modified). ``last``: only the most recent ones (reasons are read only for those).
    ``failed``: the entries of failed/ if the caller has listed it. An entry gone
    meanwhile sorts first; a missing reason reads "(no reason recorded)". Raises
    OSError (not ENOENT) from the listing or a read.
    """
    failed_dir = ws.queue_dir / "failed"
    if failed is None:
        try:
            failed = names.entries(failed_dir)
        except FileNotFoundError:
            failed = []
    chosen = _by_ctime(str(failed_dir), failed) if failed else []
    out = []
    for entry in chosen[-last:] if last else chosen:
        parsed = names.try_parse(entry)
        try:
            reason = (failed_dir / (entry + names.REASON_SUFFIX)).read_text().strip()
        except FileNotFoundError:
            reason = "(no reason recorded)"
        out.append({"item": parsed.id if parsed else entry, "reason": reason})
    return out


def _by_ctime(directory: str, entries: list[str]) -> list[str]:
    """``entries`` of ``directory`` sorted by ctime: an ``lstat`` of a plain string per
    entry (a ``Path`` built per entry was 2/3 of the cost); one gone sorts first."""
    prefix = directory + os.sep

    def ctime(entry: str) -> float:
        try:
            return os.lstat(prefix + entry).st_ctime
        except FileNotFoundError:
            return 0.0
    return sorted(entries, key=ctime)


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
        document = orjson.loads(fsops.read_regular(reservation))
    except (OSError, orjson.JSONDecodeError, fsops.NotAFile) as exc:
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
