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


# -- no process outlives its test ---------------------------------------------------------


LEFTOVER_GRACE = 10.0  # seconds a process of the test may take to finish dying


def _processes_of(tmp: str) -> list[tuple[int, str]]:
    """(pid, command line) of live processes that name ``tmp``: in their argv (a
    coordinator's or worker's --root) or as the workspace their marks name (an agent)."""
    import os

    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/environ", "rb") as f:
                marked = f"HARNESS_WORKSPACE={tmp}".encode() in f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                zombie = f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except OSError:
            continue
        if not zombie and (tmp in argv or marked):
            out.append((int(entry), argv))
    return out


@pytest.fixture(autouse=True)
def no_process_left(request):
    """Fail a test that leaves a process behind that names its temporary directory (after a
    grace for those already dying), and kill those by pid so the next test starts clean."""
    import os
    import signal
    import sys
    import time

    if not sys.platform.startswith("linux") or "tmp_path" not in request.fixturenames:
        yield
        return
    tmp = str(request.getfixturevalue("tmp_path"))  # set up before, torn down after this
    yield
    deadline = time.monotonic() + LEFTOVER_GRACE
    left = _processes_of(tmp)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = _processes_of(tmp)
    for pid, _ in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"processes left by the test: {left}"
