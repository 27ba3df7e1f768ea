"""Replay an attempt's agent output into timeline records, tool calls and errors.

:class:`Transcript` feeds each line of events.jsonl to
:class:`harness.agents.streams.AnyStream` (the handlers the worker uses for Claude's and
Codex's streams, so derived metrics agree with metrics.json), describes each event in
one line, and on the way collects the tool calls and everything that went wrong. A shell agent's
stdout.log is replayed as text. Pure: no I/O, no click.
"""

from __future__ import annotations

import time
from datetime import datetime

import orjson

from harness.agents.session import short as _short, text_of as _text
from harness.agents.streams import AnyStream

PREVIEW_CHARS = 100
ARG_KEYS = ("command", "file_path", "path", "pattern", "description", "url", "query", "prompt")


def preview(value: object, limit: int = PREVIEW_CHARS) -> str:
    """``value`` on one line, at most ``limit`` characters (an ellipsis marks a cut)."""
    return _short(value, limit)


def when(t: float | None) -> str:
    """Local wall-clock time of an epoch, or "-"."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def dur(seconds: float | None) -> str:
    """A duration as 12.3s, 4m05s or 2h07m, or "-"."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"



def tool_arg(tool_input: object, limit: int | None = PREVIEW_CHARS) -> str:
    """The telling argument of a tool call (command, path, ...), else its input as JSON."""
    if not isinstance(tool_input, dict):
        return ""
    for key in ARG_KEYS:
        if isinstance(tool_input.get(key), str) and tool_input[key]:
            text = tool_input[key]
            break
    else:
        text = orjson.dumps(tool_input, default=str).decode() if tool_input else ""
    return preview(text, limit) if limit else text


def timestamp(ev: dict) -> float | None:
    """An event's own wall-clock time (``timestamp`` ISO string or epoch, or ``ts``), if any."""
    for key in ("timestamp", "ts"):
        value = ev.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return value / 1000 if value > 1e12 else float(value)
        if isinstance(value, str) and value:
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


