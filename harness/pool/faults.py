"""Faults of the machine are survived, not obeyed: a full disk, a read-only directory, EIO.

The coordinator runs each step of its tick through :meth:`FaultWatch.step`.
A step that fails with an OSError is reported once (per step and error) and
tried again next tick; nothing else in the tick is skipped. Faults that last
``pause_after`` seconds pause the pool (the interrupt file says why, and that
the harness lifts the pause itself); the first tick with no fault lifts it
again and logs one ``write-fault`` event with what failed and for how long
(events that could not be written meanwhile are counted, not lost silently).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from typing import Any, Final

from harness.workspace import Workspace

AUTO_RESUME: Final = "auto-resume: write-fault"  # marks a pause this module made


class FaultWatch:
    """Tracks the OSErrors of one coordinator's ticks; ``report`` hears each new one."""

    def __init__(self, ws: Workspace, event: Callable[..., None], report: Callable[[str], None],
                 pause_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ws, self.event, self.report, self.clock = ws, event, report, clock
        self.pause_after = pause_after
        self.since: float | None = None  # first fault of the current spell
        self.errors: dict[str, str] = {}  # step -> last error, during the spell
        self.events_lost = 0
        self.paused = False
        self._faulty_tick = False

    def step(self, name: str, fn: Callable[[], Any]) -> None:
        """Run one tick step; an OSError is recorded, not raised."""
        try:
            fn()
        except OSError as exc:
            self._fault(name, exc)

    def lost_event(self) -> None:
        self.events_lost += 1

    def tick_done(self) -> None:
        """End of a tick: a spell of faults ends on the first tick without one."""
        if self._faulty_tick:
            self._faulty_tick = False
            if not self.paused and self.clock() - (self.since or 0.0) >= self.pause_after:
                self._pause()
        elif self.since is not None:
            self._clear()

    def _fault(self, name: str, exc: OSError) -> None:
        text = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        if self.since is None:
            self.since = self.clock()
        if self.errors.get(name) != text:
            self._say(f"{name}: {text}; retrying every tick"
                      + (" (the disk is full)" if exc.errno == errno.ENOSPC else ""))
        self.errors[name] = text
        self._faulty_tick = True

    def _say(self, text: str) -> None:
        try:
            self.report(text)
        except OSError:
            pass  # stderr is a file on the full disk as well

    def _pause(self) -> None:
        reason = (f"the harness paused itself: it cannot write its files"
                  f" ({'; '.join(f'{k}: {v}' for k, v in self.errors.items())}); running items"
                  " go on, no new ones start; it resumes by itself once writes succeed\n"
                  + AUTO_RESUME)
        try:
            self.ws.pause(reason)
        except OSError:
            return  # the disk is full: workers back off on their own failing writes
        self.paused = True
        self._say("paused the pool until writes succeed again")

    def _clear(self) -> None:
        seconds = round(self.clock() - (self.since or self.clock()), 1)
        lifted = self.paused and AUTO_RESUME in (self.ws.interrupt_reason() or "")
        if lifted:
            self.ws.resume()
        self.event("write-fault", seconds=seconds, errors=dict(self.errors),
                   events_lost=self.events_lost, resumed=lifted)
        self._say(f"writes succeed again after {seconds}s"
                  + (f"; {self.events_lost} event(s) could not be logged meanwhile"
                     if self.events_lost else ""))
        self.since, self.errors, self.events_lost, self.paused = None, {}, 0, False


class Backoff:
    """Delays between retries of a failing write: ``first`` doubling up to ``most`` seconds."""

    def __init__(self, first: float = 0.1, most: float = 5.0) -> None:
        self.first, self.most, self.delay = first, most, first

    def next(self) -> float:
        delay, self.delay = self.delay, min(self.most, self.delay * 2)
        return delay

    def reset(self) -> None:
        self.delay = self.first
