"""The one place that renders status, events and summaries for the terminal.

Pure functions from the read models (harness.views) and event records to
text; no I/O. ``run``, ``status``, ``sessions`` and the demo print what these
return.
"""

from __future__ import annotations

import textwrap
import time
from typing import Any

from harness.queue import names


def size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def render_text(s: dict[str, Any]) -> str:
    c = s["counts"]
    lines = [f"queue    pending {c['pending']}  claimed {c['claimed']}  waiting {c['waiting']}"
             f"  done {c['done']}  failed {c['failed']}"]
    coord = s["coordinator"]
    for h in s.get("hosts") or []:
        state = (f"DEAD (declared by {h['dead_by']})" if h["dead_by"] else
                 f"pid {h['pid']} on {h['machine']}, last tick {h['tick_age']}s ago"
                 if h["alive"] else "not running")
        lines.append(f"host     {h['host']}  {state}")
    if coord and coord["alive"]:
        lines.append(f"coordinator  pid {coord['pid']} on {coord['host']} since"
                     f" {coord['started_at']}")
    elif not s.get("hosts"):
        lines.append("coordinator  not running")
    run = s.get("run")
    if run:
        tokens = sum((run.get("tokens_total") or {}).values())
        eta = f"{run['eta_s'] // 60}m{run['eta_s'] % 60:02d}s" if run.get("eta_s") else "-"
        lines.append(f"run      {run.get('throughput_per_min') or 0}/min  eta {eta}"
                     f"  tokens {tokens}  cost ${run.get('cost_usd_total') or 0:.2f}"
                     f"  reclaims {run.get('reclaims_total') or 0}"
                     f"  restarts {run.get('restarts_total') or 0}")
        if run.get("integration_lag") or run.get("push_retries_total"):
            lines.append(f"deliver  {run.get('integration_lag') or 0} done item(s) not yet"
                         f" integrated  push retries {run.get('push_retries_total') or 0}")
    if s["paused"]:
        lines.append("PAUSED   " + paused_text(s))
    for c in s.get("corrupt_heartbeats") or []:
        lines.append(f"CORRUPT  {c['path']}: {c['error']}; worker {c['worker']} is"
                     f" {'alive (lock held)' if c['alive'] else 'not running'} but unseen;"
                     " `parallel-harness gc` removes it once its worker is gone")
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
        lines.append(f"failed   {f['item']}: {clip(f['reason'], 160)}")
    if s.get("no_changes"):
        lines.append(no_changes_text(s["no_changes"], s.get("no_changes_total")))
    return "\n".join(lines)


def no_changes_text(items: list[str], total: int | None = None) -> str:
    """The items that succeeded without changing anything, on one line: ``total`` of them,
    ``items`` the latest (run.json names only the last few)."""
    total = max(total or 0, len(items))
    latest = "" if total == len(items) else "latest "
    return (f"NO CHANGES  {total} done item(s) changed nothing: {latest}"
            f"{clip(', '.join(items), 120)} (`parallel-harness show ID`)")


def paused_text(s: dict[str, Any]) -> str:
    """The pause reason on one line, with an automatic resume as a local time (not an epoch)."""
    reason = " | ".join(line for line in (s["paused"] or "").splitlines()
                        if not line.startswith("resume-at: "))
    if s.get("resume_at"):
        stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(s["resume_at"]))
        reason += f" (resumes by itself at {stamp})"
    return reason


# The merge queue's events: what happened to the target branch and its checkouts.
_MERGE_EVENTS: dict[str, Any] = {
    "merged": lambda ev: f"merged {ev.get('item')} ({ev.get('status')},"
                         f" {str(ev.get('sha'))[:12]})",
    "merge-conflict": lambda ev: f"merge conflict {ev.get('item')} in"
                                 f" {', '.join(ev.get('paths') or [])}: branch kept",
    "merge-failed": lambda ev: f"merge of {ev.get('item')} refused"
                               f" ({ev.get('reason') or 'merge_failed'}): {ev.get('error')}",
    "checkout-updated": lambda ev: f"checkout {ev.get('checkout')} fast-forwarded to"
                                   f" {str(ev.get('sha'))[:12]}",
    "checkout-behind": lambda ev: f"checkout {ev.get('checkout')} left behind: {ev.get('why')}",
}

