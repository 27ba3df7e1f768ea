"""Scripted behaviours: what the fake model does next, decided from the request.

Both API dialects first turn a request into a dialect-neutral
:class:`Conversation`; :func:`plan` maps it to one :class:`Action` that the
dialect then renders. The decision is a pure function of the conversation in
the request (which marker is in force, how many tool results came back since
it) plus ``attempt``: how many times this very request position was seen
before (the server counts that, so retried requests can fail K times and then
succeed). Nothing else is remembered between requests.

Markers (see :mod:`tests.fakeapi.markers`) pick the behaviour; the last marker
in the user's own text wins, so a resumed session can switch behaviour.
Failing behaviours fail only the conversation's first request position
(before any tool result) and take ``count=N|always``; once they stop failing
they continue as behaviour ``then`` (default ``text``).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from .markers import Marker

DEFAULT_TEXT = "Hello from fakeapi."


@dataclass(frozen=True)
class Conversation:
    """A request reduced to what behaviours decide on.

    ``steps`` counts tool results returned after the user message that holds
    the marker in force; ``n_messages`` counts all messages/items sent.
    ``side`` marks a CLI's own side request (title, quota check...), which
    the dialect detects; ``side_reply`` is what to answer it with (e.g. the
    JSON a title request's output schema asks for).
    """

    dialect: str
    model: str
    key: str
    marker: Marker | None
    steps: int
    n_messages: int
    tool_names: frozenset[str] = frozenset()
    last_tool_output: str | None = None
    side: bool = False
    side_reply: str = "Fake side answer"
    stream: bool = True


@dataclass(frozen=True)
class Say:
    """Answer with text and end the turn."""

    text: str


@dataclass(frozen=True)
class Shell:
    """Call the CLI's shell tool once with ``command`` (after optional ``text``)."""

    command: str
    text: str = ""
    timeout_ms: int | None = None
    background: bool = False


@dataclass(frozen=True)
class Fail:
    """Answer with HTTP ``status``; ``kind`` is one of ERROR_KINDS."""

    status: int
    kind: str
    message: str
    retry_after: float | None = None
    resets_at: int | None = None  # epoch seconds, for kind "usage_limit"


@dataclass(frozen=True)
class StreamError:
    """Start a 200 stream, send ``text`` as one delta, then an in-stream error."""

    kind: str
    message: str
    text: str = "Partial answer"


@dataclass(frozen=True)
class Hang:
    """Never finish: with ``first_delta`` after one text delta, else before any byte."""

    first_delta: bool


Action = Say | Shell | Fail | StreamError | Hang

STATUS_FOR_KIND = {
    "rate_limit": 429,
    "quota": 429,
    "usage_limit": 429,
    "overloaded": 529,
    "auth": 401,
    "invalid_request": 400,
    "server": 500,
    "not_found": 404,
}
ERROR_KINDS = tuple(STATUS_FOR_KIND)


@dataclass(frozen=True)
class Usage:
    """Deterministic token counts for one response (see :func:`usage_for`).

    ``input_tokens`` is the total prompt size including ``cached_tokens``;
    ``output_tokens`` includes ``reasoning_tokens``.
    """

    input_tokens: int
    cached_tokens: int
    cache_creation_tokens: int
    output_tokens: int
    reasoning_tokens: int


def usage_for(conv: Conversation, action: Action) -> Usage:
    """Token counts that grow with the conversation, the same on every run.

    input = 3000 + 400 * n_messages (side requests: 50 + 10 * n_messages, no
    cache); cached = 0 before the first tool result (steps == 0), else
    input - 400; cache creation = input - 100 when nothing is cached, else
    300 (so 100 input tokens are always uncached); output = 12 + len(text)//4
    (+ 40 + len(command)//4 for a tool call); reasoning = 8.
    """
    if conv.side:
        return Usage(50 + 10 * conv.n_messages, 0, 0, 5, 0)
    total = 3000 + 400 * conv.n_messages
    cached = total - 400 if conv.steps else 0
    creation = 300 if cached else total - 100
    text = getattr(action, "text", "") or ""
    output = 12 + len(text) // 4
    if isinstance(action, Shell):
        output += 40 + len(action.command) // 4
    return Usage(total, cached, creation, output, 8)


Plan = Callable[[Conversation, Marker, int], Action]


def _after(conv: Conversation, text: str) -> Say:
    out = (conv.last_tool_output or "").strip()
    if len(out) > 300:
        out = out[:300] + "..."
    return Say(f"{text}\nLast tool output: {out}" if out else text)


def _text(conv: Conversation, m: Marker, attempt: int) -> Action:
    return Say(m.get_str("text", DEFAULT_TEXT))


def _write_commit(conv: Conversation, m: Marker, attempt: int) -> Action:
    name = m.get_str("file", "fake_commit.txt")
    msg = m.get_str("msg", f"fake: add {name}")
    if conv.steps == 0:
        return Shell(
            f"printf '%s\\n' 'written by fakeapi' > {shlex.quote(name)}",
            text=f"I will write {name} and commit it.",
        )
    if conv.steps == 1:
        return Shell(
            f"git add {shlex.quote(name)} && git commit -q -m {shlex.quote(msg)}"
            " && git log --oneline -1"
        )
    return _after(conv, f"Committed {name}.")


def _bash(conv: Conversation, m: Marker, attempt: int) -> Action:
    cmd = m.get_str("cmd", "echo hello from fakeapi")
    if conv.steps == 0:
        return Shell(cmd)
    return _after(conv, f"Ran: {cmd}")


def _max_turns(conv: Conversation, m: Marker, attempt: int) -> Action:
    return Shell(f"echo fakeapi turn {conv.steps + 1}")


def _long_tool(conv: Conversation, m: Marker, attempt: int) -> Action:
    secs = m.get_int("secs", 30)
    if conv.steps == 0:
        return Shell(f"sleep {secs} && echo slept {secs}", timeout_ms=(secs + 60) * 1000)
    return _after(conv, f"Slept {secs}s.")


def _background(conv: Conversation, m: Marker, attempt: int) -> Action:
    secs = m.get_int("secs", 2)
    name = m.get_str("file", "fake_background.txt")
    if conv.steps == 0:
        return Shell(f"sleep {secs} && echo background done > {shlex.quote(name)}", background=True)
    return _after(conv, "Started a background command.")


PLANS: dict[str, Plan] = {
    "text": _text,
    "write_commit": _write_commit,
    "bash": _bash,
    "max_turns": _max_turns,
    "long_tool": _long_tool,
    "background": _background,
}


def _failing(
    make: Callable[[Marker], Action], count_key: str = "count", default_count: int = -1
) -> Plan:
    """A plan that fails the first request position ``count`` times, then runs ``then``."""

    def plan_(conv: Conversation, m: Marker, attempt: int) -> Action:
        raw = m.get_str(count_key, m.get_str("count", str(default_count)))
        count = (
            -1 if raw == "always" else (int(raw) if raw.lstrip("-").isdigit() else default_count)
        )
        if conv.steps == 0 and (count < 0 or attempt < count):
            return make(m)
        then = PLANS.get(m.get_str("then", "text"), _text)
        return then(conv, m, attempt)

    return plan_


FAILING: dict[str, Plan] = {
    "rate_429": _failing(
        lambda m: Fail(
            429, "rate_limit", "fakeapi: rate limited", retry_after=m.get_float("after", 1)
        ),
        "retries",
        2,
    ),
    "overload_529": _failing(lambda m: Fail(529, "overloaded", "Overloaded")),
    "server_500": _failing(lambda m: Fail(500, "server", "fakeapi: internal error")),
    "quota": _failing(lambda m: Fail(429, "quota", "fakeapi: quota exceeded")),
    "usage_limit": _failing(
        lambda m: Fail(
            429,
            "usage_limit",
            "fakeapi: usage limit reached",
            resets_at=m.get_int("reset", 2_000_000_000),
        )
    ),
    "auth_401": _failing(lambda m: Fail(401, "auth", "fakeapi: invalid api key")),
    "bad_400": _failing(lambda m: Fail(400, "invalid_request", "fakeapi: bad request")),
    "sse_error": _failing(lambda m: StreamError("overloaded", "Overloaded")),
    "hang_after_first_delta": _failing(lambda m: Hang(first_delta=True)),
    "no_response": _failing(lambda m: Hang(first_delta=False)),
}
PLANS.update(FAILING)

BEHAVIOURS: tuple[str, ...] = tuple(PLANS)


@dataclass(frozen=True)
class Decision:
    """The chosen behaviour name (``side``, ``default`` or ``unknown:X`` too) and action."""

    behaviour: str
    action: Action
    usage: Usage = field(compare=False, default=Usage(0, 0, 0, 0, 0))


def plan(conv: Conversation, attempt: int, default: str = "text") -> Decision:
    """Decide the next action for ``conv``; ``attempt`` counts earlier identical requests."""
    if conv.side:
        action: Action = Say(conv.side_reply)
        return Decision("side", action, usage_for(conv, action))
    marker = conv.marker or Marker(default)
    fn = PLANS.get(marker.name)
    if fn is None:
        action = Say(f"fakeapi: unknown behaviour {marker.name!r}; known: {', '.join(BEHAVIOURS)}")
        return Decision(f"unknown:{marker.name}", action, usage_for(conv, action))
    action = fn(conv, marker, attempt)
    name = marker.name if conv.marker else "default"
    return Decision(name, action, usage_for(conv, action))
