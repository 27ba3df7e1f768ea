"""The queue protocol: item names, documents, the lock-free transitions, recovery, checks.

Knows nothing of git, agents, processes or the terminal, and is usable on its
own (``from harness.queue import Queue``). The classes below load on first
use, so ``from harness.queue import names`` stays light (no pydantic) for
``status``.
"""

from __future__ import annotations

from typing import Any

_CORE = ("Queue", "Claim", "Fenced", "QueueError", "DuplicateId")

__all__ = list(_CORE)


def __getattr__(name: str) -> Any:
    if name in _CORE:
        from harness.queue import core

        return getattr(core, name)
    raise AttributeError(f"module 'harness.queue' has no attribute {name!r}")