# The edges: what the harness refused, moved aside, removed or survived.
_EDGE_EVENTS: dict[str, Any] = {
    "slot-refused": lambda ev: f"{ev.get('worker')} not started: {ev.get('why')}",
    "slot-usable": lambda ev: f"{ev.get('worker')} slot usable again",
    "junk": lambda ev: f"junk: {ev.get('action')}",
    "stale-lock-removed": lambda ev: f"removed stale git lock {ev.get('lock')}",
    "merge-waiting": lambda ev: f"merge of {ev.get('item')} waits: {ev.get('lock')} is held",
    "branch-reconcile-failed": lambda ev: f"branch of {ev.get('item') or '?'} not restored:"
                                          f" {ev.get('error')}",
    "result-missing": lambda ev: f"{ev.get('item')} is done but not in git: {ev.get('why')}",
    "orphans-killed": lambda ev: f"killed {len(ev.get('pids') or [])} leftover process(es) of"
                                 f" {', '.join(ev.get('owners') or [])} ({ev.get('why')})",
    "write-fault": lambda ev: f"write fault for {ev.get('seconds')}s: " + "; ".join(
        f"{k}: {v}" for k, v in (ev.get("errors") or {}).items()),
    "clock-step": lambda ev: f"wall clock stepped {ev.get('seconds')}s: {ev.get('shifted')}"
                             " waiting due time(s) moved with it",
}

_HOST_EVENTS: dict[str, Any] = {
    "host-dead": lambda ev: f"host {ev.get('host')} declared dead" + (
        f" (its lease silent {ev['silent_s']}s)" if ev.get("silent_s") is not None
        else " (its lease stale)") + ": its claims are taken back",
    "host-fenced": lambda ev: f"this host ({ev.get('host')}) was declared dead by"
                              f" {ev.get('by')}: stopping without recording anything",
    "host-stalled": lambda ev: f"this host stood still {ev.get('seconds')}s between ticks"
                               " (frozen, or its NFS calls blocked): the other hosts' silence"
                               " is counted afresh",
    "host-lease-wait": lambda ev: "waiting up to " + duration(ev.get("up_to_s"))
                                  + " for the lease of " + ", ".join(ev.get("hosts") or [])
                                  + " to stand still (it may be a live coordinator with this"
                                  " host id or hostname on another machine)",
}


