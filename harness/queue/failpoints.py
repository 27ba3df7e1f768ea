"""Named crash points for fault-injection tests.

Off unless ``HARNESS_FAILPOINTS`` names one or more points, e.g.::

    HARNESS_FAILPOINTS="claim.after-rename=kill"
    HARNESS_FAILPOINTS="complete.before-rename=stop,revoke.after-rename=kill"

Actions: ``kill`` (SIGKILL self: a crash with no cleanup), ``stop`` (SIGSTOP
self: a zombie that may be continued later), ``raise`` (OSError EIO, for
error paths). A point may be limited to its Nth hit: ``claim.after-rename=kill@3``.

Every point is declared once with :func:`define`, so tests can enumerate
:data:`REGISTRY` and fail when a new point has no test case.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Callable
from typing import Final

ENV: Final = "HARNESS_FAILPOINTS"
REGISTRY: dict[str, str] = {}

_armed: dict[str, tuple[str, int]] = {}
_hits: dict[str, int] = {}


def _parse(spec: str) -> dict[str, tuple[str, int]]:
    armed = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, action = part.partition("=")
        action, _, nth = (action or "kill").partition("@")
        if action not in ("kill", "stop", "raise"):
            raise ValueError(f"{ENV}: unknown action {action!r} for failpoint {name!r}")
        armed[name] = (action, int(nth or 1))
    return armed


def _fire(name: str) -> None:
    action, nth = _armed[name]
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != nth:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    else:
        raise OSError(errno.EIO, f"failpoint {name}")


def define(name: str, where: str) -> Callable[[], None]:
    """Declare a failpoint; returns the function to call at that point.

    ``where`` says in words what has and has not happened yet, for docs and
    test output. When the point is not armed the returned callable does nothing.
    """
    if name in REGISTRY:
        raise ValueError(f"failpoint {name!r} defined twice")
    REGISTRY[name] = where
    if name in _armed:
        return lambda: _fire(name)
    return _noop


def _noop() -> None:
    return None


_armed.update(_parse(os.environ.get(ENV, "")))
