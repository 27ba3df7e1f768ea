"""Parse an agent's stream-json stdout, line by line, into metrics and a terminal reason.

Pure (no I/O; the only clock is the injectable ``clock``): the worker feeds each
stdout line to :meth:`StreamState.feed`, keeps the raw lines itself, and asks
:func:`classify` once the process has ended. The Claude Code event shapes it
reads are listed in tests/data/README.md with the sources that confirm them.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

import orjson

ERRORS_CAP: Final = 20  # Metrics.errors keeps at most this many, each <= ERROR_CHARS
ERROR_CHARS: Final = 200
ACTIVITY_CHARS: Final = 80
REASONS: Final = frozenset("succeeded failed timed_out stalled crashed rate_limited "
                           "budget_exceeded".split())
_IGNORED: Final = frozenset({"stream_event", "control_request", "control_response"})
_LIMIT_RE = re.compile(r"usage limit|rate[ _]limit|hit your (?:\w+ )?limit|"
                       r"(?:session|weekly|5-hour|opus) limit|limit reached", re.I)
_BUDGET_RE = re.compile(r"max(?:imum)?[ _-]budget|budget (?:exceeded|exhausted)", re.I)
_PIPE_EPOCH_RE = re.compile(r"\|\s*(\d{9,11})\b")
_CLOCK_RE = re.compile(r"resets?(?: at)? (1[0-2]|0?[1-9])(?::([0-5]\d))?\s*(am|pm)"
                       r"(?:\s*\(([\w/+-]+)\))?", re.I)
_ARG_KEYS: Final = ("command", "file_path", "path", "pattern", "description", "url", "query")
_USAGE_KEYS: Final = ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                      "cache_read_input_tokens")


@dataclass
class Metrics:
    """Derived counters of one session; :meth:`add` sums them per item and per run."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: float = 0.0
    turns: int = 0
    tool_calls: dict[str, int] = field(default_factory=dict)
    tool_errors: int = 0
    errors: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    model: str | None = None  # the last model seen
    events: int = 0  # JSON lines parsed, objects or not
    unknown_events: int = 0  # JSON that is not an object, or an object of an unknown type
    non_json_lines: int = 0
    truncated_bytes: int = 0  # stream and stderr bytes beyond [run] log_cap_mb, not stored

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def add(self, other: Metrics) -> Metrics:
        """Add ``other`` into this one (model: the other's if it has one); return self."""
        for f in dataclasses.fields(self):
            mine = getattr(self, f.name)
            if isinstance(mine, (int, float)):
                setattr(self, f.name, mine + getattr(other, f.name))
        for name, n in other.tool_calls.items():
            self.tool_calls[name] = self.tool_calls.get(name, 0) + n
        self.errors = (self.errors + other.errors)[:ERRORS_CAP]
        self.model = other.model or self.model
        return self

    def note_error(self, text: str) -> None:
        if len(self.errors) < ERRORS_CAP:
            self.errors.append(_short(text, ERROR_CHARS))