def render_event(ev: dict[str, Any]) -> str | None:
    """One line for an event an operator watching ``run`` wants to see; None for the rest
    (claims, agent starts, spawns: status shows those)."""
    kind, item, worker = ev.get("event"), ev.get("item"), ev.get("worker")
    attempt = f"{item}~{ev.get('attempt')}"
    if kind == "attempt-end":
        text = f"{worker} {attempt} {ev.get('reason')} -> {ev.get('queue')}: {ev.get('detail')}"
        text += " (NO CHANGES)" if ev.get("no_changes") else ""
    elif kind == "revoke":  # its item is the claimed/ name
        name = names.try_parse(str(item))
        text = (f"revoked {f'{name.id}~{name.attempt}' if name else item} ({ev.get('why')})"
                f" -> {ev.get('outcome')}")
    elif kind == "worker-dead":
        text = f"{worker} dead: {ev.get('why')}"
    elif kind == "worker-retired":  # stopped on purpose (scale-down, shutdown)
        text = f"{worker} stopped: {ev.get('why')}"
    elif kind == "worker-adopted":
        text = f"{worker} adopted (pid {ev.get('pid')})"
    elif kind == "rate-limited":
        until = ev.get("resume_at")
        until = time.strftime("%H:%M:%S", time.localtime(until)) if isinstance(
            until, (int, float)) else until
        text = f"{worker} {item} rate limited: pool paused until {until}"
    elif kind in ("circuit-open", "budget-reached"):
        text = "PAUSED " + str(ev.get("reason") or f"{kind}: {ev.get('tokens')} tokens,"
                               f" ${ev.get('cost_usd') or 0:.2f}")
    elif kind == "resumed":
        text = f"resumed: {ev.get('why')}"
    elif kind == "paused":  # by the operator; the harness's own pauses have their own events
        text = f"PAUSED by the operator: {ev.get('reason')}" + (
            time.strftime(" (until %H:%M:%S)", time.localtime(ev["resume_at"]))
            if ev.get("resume_at") else "")
    elif kind == "scaled":
        text = f"operator: scale to {ev.get('workers')} worker(s)"
    elif kind in ("retried", "cancelled", "marked-done"):
        verb = {"retried": "retry", "cancelled": "cancel", "marked-done": "mark-done"}[kind]
        text = f"operator: {verb} {item}"
    elif kind == "purged":
        text = f"operator: purge {len(ev.get('items') or [])} item(s) from {ev.get('state')}/"
    elif kind in _MERGE_EVENTS:
        text = _MERGE_EVENTS[kind](ev)
    elif kind in _EDGE_EVENTS:
        text = _EDGE_EVENTS[kind](ev)
    elif kind in _HOST_EVENTS:
        text = _HOST_EVENTS[kind](ev)
    elif kind == "dropped-file":
        text = f"hand-dropped file: {ev.get('action')}"
    elif kind == "memory-floor":
        text = f"memory floor: {ev.get('free_mb')} MB free, new workers " + (
            "held back" if ev.get("held") else "allowed again")
    else:
        return None
    stamp = time.strftime("%H:%M:%S", time.localtime(ev.get("ts") or time.time()))
    return f"{stamp} {clip(text, 300)}"


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters at a word boundary, with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= limit else textwrap.shorten(text, limit, placeholder=" …")


