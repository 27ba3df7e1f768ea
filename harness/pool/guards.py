"""The pool's two brakes: the circuit breaker and the run budget.

Both pause the pool (the interrupt file, with the reason and the fix in it);
neither kills anything: running attempts finish.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from harness.config import RunConfig
from harness.pool.runstats import RunStats
from harness.workspace import Workspace

# Attempts that say nothing about the item or the agent being broken.
OK_REASONS: Final = frozenset({"succeeded", "fenced", "rate_limited", "cancelled", "released"})
# The API's trouble, retried or already pausing the pool with its own message: neither a
# failure in a row nor proof that things work.
NEUTRAL_REASONS: Final = frozenset({"overloaded", "auth_failed", "quota"})


class Guards:
    """Fed every attempt-end event; trips the breaker and the budget."""

    def __init__(self, ws: Workspace, run: RunConfig, event: Callable[..., None]) -> None:
        self.ws, self.run, self.event = ws, run, event
        self.consecutive_failures = 0
        self.budget_hit: str | None = None  # the pause reason, once the budget is reached

    def attempt_ended(self, ev: dict[str, Any]) -> None:
        """Count a failed attempt; pause after ``max_consecutive_failures`` in a row."""
        if ev.get("reason") in OK_REASONS:
            self.consecutive_failures = 0
            return
        if ev.get("reason") in NEUTRAL_REASONS and ev.get("queue") != "failed":
            return
        self.consecutive_failures += 1
        limit = self.run.max_consecutive_failures
        if limit and self.consecutive_failures >= limit and not self.ws.interrupt_file.exists():
            reason = (f"circuit breaker: {self.consecutive_failures} consecutive failed"
                      f" attempts (last: {ev.get('item')}: {ev.get('detail')});"
                      " fix the cause, then `parallel-harness resume`")
            self.ws.pause(reason)
            self.event("circuit-open", reason=reason)
            self.consecutive_failures = 0  # after `resume`, count afresh

    def check_budget(self, stats: RunStats) -> None:
        """At the run budget, pause new attempts; running ones finish, then the run ends."""
        tokens, cost = sum(stats.tokens.values()), stats.cost_usd
        over = ((self.run.budget_tokens and tokens >= self.run.budget_tokens)
                or (self.run.budget_usd and cost >= self.run.budget_usd))
        if over and not self.budget_hit:
            self.budget_hit = (f"run budget reached: {tokens} tokens, ${cost:.2f}"
                               f" (budget_tokens {self.run.budget_tokens}, budget_usd"
                               f" {self.run.budget_usd}); running attempts finish, no new"
                               " ones start")
            self.ws.pause(self.budget_hit)
            self.event("budget-reached", tokens=tokens, cost_usd=cost)

    def lift_budget_pause(self) -> None:
        """At the end of the run: the budget pause belonged to this run, not the next."""
        if self.budget_hit and (self.ws.interrupt_reason() or "") == self.budget_hit:
            self.ws.resume()
