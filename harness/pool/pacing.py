"""Scans of the whole queue whose period grows with what they cost.

The coordinator's tick is 50 ms-1 s, but listing a directory of a million names
takes a third of a second: a scan run every tick would cost O(backlog) per tick
and starve the workers. A ``Paced`` scan runs at most once per ``floor`` seconds
and at most ``1/share`` of the time: after a scan that took ``c`` seconds, the
next waits ``max(floor, share * c)``. Small queues are scanned as often as
before; a million-item one about every 15-25 s, and as the queue drains the
scans get cheap and frequent again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass
class Paced:
    floor: float  # seconds between two scans, at least
    share: float = 50.0  # a scan takes at most 1/share of the time
    clock: Callable[[], float] = time.monotonic
    next_at: float = float("-inf")
    cost: float = 0.0  # seconds the last scan took

    def due(self) -> bool:
        return self.clock() >= self.next_at

    def run(self, scan: Callable[[], T]) -> T:
        """Run ``scan`` now (due or not) and schedule the next one after it."""
        start = self.clock()
        try:
            return scan()
        finally:
            end = self.clock()
            self.cost = end - start
            self.next_at = end + max(self.floor, self.share * self.cost)