class Transcript:
    """Turns stream lines into records and tallies, feeding a StreamState on the way.

    A record is ``{"line", "t", "type", "text", "error"}`` (``t``: seconds since
    the first timestamped event, or None). ``text_mode`` is for shell agents'
    stdout.log: every line is a ``stdout`` record. ``calls`` holds each tool
    call once (a repeated line with the same tool_use id is the same call) with
    its result; ``errors`` holds ``{"line", "kind", "text"}`` per problem.
    """

    def __init__(self, text_mode: bool = False) -> None:
        self.text_mode = text_mode
        self.state = AnyStream()
        self.lineno = 0
        self.records: list[dict] = []
        self.events: list[object] = []  # every JSON value, in order
        self.bad_lines: list[dict] = []  # {"line", "text"}: not JSON
        self.calls: list[dict] = []
        self.errors: list[dict] = []
        self._calls_by_id: dict[str, dict] = {}
        self._base: float | None = None

    def feed(self, raw: bytes | str) -> dict | None:
        """Read one line; return its record (None for a blank line)."""
        self.lineno += 1
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
        text = text.rstrip("\r\n")
        if not text.strip():
            return None
        if self.text_mode:
            return self._record("stdout", preview(text, 200))
        bad_before = self.state.metrics.non_json_lines
        ev = self.state.feed(text)
        if self.state.metrics.non_json_lines > bad_before:
            self.bad_lines.append({"line": self.lineno, "text": text})
            self._error("non_json", preview(text, 200))
            return self._record("non-json", preview(text), error=True)
        if ev is None:  # JSON, but not an object
            self.events.append(orjson.loads(text))
            self._error("not_an_object", preview(text, 200))
            return self._record("json", preview(text), error=True)
        self.events.append(ev)
        t = timestamp(ev)
        if t is not None and self._base is None:
            self._base = t
        kind, desc, error = self._describe(ev)
        return self._record(kind, desc, error=error,
                            t=None if t is None else round(t - self._base, 3))

    def _record(self, kind: str, text: str, *, error: bool = False, t: float | None = None):
        record = {"line": self.lineno, "t": t, "type": kind, "text": text, "error": error}
        self.records.append(record)
        return record

    def _error(self, kind: str, text: str) -> None:
        self.errors.append({"line": self.lineno, "kind": kind, "text": text})

    def _describe(self, ev: dict) -> tuple[str, str, bool]:
        """(type label, one-line description, is it an error) of an event object."""
        kind = ev.get("type") if isinstance(ev.get("type"), str) else "?"
        sub = ev.get("subtype") if isinstance(ev.get("subtype"), str) else None
        describe = _DESCRIBERS.get(kind)
        if describe is None:
            text, error = preview({k: v for k, v in ev.items() if k != "type"}), False
        else:
            text, error = describe(self, ev, sub)
        return (f"{kind}/{sub}" if sub else kind), text, error

    def _system(self, ev: dict, sub: str | None) -> tuple[str, bool]:
        if sub == "init":
            tools = ev.get("tools") if isinstance(ev.get("tools"), list) else []
            return preview(f"session {ev.get('session_id')} model {ev.get('model')} "
                           f"{len(tools)} tools cwd {ev.get('cwd')}"), False
        rest = {k: v for k, v in ev.items() if k not in ("type", "subtype", "session_id", "uuid")}
        if sub == "api_retry":
            self._error("api_retry", preview(rest, 200))
        return preview(rest), sub == "api_retry"

    def _rate_limit(self, ev: dict, sub: str | None) -> tuple[str, bool]:
        info = ev.get("rate_limit_info") if isinstance(ev.get("rate_limit_info"), dict) else {}
        status = info.get("status")
        resets = info.get("resetsAt")
        text = f"{status} {info.get('rateLimitType') or ''}".strip()
        if isinstance(resets, (int, float)) and 0 < resets < 1e11:
            text += f", resets {when(resets)}"
        if status == "rejected":
            self._error("rate_limit", text)
        return text, status == "rejected"

    def _result(self, ev: dict, sub: str | None) -> tuple[str, bool]:
        error = ev.get("is_error") is True or (sub or "").startswith("error")
        cost, ms = ev.get("total_cost_usd"), ev.get("duration_ms")
        parts = [f"{ev.get('num_turns')} turns" if "num_turns" in ev else "",
                 f"${cost:.4f}" if isinstance(cost, (int, float)) else "",
                 dur(ms / 1000) if isinstance(ms, (int, float)) else ""]
        errors = [e for e in ev.get("errors") or [] if isinstance(e, str)] \
            if isinstance(ev.get("errors"), list) else []
        said = " ".join([ev["result"] if isinstance(ev.get("result"), str) else "", *errors])
        head = ", ".join(p for p in parts if p)
        if error:
            self._error("result_error", preview(f"{sub or 'error'}: {said.strip()}", 200))
        return preview(f"{'ERROR ' if error else ''}{head}: {said}".strip(" :")), error

    def _assistant(self, ev: dict, sub: str | None) -> tuple[str, bool]:
        msg = _message(ev)
        parts = []
        for block in msg.get("content") if isinstance(msg.get("content"), list) else []:
            if not isinstance(block, dict):
                continue
            btype = block.get("type")
            if btype == "text":
                parts.append(f"text: {preview(block.get('text', ''), 60)}")
            elif btype in ("thinking", "redacted_thinking"):
                parts.append("thinking")
            elif btype == "tool_use":
                parts.append(self._call(block))
            else:
                parts.append(str(btype))
        error = isinstance(ev.get("error"), str)
        if error:
            self._error("api_error", preview(f"{ev['error']}: {_text(msg.get('content'))}", 200))
            parts.insert(0, f"ERROR {ev['error']}")
        return preview("; ".join(parts) or "(empty)"), error

    def _call(self, block: dict) -> str:
        call_id = block.get("id") if isinstance(block.get("id"), str) else None
        if call_id and call_id in self._calls_by_id:  # the same block on a repeated line
            call = self._calls_by_id[call_id]
        else:
            name = block.get("name") if isinstance(block.get("name"), str) else "?"
            call = {"index": len(self.calls) + 1, "line": self.lineno, "id": call_id,
                    "name": name, "arg": tool_arg(block.get("input")),
                    "input": block.get("input"), "is_error": None, "result": None}
            self.calls.append(call)
            if call_id:
                self._calls_by_id[call_id] = call
        return f"{call['name']}({call['arg']})" if call["arg"] else call["name"]

    def _user(self, ev: dict, sub: str | None) -> tuple[str, bool]:
        content = _message(ev).get("content")
        if isinstance(content, str):
            return preview(f"prompt: {content}"), False
        parts, error = [], False
        for block in content if isinstance(content, list) else []:
            if not isinstance(block, dict):
                continue
            if block.get("type") != "tool_result":
                parts.append(preview(f"{block.get('type')}: {_text([block])}", 60))
                continue
            call = self._calls_by_id.get(block.get("tool_use_id"))
            name = call["name"] if call else "tool"
            failed = block.get("is_error") is True
            text = _text(block.get("content"))
            if call is not None:
                call["is_error"], call["result"] = failed, preview(text, 200)
            if failed:
                error = True
                arg = f" ({call['arg']})" if call and call["arg"] else ""
                self._error("tool_error", preview(f"{name}{arg}: {text}", 300))
            parts.append(f"{name} {'ERROR' if failed else 'ok'}: {preview(text, 60)}")
        return preview("; ".join(parts) or "(empty)"), error


    # -- codex exec --json ----------------------------------------------------------------

    def _codex_item(self, ev: dict, sub: str | None) -> tuple[str, bool]:
        item = ev.get("item") if isinstance(ev.get("item"), dict) else {}
        kind = item.get("type")
        if kind == "agent_message":
            return preview(f"text: {item.get('text', '')}"), False
        if kind != "command_execution":
            return preview({k: v for k, v in item.items() if k != "id"}), kind == "error"
        block = {"id": item.get("id"), "name": "shell", "input": {"command": item.get("command")}}
        desc = self._call(block)
        if ev.get("type") != "item.completed":
            return desc, False
        call = self._calls_by_id.get(item.get("id"))
        code, out = item.get("exit_code"), str(item.get("aggregated_output") or "")
        failed = item.get("status") == "failed" or (isinstance(code, int) and code != 0)
        if call is not None:
            call["is_error"], call["result"] = failed, preview(out, 200)
        if failed:
            self._error("tool_error", preview(f"{desc}: exit {code}: {out}", 300))
        return preview(f"{desc} {'ERROR' if failed else 'ok'} (exit {code}): {out}"), failed

    def _codex_turn(self, ev: dict, sub: str | None) -> tuple[str, bool]:
        if ev.get("type") == "turn.failed":
            err = ev.get("error") if isinstance(ev.get("error"), dict) else {}
            self._error("result_error", preview(f"turn failed: {err.get('message')}", 200))
            return preview(f"ERROR {err.get('message')}"), True
        usage = ev.get("usage") if isinstance(ev.get("usage"), dict) else {}
        return preview(" ".join(f"{k} {v}" for k, v in usage.items())) or "turn", False

    def _codex_error(self, ev: dict, sub: str | None) -> tuple[str, bool]:
        text = str(ev.get("message") or "")
        retrying = text.startswith("Reconnecting")
        self._error("api_retry" if retrying else "error", preview(text, 200))
        return preview(text), not retrying


_DESCRIBERS = {"system": Transcript._system, "assistant": Transcript._assistant,
               "user": Transcript._user, "rate_limit_event": Transcript._rate_limit,
               "result": Transcript._result, "item.started": Transcript._codex_item,
               "item.updated": Transcript._codex_item, "item.completed": Transcript._codex_item,
               "turn.completed": Transcript._codex_turn, "turn.failed": Transcript._codex_turn,
               "error": Transcript._codex_error}


def _message(ev: dict) -> dict:
    return ev.get("message") if isinstance(ev.get("message"), dict) else {}
