"""Server-sent events: encoding only.

Contract: :func:`event` returns one complete SSE frame (``event:`` line,
one ``data:`` line of compact JSON, blank line) as UTF-8 bytes.
:data:`HANG` is a sentinel a renderer yields to tell the server to stop
writing and hold the connection open.
"""

from __future__ import annotations

import json
from typing import Any, Final


class _Hang:
    def __repr__(self) -> str:
        return "HANG"


HANG: Final = _Hang()


def dumps(data: Any) -> str:
    """Compact JSON (no spaces), non-ASCII kept as is."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def event(name: str, data: dict[str, Any]) -> bytes:
    """One SSE frame with event type ``name`` and JSON payload ``data``."""
    return f"event: {name}\ndata: {dumps(data)}\n\n".encode()