def duration(seconds: float | None) -> str:
    """1h02m, 3m05s, 12s; "-" for None."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def run_progress(snap: dict[str, Any] | None) -> str:
    """The live line ``run`` keeps at the bottom of a terminal, from state/run.json."""
    if not snap:
        return "starting…"
    items, mine = snap.get("items") or {}, snap.get("this_run") or {}
    tokens = sum((snap.get("tokens_total") or {}).values())
    eta = duration(snap.get("eta_s")) if snap.get("eta_s") else "-"
    elapsed = duration(time.time() - snap["started_at"]) if snap.get("started_at") else "-"
    paused = "  PAUSED" if snap.get("paused") else ""
    return (f"done {mine.get('done', 0)}  failed {mine.get('failed', 0)}"
            f"  running {items.get('claimed', 0)}  pending {items.get('pending', 0)}"
            f"  waiting {items.get('waiting', 0)}  |  {snap.get('throughput_per_min') or 0}/min"
            f"  eta {eta}  |  {tokens:,} tokens  ${snap.get('cost_usd_total') or 0:.2f}"
            f"  |  {snap.get('workers_alive', 0)} worker(s)  {elapsed}{paused}")


def render_run_summary(report: dict[str, Any], root: str, width: int = 100) -> str:
    """The end of ``run``: what this run finished, its cost, and every failure in full.

    A reason is wrapped, never cut: it is often the only explanation an operator gets.
    """
    by = ", ".join(f"{k} {v}" for k, v in report["failures_by_reason"].items())
    lines = [f"summary: {report['done']} done, {report['failed']} failed this run"
             f" ({by or 'no failures'}) in {duration(report['elapsed_s'])};"
             f" {sum(report['attempts'].values())} attempt(s), {report['tokens']:,} tokens,"
             f" ${report['cost_usd']:.2f}"]
    for item, reason in report["failures"].items():
        lines.append(textwrap.fill(reason, width, initial_indent=f"  failed {item}: ",
                                   subsequent_indent=" " * 4, break_long_words=False,
                                   break_on_hyphens=False))
    if report.get("no_changes"):
        lines.append("  " + no_changes_text(report["no_changes"], report.get("no_changes_total")))
    lines.append(f"look at: {root}/queue/{{done,failed}}  {root}/state/events.jsonl  {root}/logs/")
    return "\n".join(lines)


def render_summary(s: dict[str, Any], look_at: bool = True) -> str:
    c = s["counts"]
    lines = [f"summary: {c['done']} done, {c['failed']} failed, {c['pending']} pending,"
             f" {c['claimed']} claimed, {c['waiting']} waiting"]
    for f in s["recent_failures"]:
        lines.append(textwrap.fill(f["reason"], 100, initial_indent=f"  failed {f['item']}: ",
                                   subsequent_indent=" " * 4, break_long_words=False))
    if look_at:
        lines.append(f"look at: {s['root']}/queue/{{done,failed}}  {s['root']}/state/events.jsonl"
                     f"  {s['root']}/logs/")
    return "\n".join(lines)


def render_item(report: dict[str, Any]) -> str:
    """``show``: an item's state, reason, branch and each attempt (reason, tokens, cost)."""
    doc = report["item"]
    lines = [f"{report['id']}  [{report['state']}]  {doc.get('title', '')}",
             f"  queue name  {report['name']}"]
    if report.get("reason"):
        lines.append(textwrap.fill(report["reason"], 100, initial_indent="  reason      ",
                                   subsequent_indent=" " * 14, break_long_words=False))
    lines.append(f"  branch      {report['branch']}")
    for a in report["attempts"]:
        head = (f"  attempt {a['attempt']:<3} {a['reason']:<16} {a['tokens']:>8} tok"
                f"  ${a['cost_usd'] or 0:.4f}{attempt_notes(a)}")
        if a["reason"] in ("succeeded", "running", "unfinished"):
            lines.append(f"{head}  {clip(a.get('detail') or '', 70)}")
        else:  # why it failed, whole: the agent's stderr tail is often at its end
            lines.append(head)
            lines.append(textwrap.fill(a.get("detail") or "", 100, initial_indent=" " * 14,
                                       subsequent_indent=" " * 14, break_long_words=False))
        pushed = a.get("pushed")
        if isinstance(pushed, dict):
            lines.append(f"              pushed {str(pushed.get('sha'))[:12]} to"
                         f" {pushed.get('branch')} on {pushed.get('remote')}")
        if a.get("pr_url"):
            lines.append(f"              pull request {a['pr_url']}")
        lines.append(f"              {a['log_dir']}")
    return "\n".join(lines)


def attempt_notes(a: dict[str, Any]) -> str:
    """What else ``show`` says about an attempt: no changes made, a resumed session,
    token counts that stop where the agent was killed."""
    res, m = a.get("result") or {}, a.get("metrics") or {}
    notes = ["NO CHANGES"] if res.get("no_changes") else []
    if isinstance(res.get("resumed_from"), dict):
        notes.append(f"resumed the session of attempt {res['resumed_from'].get('attempt')}")
    if m.get("partial"):
        notes.append("tokens partial")
    return f"  [{'; '.join(notes)}]" if notes else ""


def render_settings(rows: list[dict[str, Any]]) -> str:
    """``config show``: key = value (TOML spelling), then where it came from."""
    import orjson

    def shown(value: Any) -> str:
        return "(by preset)" if value is None else orjson.dumps(value).decode()

    width = min(44, max(len(r["key"]) + len(shown(r["value"])) for r in rows) + 3)
    return "\n".join(f"{(r['key'] + ' = ' + shown(r['value'])):<{width}}  # {r['origin']}"
                     for r in rows)
