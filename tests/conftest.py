"""Shared pytest fixtures.

Keep this file small: each block below belongs to one area of the tests.
"""

from __future__ import annotations

import pytest

# ---------------------------------------------------------------------------
# Queue fixtures (tests/test_queue.py, tests/test_item.py)
# ---------------------------------------------------------------------------


class FakeClock:
    """An injectable wall clock for ``Queue(clock=...)``: only moves when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(tmp_path, clock):
    """A fresh queue in ``tmp_path/queue`` driven by the fake ``clock`` fixture."""
    from harness.queue.core import Queue

    return Queue(tmp_path / "queue", clock=clock)


# -- real processes ----------------------------------------------------------------------


@pytest.fixture
def procs(tmp_path):
    """Child processes recorded by process group and killed by it at teardown."""
    from tests.procs import Procs

    p = Procs(tmp_path / "procs")
    try:
        yield p
    finally:
        p.kill_all()
