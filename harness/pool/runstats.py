"""Counters of one coordinator run, derived from the event log.

Written every tick to state/run.json (read by ``status``) and, in
Prometheus text format, to state/metrics.prom.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

THROUGHPUT_WINDOW: Final = 600.0  # seconds of completions behind the items/minute figure
NO_CHANGES_LISTED: Final = 20  # items done without changes named in run.json


@dataclass
class RunStats:
    """Counters of this run, derived from the event log; written to state/run.json and metrics.prom."""

    started_at: float = field(default_factory=time.time)
    attempts: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("input", "output", "cache_creation", "cache_read"), 0))
    cost_usd: float = 0.0
    claims: int = 0
    completions: int = 0
    reclaims: int = 0
    restarts: int = 0
    # Completions per whole second of the window: bounded by the window, not the rate.
    done_per_second: deque[list[int]] = field(default_factory=deque)
    slots_started: set[Any] = field(default_factory=set)
    # Done, but the agent changed nothing: a count and the latest names (a run of a
    # million no-op items must not hold a million names).
    no_changes: deque[str] = field(default_factory=lambda: deque(maxlen=NO_CHANGES_LISTED))
    no_changes_total: int = 0
    done_before: int = 0    # items in done/ and failed/ when the run started
    failed_before: int = 0

    def baseline(self, done: int, failed: int) -> None:
        """The done/ and failed/ counts at start: what this run finished is counted from them."""
        self.done_before, self.failed_before = done, failed

    def observe(self, ev: dict[str, Any]) -> None:
        kind = ev.get("event")
        if kind == "claim":
            self.claims += 1
        elif kind == "revoke":
            self.reclaims += 1
        elif kind == "worker-spawn":
            # The first spawn of a slot is a start; every later one replaces a dead worker.
            self.restarts += ev.get("worker") in self.slots_started
            self.slots_started.add(ev.get("worker"))
        elif kind == "attempt-end":
            reason = str(ev.get("reason"))
            self.attempts[reason] = self.attempts.get(reason, 0) + 1
            m = ev.get("metrics") or {}
            for k in self.tokens:
                self.tokens[k] += int(m.get(f"{k}_tokens") or 0)
            self.cost_usd += float(m.get("cost_usd") or 0.0)
            if ev.get("queue") == "done":
                self.completions += 1
                self._count_done(int(float(ev.get("ts") or time.time())))
                if ev.get("no_changes"):
                    self.no_changes.append(str(ev.get("item")))
                    self.no_changes_total += 1

    def _count_done(self, second: int) -> None:
        last = self.done_per_second[-1] if self.done_per_second else None
        if last is not None and last[0] >= second:  # events arrive about in order
            last[1] += 1
        else:
            self.done_per_second.append([second, 1])

    def snapshot(self, counts: dict[str, int], alive: int, desired: int, paused: bool,
                 running: bool = True) -> dict[str, Any]:
        """run.json's document. ``running=False`` is the final one, with ``ended_at``.

        ``this_run`` counts from the queue, against the counts at start: an item
        rejected at merge moves from done to failed, a purge makes it an estimate.
        """
        now = time.time()
        while self.done_per_second and now - self.done_per_second[0][0] > THROUGHPUT_WINDOW:
            self.done_per_second.popleft()
        window = min(THROUGHPUT_WINDOW, max(1.0, now - self.started_at))
        per_min = sum(n for _, n in self.done_per_second) * 60.0 / window
        left = counts["pending"] + counts["claimed"] + counts["waiting"]
        return {"started_at": self.started_at, "items": counts, "attempts": dict(self.attempts),
                "workers_alive": alive, "workers_desired": desired,
                "claims_total": self.claims, "completions_total": self.completions,
                "reclaims_total": self.reclaims, "restarts_total": self.restarts,
                "tokens_total": dict(self.tokens), "cost_usd_total": round(self.cost_usd, 6),
                "paused": int(paused), "throughput_per_min": round(per_min, 2),
                "eta_s": round(left / per_min * 60.0) if per_min > 0 and left else None,
                "this_run": {"done": max(0, counts["done"] - self.done_before),
                             "failed": max(0, counts["failed"] - self.failed_before)},
                "no_changes": list(self.no_changes), "no_changes_total": self.no_changes_total,
                "running": running, "ended_at": None if running else now}

    def report(self, done: int, failed: dict[str, str]) -> dict[str, Any]:
        """This run's totals for the end summary: ``failed`` is {item id: queue reason}."""
        by_reason: dict[str, int] = {}
        for reason in failed.values():
            key = reason_key(reason)
            by_reason[key] = by_reason.get(key, 0) + 1
        return {"done": done, "failed": len(failed), "failures": failed,
                "failures_by_reason": dict(sorted(by_reason.items(), key=lambda kv: -kv[1])),
                "attempts": dict(self.attempts), "tokens": sum(self.tokens.values()),
                "tokens_by_kind": dict(self.tokens), "cost_usd": round(self.cost_usd, 6),
                "elapsed_s": round(time.time() - self.started_at, 1),
                "reclaims": self.reclaims, "restarts": self.restarts,
                "no_changes": list(self.no_changes), "no_changes_total": self.no_changes_total}


def reason_key(reason: str) -> str:
    """The kind of a queue failure reason: its first word ("stalled: no output..." -> stalled).

    Worker failures start with the terminal reason, merges with ``conflict`` or
    ``target_dirty``; revokes read "revoked after attempt N: ...".
    """
    head = reason.split(":", 1)[0].strip()
    return (head.split() or ["unknown"])[0]
