"""Counters of one coordinator run, derived from the event log.

Written every tick to state/run.json (read by ``status``) and, in
Prometheus text format, to state/metrics.prom.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Final

THROUGHPUT_WINDOW: Final = 600.0  # seconds of completions behind the items/minute figure


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
    done_times: list[float] = field(default_factory=list)
    slots_started: set[Any] = field(default_factory=set)

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
                self.done_times.append(float(ev.get("ts") or time.time()))

    def snapshot(self, counts: dict[str, int], alive: int, desired: int, paused: bool
                 ) -> dict[str, Any]:
        now = time.time()
        self.done_times = [t for t in self.done_times if now - t <= THROUGHPUT_WINDOW]
        window = min(THROUGHPUT_WINDOW, max(1.0, now - self.started_at))
        per_min = len(self.done_times) * 60.0 / window
        left = counts["pending"] + counts["claimed"] + counts["waiting"]
        return {"started_at": self.started_at, "items": counts, "attempts": dict(self.attempts),
                "workers_alive": alive, "workers_desired": desired,
                "claims_total": self.claims, "completions_total": self.completions,
                "reclaims_total": self.reclaims, "restarts_total": self.restarts,
                "tokens_total": dict(self.tokens), "cost_usd_total": round(self.cost_usd, 6),
                "paused": int(paused), "throughput_per_min": round(per_min, 2),
                "eta_s": round(left / per_min * 60.0) if per_min > 0 and left else None}
