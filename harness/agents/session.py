"""What an agent's JSON stream says, CLI by CLI, reduced to one live state and one verdict.

Pure (no I/O; the only clock is the injectable ``clock``). The worker feeds each
stdout line to :meth:`StreamState.feed`, keeps the raw lines itself, polls the
state while the agent runs (``activity``, ``quiet_allowance``, ``stop_now``) and
asks :func:`classify` once the process has ended. The CLI-specific event handlers
live in :mod:`harness.agents.claude` (Claude Code's stream-json) and
:mod:`harness.agents.codex` (``codex exec --json``); this module holds what they
share: the metrics, the state they fill in, the mapping of API error texts and
statuses to terminal reasons, and the verdict.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar, Final
from zoneinfo import ZoneInfo

import orjson

ERRORS_CAP: Final = 20  # Metrics.errors keeps at most this many, each <= ERROR_CHARS
ERROR_CHARS: Final = 200
ACTIVITY_CHARS: Final = 80
# Reasons an API problem ends a session with (see api_problem), besides the generic ones.
API_REASONS: Final = frozenset({"auth_failed", "quota", "rate_limited", "overloaded"})
# prompt_too_long: the CLI or the API refused the prompt's size; a retry cannot help.
REASONS: Final = frozenset("succeeded failed timed_out stalled crashed budget_exceeded "
                           "prompt_too_long".split()) | API_REASONS
RATE_LIMIT_BACKOFF: Final = 60.0  # seconds, for a 429 whose retry delay nobody announced
TOOL_TIMEOUT: Final = 600.0  # default silence allowed for an open tool call (Bash's maximum)

_LIMIT_RE = re.compile(r"usage limit|rate[ _]limit|hit your (?:\w+ )?limit|"
                       r"(?:session|weekly|5-hour|opus) limit|limit reached", re.I)
_AUTH_RE = re.compile(r"\b40[13]\b.*(?:unauthori[sz]ed|forbidden|auth|api key|token)|"
                      r"failed to authenticate|invalid (?:api|x-api|bearer)[ -]?key|"
                      r"incorrect api key|not logged in|authentication[ _](?:error|failed)|"
                      r"invalid_api_key|oauth token (?:has )?(?:expired|revoked)", re.I)
_QUOTA_RE = re.compile(r"quota exceeded|insufficient[_ ]quota|credit balance is too low|"
                       r"billing details", re.I)
_OVERLOAD_RE = re.compile(r"overloaded|\b(?:50[0-4]|529)\b|at capacity|server[_ ]error|"
                          r"internal server error|service unavailable|timed out|"
                          r"idle timeout|stream disconnected|high demand|temporar(?:y|ily)", re.I)
_TOO_LONG_RE = re.compile(r"prompt is too long|input exceeds the maximum length|"
                          r"input_too_large|argument list too long", re.I)
_PIPE_EPOCH_RE = re.compile(r"\|\s*(\d{9,11})\b")
_CLOCK_RE = re.compile(r"(?:resets?(?: at)?|try again at) (1[0-2]|0?[1-9])(?::([0-5]\d))?\s*(am|pm)"
                       r"(?:\s*\(([\w/+-]+)\))?", re.I)
# Codex: "Try again at Mar 17th, 2030 5:46 PM." (local time of the machine running codex)
_DATE_RE = re.compile(r"(?:try again|resets?) (?:at|on) ([A-Z][a-z]{2,8}) (\d{1,2})(?:st|nd|rd|th)?"
                      r",? (\d{4}),? (1[0-2]|0?[1-9]):([0-5]\d)\s*([AaPp][Mm])", re.I)


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
    partial: bool = False  # counted from the stream so far: the session's own totals never came

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def add(self, other: Metrics) -> Metrics:
        """Add ``other`` into this one (model: the other's if it has one); return self."""
        for f in dataclasses.fields(self):
            mine = getattr(self, f.name)
            if isinstance(mine, (int, float)) and not isinstance(mine, bool):
                setattr(self, f.name, mine + getattr(other, f.name))
        for name, n in other.tool_calls.items():
            self.tool_calls[name] = self.tool_calls.get(name, 0) + n
        self.errors = (self.errors + other.errors)[:ERRORS_CAP]
        self.model = other.model or self.model
        self.partial = self.partial or other.partial
        return self

    def note_error(self, text: str) -> None:
        if len(self.errors) < ERRORS_CAP:
            self.errors.append(short(text, ERROR_CHARS))


@dataclass(frozen=True)
class Retry:
    """A retry the CLI announced: its count, why, and how long it waits before it."""

    attempt: int
    max_retries: int | None
    delay_s: float | None  # None: the CLI did not say
    why: str
    status: int | None = None

    def describe(self) -> str:
        of = f"/{self.max_retries}" if self.max_retries else ""
        wait = f", {self.delay_s:.0f} s" if self.delay_s is not None else ""
        return f"retrying {self.attempt}{of} ({self.why}{wait})"


class StreamState:
    """The live state of one agent session, updated by :meth:`feed`.

    A subclass per CLI fills ``HANDLERS`` (event type -> handler) and ``IGNORED``
    (types read and knowingly skipped); anything else counts as unknown. The
    handlers set what :func:`classify` and the worker read:

    - ``result`` / ``result_is_error``: the session's final event (the last one wins);
    - ``rate_limit``: ``{"status", "resets_at", "type"}`` of a rejected request;
    - ``problem``: ``(reason, message)`` of an API failure (see :func:`api_problem`);
    - ``stop_now``: ``(reason, detail)`` when the session must be ended at once;
    - ``retry``: the retry the CLI announced last, if it is still pending;
    - ``open_tools``: tool calls running now, with the silence each may keep.
    """

    HANDLERS: ClassVar[dict[str, Callable[[Any, dict], None]]] = {}
    IGNORED: ClassVar[frozenset[str]] = frozenset()
    # What to tell the operator per reason that pauses the pool (the preset's own words).
    FIXES: ClassVar[dict[str, str]] = {}

    def __init__(self, clock: Callable[[], float] = time.time, *,
                 tool_timeout: float = TOOL_TIMEOUT, **_: Any) -> None:
        self.metrics = Metrics()
        self.session_id: str | None = None
        self.result: dict | None = None
        self.result_is_error = False
        self.rate_limit: dict | None = None
        self.problem: tuple[str, str] | None = None
        self.stop_now: tuple[str, str] | None = None
        self.budget_exceeded = False
        self.retry: Retry | None = None
        self.open_tools: dict[str, float] = {}
        self.last_tool: str | None = None
        self.activity = "starting"  # what the agent is doing now, <= ACTIVITY_CHARS
        self.tool_timeout = tool_timeout
        self._clock = clock

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
        handler = self.HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            self.metrics.unknown_events += not (isinstance(kind, str) and kind in self.IGNORED)
            return event
        self.retry = None  # any later line means the announced wait is over
        try:
            handler(self, event)
        except Exception as exc:  # a known type in an unexpected shape
            self.metrics.note_error(f"malformed {event['type']} event: {exc!r}")
        self.metrics.partial = self.result is None  # no totals of the session's own yet
        return event

    def quiet_allowance(self) -> float:
        """Seconds of silence allowed beyond ``stall_after`` from the last line: the
        announced retry delay, or the longest timeout of a tool call still running."""
        waits = [(self.retry.delay_s or 0.0) if self.retry else 0.0, *self.open_tools.values()]
        return max(waits)

    def result_text(self) -> str:
        """What the final event says (its text and errors), or ""."""
        return ""

    def failure_text(self) -> str:
        """The detail of a final event that is an error."""
        return self.result_text()

    def is_final(self) -> bool:
        """The session reported its end (the worker then gives it ``result_grace``)."""
        return self.result is not None

    def set_problem(self, reason: str, message: str) -> None:
        """Record an API failure; an auth failure also stops the session now (every
        retry the CLI would make fails the same way)."""
        self.problem = (reason, short(message, ERROR_CHARS))
        if reason == "auth_failed":
            self.stop_now = self.problem
            self.activity = "authentication failed"

    def set_rate_limit(self, resets_at: float | None, kind: str | None,
                       retry_after: float | None = None) -> None:
        """Record a rejected request: a usage limit (``resets_at`` known or not) or,
        with ``retry_after``, a short rate limit to back off from."""
        if retry_after is not None and resets_at is None:
            resets_at, kind = self._clock() + retry_after, kind or "rate"
        self.rate_limit = {"status": "rejected", "resets_at": resets_at, "type": kind}
        self.activity = "rate limited"

    def limit_from_text(self, text: str, *, force: bool = False,
                        retry_after: float | None = None) -> bool:
        """Set ``rate_limit`` if an error text is a usage / rate-limit message (or ``force``).

        A reset time in the text (or from an earlier rejected rate-limit event) makes
        it a usage limit; without one it is a rate limit backed off by ``retry_after``
        (the CLI's last announced delay) or RATE_LIMIT_BACKOFF. True if set.
        """
        if not (force or _LIMIT_RE.search(text)):
            return False
        old = self.rate_limit or {}
        known = old.get("resets_at") if old.get("type") != "rate" else None
        resets = known or parse_reset(text, self._clock())
        if resets is not None:
            self.set_rate_limit(resets, old.get("type"))
        else:
            self.set_rate_limit(None, None, max(1.0, retry_after or RATE_LIMIT_BACKOFF))
        return True

    def open_tool(self, key: str, name: str, arg: str, timeout: float | None) -> None:
        """A tool call started: count it, say so, allow its silence."""
        self.metrics.tool_calls[name] = self.metrics.tool_calls.get(name, 0) + 1
        self.last_tool = name
        self.open_tools[key] = timeout if timeout is not None else self.tool_timeout
        self.activity = short(f"tool {name}: {arg}" if arg else f"tool {name}")

    def close_tool(self, key: str) -> None:
        self.open_tools.pop(key, None)


def api_problem(status: int | None, text: str) -> str | None:
    """The reason an API failure ends a session with, from its HTTP status and text.

    401/403 and login texts: ``auth_failed``; billing quota texts: ``quota``; 429:
    ``rate_limited``; 5xx, 529, overload and timeout texts: ``overloaded`` (transient).
    A prompt too long for the model or the CLI: ``prompt_too_long``. None when it is
    none of these (another 400 is the request's fault: ``failed``).
    """
    if _TOO_LONG_RE.search(text):
        return "prompt_too_long"
    if status in (401, 403) or _AUTH_RE.search(text):
        return "auth_failed"
    if _QUOTA_RE.search(text):
        return "quota"
    if status == 429:
        return "rate_limited"
    if (status is not None and (status >= 500 or status == 529)) or (
            status is None and _OVERLOAD_RE.search(text)):
        return "overloaded"
    return None


def classify(exit_code: int | None, signal: int | None, state: StreamState, *,
             timed_out: bool, stalled: bool, killed_after_result: bool,
             stderr_tail: str = "") -> tuple[str, str]:
    """Return (terminal reason, detail) for an ended stream-agent process.

    Order: a stop the parser asked for (auth), a rate limit, budget, timeout,
    stall; then a final event that is no error with exit 0 (or killed after it)
    succeeded; an API problem (quota, overloaded); a signal and no final event
    crashed; anything else failed. ``stderr_tail`` (the last lines the agent wrote
    there) ends the detail of a failure. The reason is always one of ``REASONS``.
    """
    m = state.metrics
    if state.stop_now is not None:
        return state.stop_now
    if state.rate_limit is not None:
        return "rate_limited", _limit_detail(state.rate_limit, state._clock())
    if state.budget_exceeded:
        return "budget_exceeded", short(state.result_text() or
                                        f"max budget reached (${m.cost_usd:.4f})", ERROR_CHARS)
    if timed_out:
        return "timed_out", f"killed at session_timeout (last: {state.activity})"
    if stalled:
        return "stalled", f"no output for stall_after (last: {state.activity})"
    if state.result is not None and not state.result_is_error \
            and (exit_code == 0 or killed_after_result):
        tokens = m.input_tokens + m.output_tokens
        return "succeeded", f"{m.turns} turns, {tokens} tokens, ${m.cost_usd:.4f}"
    if state.problem is not None:
        return state.problem
    refusal = [ln for ln in stderr_tail.splitlines() if _TOO_LONG_RE.search(ln)]
    if state.result is None and refusal:  # refused before a turn began
        return "prompt_too_long", short(refusal[-1], ERROR_CHARS)
    if signal and state.result is None:
        return "crashed", f"agent killed by signal {signal} before its result"
    how = f"signal {signal}" if signal else f"exit {exit_code}"
    if state.result is None:
        why = f"{how} without a result event" + (f"; {m.errors[-1]}" if m.errors else "")
    elif not state.result_is_error:
        why = f"the result was a success but the agent ended with {how}"
    else:
        why = state.failure_text() or how
    tail = " ".join(stderr_tail.split())
    if tail:
        room = max(40, ERROR_CHARS - len(why) - 10)
        why = f"{short(why, ERROR_CHARS)}; stderr: {tail[-room:]}"
    return "failed", why if tail else short(why, ERROR_CHARS)


def _limit_detail(limit: dict, now: float) -> str:
    kind, resets = limit.get("type") or "usage", limit.get("resets_at")
    if kind == "rate" and resets:
        return f"rate limit (429); backing off {max(0.0, resets - now):.0f} s"
    when = datetime.fromtimestamp(resets).astimezone().isoformat(timespec="minutes") \
        if resets else "an unknown time"
    return f"{kind} limit reached; resets at {when}"


def parse_reset(text: str, now: float) -> float | None:
    """The reset time in a limit message as epoch seconds, or None if it names none.

    Forms: ``...usage limit reached|1763800000``, ``resets 3pm (Europe/Berlin)`` or
    ``reset at 9:30am`` or Codex's ``Try again at 11:33 AM`` (the next such time after
    ``now``; the local zone if none), and ``Try again at Mar 17th, 2030 5:46 PM`` (local).
    """
    if match := _PIPE_EPOCH_RE.search(text):
        return float(match.group(1))
    if match := _DATE_RE.search(text):
        month, day, year, hour, minute, ampm = match.groups()
        try:
            when = datetime.strptime(f"{month[:3]} {day} {year} {hour}:{minute} {ampm.upper()}",
                                     "%b %d %Y %I:%M %p")
        except ValueError:
            return None
        return when.astimezone().timestamp()
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


def short(text: object, limit: int = ACTIVITY_CHARS) -> str:
    """``text`` on one line, at most ``limit`` characters, cut at a word boundary (half
    a word reads as a different word) and marked with an ellipsis."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + "…"


def as_(value: Any, kind: type, default: Any = None) -> Any:
    """``value`` if it is a non-empty ``kind``, else ``default`` (events are untrusted)."""
    return value if isinstance(value, kind) and value else default


def num(value: Any, default: float = 0.0) -> float:
    """A finite, sane number from an event field, else ``default``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) and abs(value) < 1e15 else float(default)


def text_of(content: Any) -> str:
    """The text of a message content: a string, or the text blocks of a list."""
    if isinstance(content, str):
        return content
    return " ".join(b["text"] for b in as_(content, list, [])
                    if isinstance(b, dict) and isinstance(b.get("text"), str))