class StreamState:
    """The live state of one agent session, updated by :meth:`feed`.

    Until the ``result`` event, tokens are summed over assistant messages
    (deduplicated by ``message.id``, the last line wins) so a killed session
    still has counts; the result's usage, cost and num_turns then replace them.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.metrics = Metrics()
        self.session_id: str | None = None
        self.result: dict | None = None
        self.result_is_error = False
        self.rate_limit: dict | None = None  # {"status", "resets_at": epoch | None, "type"}
        self.budget_exceeded = False
        self.last_tool: str | None = None
        self.activity = "starting"  # what the agent is doing now, <= ACTIVITY_CHARS
        self._clock = clock
        self._msg_usage: dict[str, tuple[int, ...]] = {}

    @property
    def turns(self) -> int:
        return self.metrics.turns

    def feed(self, line: bytes | str) -> dict | None:
        """Parse one stdout line; return its event object, or None. Never raises.

        Blank lines are ignored; other non-JSON lines count in ``non_json_lines``;
        JSON that is not an object (returns None) or an object of an unknown
        ``type`` (returned) counts in ``unknown_events``.
        """
        try:
            text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
            if not text.strip():
                return None
            event = orjson.loads(text)
        except Exception:
            self.metrics.non_json_lines += 1
            return None
        self.metrics.events += 1
        if not isinstance(event, dict):
            self.metrics.unknown_events += 1
            return None
        kind = event.get("type")
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            self.metrics.unknown_events += not (isinstance(kind, str) and kind in _IGNORED)
            return event
        try:
            handler(self, event)
        except Exception as exc:  # a known type in an unexpected shape
            self.metrics.note_error(f"malformed {event['type']} event: {exc!r}")
        return event

    def _system(self, ev: dict) -> None:
        if ev.get("subtype") == "init":
            self.session_id = _as(ev.get("session_id"), str) or self.session_id
            self.metrics.model = _as(ev.get("model"), str) or self.metrics.model
            self.activity = "started"

    def _assistant(self, ev: dict) -> None:
        msg = _as(ev.get("message"), dict, {})
        model = _as(msg.get("model"), str)
        if model and not model.startswith("<"):  # "<synthetic>": a message made by the CLI
            self.metrics.model = model
        usage = msg.get("usage")
        if isinstance(usage, dict) and self.result is None:
            key = _as(msg.get("id"), str) or f"anonymous-{len(self._msg_usage)}"
            self._msg_usage[key] = _usage(usage)
            self._set_tokens(self._msg_usage.values())
            self.metrics.turns = len(self._msg_usage)
        for block in _as(msg.get("content"), list, []):
            self._block(_as(block, dict, {}))
        if ev.get("error") == "rate_limit":  # the CLI's own message after a rejected request
            self._limit_from_text(_text(msg.get("content")), force=True)

    def _set_tokens(self, usages: Iterable[tuple[int, ...]]) -> None:
        m = self.metrics
        m.input_tokens, m.output_tokens, m.cache_creation_tokens, m.cache_read_tokens = (
            sum(column) for column in zip(*usages))

    def _block(self, block: dict) -> None:
        if block.get("type") == "tool_use":
            name = _as(block.get("name"), str) or "?"
            self.metrics.tool_calls[name] = self.metrics.tool_calls.get(name, 0) + 1
            self.last_tool = name
            tool_input = _as(block.get("input"), dict, {})
            arg = next((a for k in _ARG_KEYS if (a := _as(tool_input.get(k), str))), "")
            self.activity = _short(f"tool {name}: {arg}" if arg else f"tool {name}")
        elif block.get("type") in ("thinking", "redacted_thinking", "text"):
            self.activity = "writing" if block["type"] == "text" else "thinking"

    def _user(self, ev: dict) -> None:
        for block in _as(_as(ev.get("message"), dict, {}).get("content"), list, []):
            if isinstance(block, dict) and block.get("type") == "tool_result" \
                    and block.get("is_error") is True:
                self.metrics.tool_errors += 1
                self.metrics.note_error(f"{self.last_tool or 'tool'} error: "
                                        f"{_text(block.get('content'))}")
        self.activity = f"tool {self.last_tool} done" if self.last_tool else "reading input"

    def _rate_limit_event(self, ev: dict) -> None:
        info = _as(ev.get("rate_limit_info"), dict, {})
        if info.get("status") == "rejected" and not info.get("isUsingOverage"):
            resets = _num(info.get("resetsAt"))  # epoch seconds; nonsense becomes None
            self.rate_limit = {"status": "rejected", "resets_at": resets if 0 < resets < 1e11
                               else None, "type": _as(info.get("rateLimitType"), str)}
            self.activity = "rate limited"
        elif info.get("status") in ("allowed", "allowed_warning"):
            self.rate_limit = None  # the latest status is the one that holds

    def _result(self, ev: dict) -> None:
        m, sub = self.metrics, _as(ev.get("subtype"), str) or ""
        self.result = ev
        self.result_is_error = ev.get("is_error") is True or sub.startswith("error")
        self.session_id = _as(ev.get("session_id"), str) or self.session_id
        if isinstance(ev.get("usage"), dict):
            self._set_tokens([_usage(ev["usage"])])
        m.cost_usd = _num(ev.get("total_cost_usd"), m.cost_usd)
        m.turns = int(_num(ev.get("num_turns"), m.turns))
        m.duration_s = _num(ev.get("duration_ms"), m.duration_s * 1000) / 1000
        if not self.result_is_error:
            self.activity = "finished"
            return
        text = _result_text(ev)
        m.note_error(f"{sub or 'error'}: {text}" if text else sub or "error")
        self.activity = _short(f"failed: {text or sub}")
        if sub == "error_max_budget_usd" or ev.get("terminal_reason") == "budget_exhausted" \
                or _BUDGET_RE.search(text):
            self.budget_exceeded = True
        elif sub != "error_max_turns":
            self._limit_from_text(text, force=ev.get("api_error_status") == 429)

    def _limit_from_text(self, text: str, *, force: bool = False) -> None:
        """Set ``rate_limit`` if an error text is a usage / rate-limit message (or ``force``)."""
        if force or _LIMIT_RE.search(text):
            old = self.rate_limit or {}
            resets = old.get("resets_at") or parse_reset(text, self._clock())
            self.rate_limit = {"status": "rejected", "resets_at": resets, "type": old.get("type")}
            self.activity = "rate limited"


_HANDLERS: Final[dict[str, Callable[[StreamState, dict], None]]] = {
    "system": StreamState._system, "assistant": StreamState._assistant,
    "user": StreamState._user, "rate_limit_event": StreamState._rate_limit_event,
    "result": StreamState._result,
}


def classify(exit_code: int | None, signal: int | None, state: StreamState, *,
             timed_out: bool, stalled: bool, killed_after_result: bool) -> tuple[str, str]:
    """Return (terminal reason, detail) for an ended stream-agent process.

    Order: rate limit, budget, timeout, stall; then a non-error result with exit
    0 (or killed after its result) succeeded; a signal and no result crashed;
    anything else failed. The reason is always one of ``REASONS``.
    """
    m = state.metrics
    if state.rate_limit is not None:
        kind, resets = state.rate_limit.get("type") or "usage", state.rate_limit.get("resets_at")
        when = datetime.fromtimestamp(resets).astimezone().isoformat(timespec="minutes") \
            if resets else "an unknown time"
        return "rate_limited", f"{kind} limit reached; resets at {when}"
    if state.budget_exceeded:
        return "budget_exceeded", _short(_result_text(state.result or {}) or
                                         f"max budget reached (${m.cost_usd:.4f})", ERROR_CHARS)
    if timed_out:
        return "timed_out", f"killed at session_timeout (last: {state.activity})"
    if stalled:
        return "stalled", f"no output for stall_after (last: {state.activity})"
    if state.result is not None and not state.result_is_error \
            and (exit_code == 0 or killed_after_result):
        tokens = m.input_tokens + m.output_tokens
        return "succeeded", f"{m.turns} turns, {tokens} tokens, ${m.cost_usd:.4f}"
    if signal and state.result is None:
        return "crashed", f"agent killed by signal {signal} before its result"
    how = f"signal {signal}" if signal else f"exit {exit_code}"
    if state.result is None:
        why = f"{how} without a result event" + (f"; {m.errors[-1]}" if m.errors else "")
    elif not state.result_is_error:
        why = f"the result was a success but the agent ended with {how}"
    else:
        # Claude Code reports some errors (a bad API key) as subtype "success" with
        # is_error: the subtype would contradict the reason, so only a real one is kept.
        sub = state.result.get("subtype")
        text = _result_text(state.result) or how
        why = f"{sub}: {text}" if sub and sub != "success" else text
    return "failed", _short(why, ERROR_CHARS)


def parse_reset(text: str, now: float) -> float | None:
    """The reset time in a limit message as epoch seconds, or None if it names none.

    Forms: ``...usage limit reached|1763800000`` and ``resets 3pm (Europe/Berlin)`` or
    ``reset at 9:30am`` (the next such time after ``now``; the local zone if none).
    """
    if match := _PIPE_EPOCH_RE.search(text):
        return float(match.group(1))
    if not (match := _CLOCK_RE.search(text)):
        return None
    hour, minute, ampm, zone = match.groups()
    try:
        tz = ZoneInfo(zone) if zone else None
    except (ValueError, KeyError, OSError):
        tz = None
    start = datetime.fromtimestamp(now, tz) if tz else datetime.fromtimestamp(now).astimezone()
    hour = int(hour) % 12 + (12 if ampm.lower() == "pm" else 0)
    when = start.replace(hour=hour, minute=int(minute or 0), second=0, microsecond=0)
    return (when if when > start else when + timedelta(days=1)).timestamp()


def _short(text: str, limit: int = ACTIVITY_CHARS) -> str:
    text = " ".join(str(text).split())
    # Cut at a word boundary: half a word reads as a different word.
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


def _as(value: Any, kind: type, default: Any = None) -> Any:
    """``value`` if it is a non-empty ``kind``, else ``default`` (events are untrusted)."""
    return value if isinstance(value, kind) and value else default


def _num(value: Any, default: float = 0.0) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) and abs(value) < 1e15 else float(default)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(b["text"] for b in _as(content, list, [])
                    if isinstance(b, dict) and isinstance(b.get("text"), str))


def _usage(usage: dict) -> tuple[int, ...]:
    return tuple(int(_num(usage.get(k))) for k in _USAGE_KEYS)


def _result_text(ev: dict) -> str:
    errors = [e for e in _as(ev.get("errors"), list, []) if isinstance(e, str)]
    # The result text often repeats the last error: each distinct text once.
    return " ".join(dict.fromkeys(t for t in [_as(ev.get("result"), str, ""), *errors] if t))
