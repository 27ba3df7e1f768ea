"""Which parser reads which agent output: one per ``[agent] output`` format.

``stream-json`` is Claude Code's stream (also the sim agent's), ``codex-json`` is
``codex exec --json``. :class:`AnyStream` reads either (their event types do not
overlap), for replaying a log whose format nobody recorded (``show``, ``sessions``).
"""

from __future__ import annotations

from typing import Any

from harness.agents import claude, codex
from harness.agents.claude import ClaudeStream
from harness.agents.codex import CodexStream
from harness.agents.session import StreamState

PARSERS: dict[str, type[StreamState]] = {"stream-json": ClaudeStream, "codex-json": CodexStream}


def new(output: str, **options: Any) -> StreamState:
    """A fresh parser for ``output`` (a key of PARSERS); options go to its constructor
    (``tool_timeout``; ``max_turns`` for codex). KeyError for an unknown format."""
    return PARSERS[output](**options)


class AnyStream(ClaudeStream, CodexStream):
    """Claude's and Codex's handlers in one parser, for logs of either kind."""

    HANDLERS = {**CodexStream.HANDLERS, **ClaudeStream.HANDLERS}

    def result_text(self) -> str:
        if str((self.result or {}).get("type", "")).startswith("turn."):
            return CodexStream.result_text(self)
        return ClaudeStream.result_text(self)


def event_kind(output: str, ev: dict) -> str:
    """How the event types of ``output`` are listed per CLI version (tests/data/cli-events)."""
    return (codex if output == "codex-json" else claude).event_kind(ev)


def knows(output: str, kind: str) -> bool:
    """True if the parser of ``output`` handles (or knowingly skips) this event kind."""
    return (codex if output == "codex-json" else claude).knows(kind)
