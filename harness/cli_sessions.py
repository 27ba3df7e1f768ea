"""``parallel-harness sessions ...`` and ``parallel-harness logs``: read what attempts left behind.

Every attempt of an item writes ``logs/<item-id>/<attempt>/``::

    item.json  prompt.md  events.jsonl (stream agents) | stdout.log (shell agents)
    stderr.log  verify.log  metrics.json  result.json

``metrics.json`` and ``result.json`` appear when the attempt ends (result.json
last); until then the metrics are derived from the stream with
:class:`harness.session.StreamState`, the same parser the worker uses.

Only click is imported at module level, so registering these commands costs
``parallel-harness status`` nothing. Exit codes: 0 ok, 1 ``watch``/``logs
--follow`` stopped by ``--timeout`` before the attempt ended, 2 usage errors
(unknown item or attempt, no logs).
"""

from __future__ import annotations

import sys

import click

EXIT_TIMEOUT = 1
EXIT_USAGE = 2
POLL_INTERVAL = 0.1  # seconds between reads when following a growing file
LIST_LIMIT = 50
PREVIEW_CHARS = 100
STREAM_FILES = ("events.jsonl", "stdout.log")
LOG_FILES = ("events.jsonl", "stdout.log", "stderr.log", "verify.log", "prompt.md", "item.json",
             "metrics.json", "result.json")
ARG_KEYS = ("command", "file_path", "path", "pattern", "description", "url", "query", "prompt")

_attempt_option = click.option(
    "--attempt", "attempt", type=click.IntRange(min=0), default=None, metavar="N",
    help="Attempt number (default: the latest).")
_all_attempts_option = click.option(
    "--attempt", "attempt", type=click.IntRange(min=0), default=None, metavar="N",
    help="Only this attempt (default: every attempt).")
_json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


# ---------------------------------------------------------------------------
# Locating attempts
# ---------------------------------------------------------------------------


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(EXIT_USAGE)


def _workspace(ctx: click.Context):  # -> Workspace
    from harness.workspace import Workspace

    obj = ctx.find_root().obj
    return Workspace.at(obj.get("root", ".") if isinstance(obj, dict) else ".")


def _item_dir(ws, item_id: str):  # -> Path
    from harness.names import ID_PATTERN

    if not ID_PATTERN.fullmatch(item_id):
        _fail(f"{item_id!r} is not a valid item id")
    path = ws.logs_dir / item_id
    if not _attempt_numbers(path):
        _fail(f"no logs for item {item_id!r} (nothing in {path})")
    return path


def _attempt_numbers(item_dir) -> list[int]:
    import os

    try:
        entries = os.listdir(item_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(e) for e in entries if e.isdigit() and (item_dir / e).is_dir())


def _pick(ws, item_id: str, attempt: int | None, *, every: bool) -> list[tuple[int, object]]:
    """[(attempt, dir)] of an item: ``attempt`` only, else every attempt or the latest."""
    item_dir = _item_dir(ws, item_id)
    numbers = _attempt_numbers(item_dir)
    if attempt is not None:
        if attempt not in numbers:
            _fail(f"item {item_id!r} has no attempt {attempt} in {item_dir} "
                  f"(attempts: {', '.join(map(str, numbers))})")
        numbers = [attempt]
    elif not every:
        numbers = numbers[-1:]
    return [(n, item_dir / str(n)) for n in numbers]


def _all_attempt_dirs(ws) -> list[tuple[float, str, int, object]]:
    """Every (start key, item id, attempt, dir) under logs/, newest first.

    The start key is the mtime of ``item.json`` (written once when the attempt
    starts), else of the directory: a stat per attempt, no file reads.
    """
    import os

    out = []
    try:
        items = os.listdir(ws.logs_dir)
    except FileNotFoundError:
        return []
    for item_id in items:
        item_dir = ws.logs_dir / item_id
        for n in _attempt_numbers(item_dir):
            d = item_dir / str(n)
            try:
                key = os.stat(d / "item.json").st_mtime
            except OSError:
                try:
                    key = os.stat(d).st_mtime
                except OSError:
                    continue
            out.append((key, item_id, n, d))
    out.sort(key=lambda t: (t[0], t[1], t[2]), reverse=True)
    return out


def _read_json(path) -> dict | None:
    import orjson

    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _stream_file(d):  # -> Path | None
    for name in STREAM_FILES:
        if (d / name).is_file():
            return d / name
    return None


def _running(ws) -> set[tuple[str, int]]:
    """(item, attempt) pairs that a worker's heartbeat says it is working on."""
    from harness import heartbeat

    return {(hb.get("item_id"), hb.get("attempt"))
            for hb in heartbeat.read_all(ws.heartbeats_dir).values() if hb.get("item_id")}


# ---------------------------------------------------------------------------
# Reading a stream
# ---------------------------------------------------------------------------


def _short(value: object, limit: int = PREVIEW_CHARS) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(b["text"] for b in content
                        if isinstance(b, dict) and isinstance(b.get("text"), str))
    return ""


def _tool_arg(tool_input: object, limit: int | None = PREVIEW_CHARS) -> str:
    import orjson

    if not isinstance(tool_input, dict):
        return ""
    for key in ARG_KEYS:
        if isinstance(tool_input.get(key), str) and tool_input[key]:
            text = tool_input[key]
            break
    else:
        text = orjson.dumps(tool_input, default=str).decode() if tool_input else ""
    return _short(text, limit) if limit else text


def _timestamp(ev: dict) -> float | None:
    """An event's own wall-clock time (``timestamp`` ISO string or epoch, or ``ts``), if any."""
    from datetime import datetime

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


class _Reader:
    """Turns stream lines into records and tallies, feeding a StreamState on the way.

    A record is ``{"line", "t", "type", "text", "error"}`` (``t``: seconds since
    the first timestamped event, or None). ``text_mode`` is for shell agents'
    stdout.log: every line is a ``stdout`` record.
    """

    def __init__(self, text_mode: bool = False) -> None:
        from harness.session import StreamState

        self.text_mode = text_mode
        self.state = StreamState()
        self.lineno = 0
        self.records: list[dict] = []
        self.events: list[object] = []  # every JSON value, in order
        self.bad_lines: list[dict] = []  # {"line", "text"}: not JSON
        self.calls: list[dict] = []
        self.errors: list[dict] = []  # {"line", "kind", "text"}
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
            return self._record("stdout", _short(text, 200))
        bad_before = self.state.metrics.non_json_lines
        ev = self.state.feed(text)
        if self.state.metrics.non_json_lines > bad_before:
            self.bad_lines.append({"line": self.lineno, "text": text})
            self._error("non_json", _short(text, 200))
            return self._record("non-json", _short(text), error=True)
        if ev is None:  # JSON, but not an object
            import orjson

            self.events.append(orjson.loads(text))
            self._error("not_an_object", _short(text, 200))
            return self._record("json", _short(text), error=True)
        self.events.append(ev)
        t = _timestamp(ev)
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
        kind = ev.get("type") if isinstance(ev.get("type"), str) else "?"
        sub = ev.get("subtype") if isinstance(ev.get("subtype"), str) else None
        label = f"{kind}/{sub}" if sub else kind
        msg = ev.get("message") if isinstance(ev.get("message"), dict) else {}
        if kind == "system" and sub == "init":
            tools = ev.get("tools") if isinstance(ev.get("tools"), list) else []
            return label, _short(f"session {ev.get('session_id')} model {ev.get('model')} "
                                 f"{len(tools)} tools cwd {ev.get('cwd')}"), False
        if kind == "system":
            rest = {k: v for k, v in ev.items() if k not in ("type", "subtype", "session_id",
                                                              "uuid")}
            if sub == "api_retry":
                self._error("api_retry", _short(rest, 200))
            return label, _short(rest), sub == "api_retry"
        if kind == "assistant":
            return label, *self._assistant(ev, msg)
        if kind == "user":
            return label, *self._user(msg)
        if kind == "rate_limit_event":
            info = ev.get("rate_limit_info") if isinstance(ev.get("rate_limit_info"), dict) else {}
            status = info.get("status")
            when = info.get("resetsAt")
            text = f"{status} {info.get('rateLimitType') or ''}".strip()
            if isinstance(when, (int, float)) and 0 < when < 1e11:
                text += f", resets {_when(when)}"
            if status == "rejected":
                self._error("rate_limit", text)
            return label, text, status == "rejected"
        if kind == "result":
            error = ev.get("is_error") is True or (sub or "").startswith("error")
            parts = [f"{ev.get('num_turns')} turns" if "num_turns" in ev else "",
                     f"${ev['total_cost_usd']:.4f}" if isinstance(ev.get("total_cost_usd"),
                                                                  (int, float)) else "",
                     _dur(ev["duration_ms"] / 1000) if isinstance(ev.get("duration_ms"),
                                                                  (int, float)) else ""]
            errors = [e for e in ev.get("errors") or [] if isinstance(e, str)] \
                if isinstance(ev.get("errors"), list) else []
            said = " ".join([ev["result"] if isinstance(ev.get("result"), str) else "", *errors])
            head = ", ".join(p for p in parts if p)
            if error:
                self._error("result_error", _short(f"{sub or 'error'}: {said.strip()}", 200))
            return label, _short(f"{'ERROR ' if error else ''}{head}: {said}".strip(" :")), error
        return label, _short({k: v for k, v in ev.items() if k != "type"}), False

    def _assistant(self, ev: dict, msg: dict) -> tuple[str, bool]:
        parts = []
        for block in msg.get("content") if isinstance(msg.get("content"), list) else []:
            if not isinstance(block, dict):
                continue
            btype = block.get("type")
            if btype == "text":
                parts.append(f"text: {_short(block.get('text', ''), 60)}")
            elif btype in ("thinking", "redacted_thinking"):
                parts.append("thinking")
            elif btype == "tool_use":
                parts.append(self._call(block))
            else:
                parts.append(str(btype))
        error = isinstance(ev.get("error"), str)
        if error:
            text = _content_text(msg.get("content"))
            self._error("api_error", _short(f"{ev['error']}: {text}", 200))
            parts.insert(0, f"ERROR {ev['error']}")
        return _short("; ".join(parts) or "(empty)"), error

    def _call(self, block: dict) -> str:
        call_id = block.get("id") if isinstance(block.get("id"), str) else None
        if call_id and call_id in self._calls_by_id:  # the same block on a repeated line
            call = self._calls_by_id[call_id]
        else:
            name = block.get("name") if isinstance(block.get("name"), str) else "?"
            call = {"index": len(self.calls) + 1, "line": self.lineno, "id": call_id,
                    "name": name, "arg": _tool_arg(block.get("input")),
                    "input": block.get("input"), "is_error": None, "result": None}
            self.calls.append(call)
            if call_id:
                self._calls_by_id[call_id] = call
        return f"{call['name']}({call['arg']})" if call["arg"] else call["name"]

    def _user(self, msg: dict) -> tuple[str, bool]:
        content = msg.get("content")
        if isinstance(content, str):
            return _short(f"prompt: {content}"), False
        parts, error = [], False
        for block in content if isinstance(content, list) else []:
            if not isinstance(block, dict):
                continue
            if block.get("type") != "tool_result":
                parts.append(_short(f"{block.get('type')}: {_content_text([block])}", 60))
                continue
            call = self._calls_by_id.get(block.get("tool_use_id"))
            name = call["name"] if call else "tool"
            failed = block.get("is_error") is True
            text = _content_text(block.get("content"))
            if call is not None:
                call["is_error"], call["result"] = failed, _short(text, 200)
            if failed:
                error = True
                arg = f" ({call['arg']})" if call and call["arg"] else ""
                self._error("tool_error", _short(f"{name}{arg}: {text}", 300))
            parts.append(f"{name} {'ERROR' if failed else 'ok'}: {_short(text, 60)}")
        return _short("; ".join(parts) or "(empty)"), error


def _read_lines(path, *, complete_only: bool) -> list[bytes]:
    """The lines of a log file; with ``complete_only`` a last line without newline is dropped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    last = lines.pop()  # b"" when the file ends with a newline
    if last and not complete_only:
        lines.append(last)
    return lines


def _load(d) -> _Reader | None:
    """Parse an attempt's stream (events.jsonl, or stdout.log as text); None if it has none."""
    path = _stream_file(d)
    if path is None:
        return None
    reader = _Reader(text_mode=path.name == "stdout.log")
    ended = (d / "result.json").exists()
    for line in _read_lines(path, complete_only=not ended):
        reader.feed(line)
    return reader


# ---------------------------------------------------------------------------
# Attempt records
# ---------------------------------------------------------------------------


def _metrics_obj(data: dict):  # -> Metrics
    import dataclasses

    from harness.session import Metrics

    m = Metrics()
    for f in dataclasses.fields(Metrics):
        value = data.get(f.name)
        default = getattr(m, f.name)
        if f.name == "model":
            m.model = value if isinstance(value, str) else None
        elif isinstance(default, dict):
            if isinstance(value, dict):
                m.tool_calls = {str(k): int(v) for k, v in value.items()
                                if isinstance(v, (int, float))}
        elif isinstance(default, list):
            if isinstance(value, list):
                m.errors = [str(e) for e in value]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            setattr(m, f.name, type(default)(value))
    return m


def _metrics(d, reader: _Reader | None) -> tuple[dict, str]:
    """(metrics, source): metrics.json if the attempt wrote it, else derived from the stream."""
    from harness.session import Metrics

    data = _read_json(d / "metrics.json")
    if data is not None:
        return _metrics_obj(data).as_dict(), "metrics.json"
    if reader is not None and not reader.text_mode:
        return reader.state.metrics.as_dict(), "stream"
    return Metrics().as_dict(), "none"


def _tokens(m: dict) -> int:
    return sum(int(m.get(k) or 0) for k in ("input_tokens", "output_tokens",
                                             "cache_creation_tokens", "cache_read_tokens"))


def _attempt_info(item_id: str, n: int, d, *, running: set, reader: _Reader | None = None,
                  parse: bool = True) -> dict:
    """Everything known about one attempt (the stream is parsed if ``parse`` or still running)."""
    import os
    import time

    result = _read_json(d / "result.json")
    if reader is None and (parse or result is None or not (d / "metrics.json").exists()):
        reader = _load(d)
    metrics, source = _metrics(d, reader)
    started = result.get("started_at") if result else None
    if not isinstance(started, (int, float)):
        try:
            started = os.stat(d / "item.json").st_mtime
        except OSError:
            started = None
    ended = result.get("ended_at") if result else None
    ended = ended if isinstance(ended, (int, float)) else None
    if result is not None:
        reason = result.get("reason") or "unknown"
    else:
        reason = "running" if (item_id, n) in running else "unfinished"
    if started is not None and (ended is not None or reason == "running"):
        duration = round((ended or time.time()) - started, 3)
    else:
        duration = metrics.get("duration_s") or None
    stream = _stream_file(d)
    info = {
        "item": item_id, "attempt": n, "reason": reason,
        "detail": result.get("detail") if result else None,
        "queue": result.get("queue") if result else None,
        "worker": result.get("worker") if result else None,
        "branch": result.get("branch") if result else None,
        "commit": result.get("commit") if result else None,
        "started_at": started, "ended_at": ended, "duration_s": duration,
        "tokens": _tokens(metrics), "cost_usd": metrics.get("cost_usd", 0.0),
        "turns": metrics.get("turns", 0), "model": metrics.get("model"),
        "session_id": reader.state.session_id if reader and not reader.text_mode else None,
        "agent": "shell" if stream is not None and stream.name == "stdout.log" else
                 "stream" if stream is not None else None,
        "metrics": metrics, "metrics_source": source,
        "dir": str(d), "files": {name: str(d / name) for name in LOG_FILES if (d / name).exists()},
    }
    if reader is not None:
        info["lines"] = {"records": len(reader.records), "events": len(reader.events),
                         "non_json": len(reader.bad_lines)}
        info["problems"] = reader.errors
    return info


def _item_title(d) -> str:
    data = _read_json(d / "item.json") or {}
    return str(data.get("title") or "")


# ---------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------


def _emit_json(data: object) -> None:
    import orjson

    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS,
                            default=str).decode())


def _when(t: float | None) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _table(rows: list[list[str]], indent: str = "") -> None:
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 or word == "failed" else f"{n} {word}s"


def _timeline_line(rec: dict) -> str:
    when = f"+{rec['t']:.1f}s" if rec.get("t") is not None else f"#{rec['line']}"
    return f"{when:>9}  {rec['type']:<18} {rec['text']}"


def _render_summary(info: dict, title: str = "") -> None:
    m = info["metrics"]
    head = f"{info['item']} attempt {info['attempt']}: {info['reason']}"
    if info.get("queue"):
        head += f" (queue: {info['queue']})"
    click.echo(head + (f"  — {title}" if title else ""))
    calls = m.get("tool_calls") or {}
    by_name = ", ".join(f"{k} {v}" for k, v in sorted(calls.items(),
                                                      key=lambda kv: (-kv[1], kv[0])))
    rows = [
        ["detail", info.get("detail") or "-"],
        ["started", f"{_when(info['started_at'])}   duration {_dur(info['duration_s'])}"],
        ["worker", f"{info.get('worker') or '-'}   session {info.get('session_id') or '-'}"],
        ["model", str(m.get("model") or "-")],
        ["turns", str(m.get("turns", 0))],
        ["tokens", f"input {m.get('input_tokens', 0)}  output {m.get('output_tokens', 0)}  "
                   f"cache write {m.get('cache_creation_tokens', 0)}  "
                   f"cache read {m.get('cache_read_tokens', 0)}  (total {info['tokens']})"],
        ["cost", f"${float(m.get('cost_usd') or 0):.4f}"],
        ["tools", _count(sum(calls.values()), "call") + (f": {by_name}" if by_name else "")
         + f"   ({_count(m.get('tool_errors', 0), 'failed')})"],
    ]
    problems = info.get("problems")
    if problems is not None:  # the stream was read: tally what `sessions errors` would list
        kinds: dict[str, int] = {}
        for p in problems:
            kinds[p["kind"]] = kinds.get(p["kind"], 0) + 1
        rows.append(["errors", ", ".join(f"{v} {k}" for k, v in kinds.items()) or "none"])
    else:
        rows.append(["errors", str(len(m.get("errors") or [])) or "none"])
    rows += [["", f"- {_short(e)}"] for e in (m.get("errors") or [])[:5]]
    if "lines" in info:
        lines = info["lines"]
        rows.append(["stream", f"{lines['events']} events, {lines['non_json']} non-JSON lines"
                               f" (metrics from {info['metrics_source']})"])
    commit = (info.get("commit") or "")[:12]
    rows.append(["branch", f"{info.get('branch') or '-'}" + (f" @ {commit}" if commit else "")])
    files = info.get("files") or {}
    rows.append(["logs", info["dir"]])
    rows.append(["", " ".join(n for n in files)])
    _table(rows, indent="  ")


# ---------------------------------------------------------------------------
# Following a growing file
# ---------------------------------------------------------------------------


class _Tail:
    """Reads the complete lines appended to a file since the last call."""

    def __init__(self, path) -> None:
        self.path, self.offset, self.partial = path, 0, b""

    def read(self, final: bool = False) -> list[bytes]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            data = b""
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        if final and self.partial:
            lines.append(self.partial)
            self.partial = b""
        return lines


def _follow(d, pick, emit, *, timeout: float | None, interval: float, tail=None) -> str:
    """Feed each new line of ``pick(d)``'s file to ``emit`` until result.json appears.

    Returns "ended", "timeout" or "interrupted" (Ctrl-C). The file may not
    exist yet (the agent has not started); result.json is checked before the
    last read, so every line written before it is emitted. ``tail``: a
    :class:`_Tail` already positioned (``logs -n N --follow``).
    """
    import time

    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            done = (d / "result.json").exists()
            if tail is None and (path := pick(d)) is not None:
                tail = _Tail(path)
            if tail is not None:
                for line in tail.read(final=done):
                    emit(line)
            if done:
                return "ended"
            if deadline is not None and time.monotonic() >= deadline:
                return "timeout"
            time.sleep(interval)
    except KeyboardInterrupt:
        return "interrupted"


def _follow_end(how: str, item_id: str, n: int, timeout: float | None) -> None:
    if how == "timeout":
        click.echo(f"stopped: --timeout {timeout:g}s passed before {item_id} attempt {n} ended",
                   err=True)
        raise SystemExit(EXIT_TIMEOUT)


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------


@click.group()
def sessions() -> None:
    """Inspect agent sessions: what each attempt of an item did, cost and logged.

    Reads logs/<item>/<attempt>/ (events.jsonl, result.json, metrics.json,
    stderr.log). ID is an item id; --attempt N picks one attempt.

    \b
    Examples:
      parallel-harness sessions list --limit 10
      parallel-harness sessions summary fix-parser
      parallel-harness sessions watch fix-parser
    """


@sessions.command("list", short_help="Every attempt with logs, newest first.")
@click.option("--limit", type=click.IntRange(min=0), default=LIST_LIMIT, show_default=True,
              metavar="N",
              help="Show at most this many attempts (0: all).")
@_json_option
@click.pass_context
def list_cmd(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Every attempt that has a log directory, newest first.

    Columns: item, attempt, reason (running / unfinished if it has no
    result.json yet), start, duration, tokens (all kinds), cost.

    \b
    Example:
      parallel-harness sessions list --limit 20 --json
    """
    ws = _workspace(ctx)
    everything = _all_attempt_dirs(ws)
    shown = everything[:limit] if limit else everything
    running = _running(ws)
    infos = [_attempt_info(item_id, n, d, running=running, parse=False)
             for _, item_id, n, d in shown]
    if as_json:
        keys = ("item", "attempt", "reason", "detail", "queue", "started_at", "ended_at",
                "duration_s", "tokens", "cost_usd", "turns", "dir")
        _emit_json([{k: i[k] for k in keys} for i in infos])
        return
    if not infos:
        click.echo(f"no attempts in {ws.logs_dir}")
        return
    rows = [["ITEM", "ATTEMPT", "REASON", "STARTED", "DURATION", "TOKENS", "COST"]]
    rows += [[i["item"], str(i["attempt"]), i["reason"], _when(i["started_at"]),
              _dur(i["duration_s"]), str(i["tokens"]), f"${float(i['cost_usd'] or 0):.4f}"]
             for i in infos]
    _table(rows)
    if len(shown) < len(everything):
        click.echo(f"({len(shown)} of {len(everything)} attempts; --limit 0 for all)")


@sessions.command(short_help="Summary of the most recent attempt.")
@_json_option
@click.pass_context
def latest(ctx: click.Context, as_json: bool) -> None:
    """Summary of the most recently started attempt of any item.

    \b
    Example:
      parallel-harness sessions latest
    """
    ws = _workspace(ctx)
    everything = _all_attempt_dirs(ws)
    if not everything:
        _fail(f"no attempt logs in {ws.logs_dir}")
    _, item_id, n, d = everything[0]
    info = _attempt_info(item_id, n, d, running=_running(ws))
    if as_json:
        _emit_json(info)
    else:
        _render_summary(info, _item_title(d))


@sessions.command(short_help="Per attempt: outcome, tokens, cost, tools, paths.")
@click.argument("item_id", metavar="ID")
@_all_attempts_option
@_json_option
@click.pass_context
def summary(ctx: click.Context, item_id: str, attempt: int | None, as_json: bool) -> None:
    """Per attempt of item ID: reason, detail, turns, tokens by kind, cost, tools, errors.

    Also duration, branch/commit and the paths of the attempt's log files.

    \b
    Example:
      parallel-harness sessions summary fix-parser --attempt 2
    """
    ws = _workspace(ctx)
    picked = _pick(ws, item_id, attempt, every=True)
    running = _running(ws)
    infos = [_attempt_info(item_id, n, d, running=running) for n, d in picked]
    title = _item_title(picked[-1][1])
    if as_json:
        _emit_json({"item": item_id, "title": title, "attempts": infos})
        return
    for k, info in enumerate(infos):
        if k:
            click.echo()
        _render_summary(info, title)


@sessions.command(short_help="Tool calls by name, and in order with args.")
@click.argument("item_id", metavar="ID")
@_attempt_option
@click.option("--full", is_flag=True, help="Show each call's whole input, untruncated.")
@_json_option
@click.pass_context
def tools(ctx: click.Context, item_id: str, attempt: int | None, full: bool,
          as_json: bool) -> None:
    """Tool calls of an attempt: counts by name, then each call in order with its arguments.

    \b
    Example:
      parallel-harness sessions tools fix-parser --full
    """
    import orjson

    ws = _workspace(ctx)
    (n, d), = _pick(ws, item_id, attempt, every=False)
    reader = _load(d) or _Reader()
    counts: dict[str, int] = {}
    for call in reader.calls:
        counts[call["name"]] = counts.get(call["name"], 0) + 1
    counts = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    if as_json:
        _emit_json({"item": item_id, "attempt": n, "counts": counts, "calls": reader.calls})
        return
    errors = sum(1 for c in reader.calls if c["is_error"])
    click.echo(f"{item_id} attempt {n}: {_count(len(reader.calls), 'tool call')}"
               f" ({errors} failed)")
    if reader.text_mode:
        click.echo("  (shell agent: no event stream)")
    _table([[name, str(count)] for name, count in counts.items()], indent="  ")
    if reader.calls:
        click.echo("sequence:")
    rows = []
    for c in reader.calls:
        arg = orjson.dumps(c["input"], default=str).decode() if full else c["arg"]
        status = {True: "ERROR", False: "ok", None: "-"}[c["is_error"]]
        rows.append([f"#{c['index']}", f"line {c['line']}", c["name"], status, arg])
    _table(rows, indent="  ")


@sessions.command(short_help="Failed tools, error results, bad lines, stderr.")
@click.argument("item_id", metavar="ID")
@_attempt_option
@click.option("--tail", "tail_lines", type=click.IntRange(min=0), default=20, show_default=True,
              metavar="N",
              help="Lines of stderr.log to show.")
@_json_option
@click.pass_context
def errors(ctx: click.Context, item_id: str, attempt: int | None, tail_lines: int,
           as_json: bool) -> None:
    """Errors of an attempt: failed tool results, error results, non-JSON lines, stderr tail.

    \b
    Example:
      parallel-harness sessions errors fix-parser --tail 50
    """
    ws = _workspace(ctx)
    (n, d), = _pick(ws, item_id, attempt, every=False)
    reader = _load(d) or _Reader()
    result = _read_json(d / "result.json")
    stderr = [line.decode("utf-8", "replace")
              for line in _read_lines(d / "stderr.log", complete_only=False)]
    stderr_tail = stderr[-tail_lines:] if tail_lines else []
    outcome = {k: result.get(k) for k in ("reason", "detail", "queue")} if result else None
    if as_json:
        _emit_json({"item": item_id, "attempt": n, "outcome": outcome, "errors": reader.errors,
                    "stderr_lines": len(stderr), "stderr_tail": stderr_tail,
                    "stderr_file": str(d / "stderr.log")})
        return
    kinds: dict[str, int] = {}
    for e in reader.errors:
        kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
    tally = ", ".join(f"{v} {k}" for k, v in kinds.items()) or "no errors in the stream"
    click.echo(f"{item_id} attempt {n}: {tally}")
    _table([[f"line {e['line']}", e["kind"], e["text"]] for e in reader.errors], indent="  ")
    if outcome and outcome["reason"] != "succeeded":
        click.echo(f"outcome: {outcome['reason']}: {outcome['detail']}")
    if stderr_tail:
        click.echo(f"stderr.log (last {len(stderr_tail)} of {len(stderr)} lines):")
        for line in stderr_tail:
            click.echo(f"  {line}")
    elif not stderr:
        click.echo("stderr.log: empty or missing")


@sessions.command(short_help="One line per event of an attempt.")
@click.argument("item_id", metavar="ID")
@_attempt_option
@_json_option
@click.pass_context
def timeline(ctx: click.Context, item_id: str, attempt: int | None, as_json: bool) -> None:
    """One line per stream event: time since the first event (or #line), type, description.

    Claude Code's stream-json lines usually carry no time, so #N (the line
    number in events.jsonl) is shown unless an event has a timestamp.

    \b
    Example:
      parallel-harness sessions timeline fix-parser --attempt 1
    """
    ws = _workspace(ctx)
    (n, d), = _pick(ws, item_id, attempt, every=False)
    reader = _load(d)
    records = reader.records if reader else []
    if as_json:
        _emit_json({"item": item_id, "attempt": n, "events": records})
        return
    click.echo(f"{item_id} attempt {n}: {len(records)} events")
    for rec in records:
        click.echo(_timeline_line(rec))
    result = _read_json(d / "result.json")
    if result:
        click.echo(f"ended: {result.get('reason')}: {result.get('detail')}")


@sessions.command(short_help="metrics.json per attempt and the item total.")
@click.argument("item_id", metavar="ID")
@_all_attempts_option
@_json_option
@click.pass_context
def metrics(ctx: click.Context, item_id: str, attempt: int | None, as_json: bool) -> None:
    """metrics.json of each attempt, and the item's total (summed with Metrics.add).

    An attempt still running has no metrics.json yet: its metrics come from
    the stream so far.

    \b
    Example:
      parallel-harness sessions metrics fix-parser --json
    """
    from harness.session import Metrics

    ws = _workspace(ctx)
    picked = _pick(ws, item_id, attempt, every=True)
    per = []
    total = Metrics()
    for n, d in picked:
        has_file = (d / "metrics.json").exists()
        data, source = _metrics(d, None if has_file else _load(d))
        total.add(_metrics_obj(data))
        per.append({"attempt": n, "source": source, "metrics": data})
    total_dict = total.as_dict()
    if as_json:
        _emit_json({"item": item_id, "attempts": per, "total": total_dict})
        return
    columns = [*(f"attempt {p['attempt']}" for p in per), "total"]
    dicts = [*(p["metrics"] for p in per), total_dict]
    rows = [["", *columns]]
    for key in ("input_tokens", "output_tokens", "cache_creation_tokens", "cache_read_tokens",
                "cost_usd", "turns", "tool_errors", "duration_s", "events", "unknown_events",
                "non_json_lines", "model"):
        cells = []
        for m in dicts:
            value = m.get(key)
            cells.append(f"${value:.4f}" if key == "cost_usd" and isinstance(value, float)
                         else f"{value:.1f}" if isinstance(value, float)
                         else "-" if value is None else str(value))
        rows.append([key, *cells])
    rows.append(["tool_calls", *(str(sum((m.get("tool_calls") or {}).values())) for m in dicts)])
    rows.append(["errors", *(str(len(m.get("errors") or [])) for m in dicts)])
    rows.append(["source", *(p["source"] for p in per), "sum"])
    click.echo(f"{item_id}: {len(per)} attempt(s)")
    _table(rows)
    if total.tool_calls:
        calls = sorted(total.tool_calls.items(), key=lambda kv: (-kv[1], kv[0]))
        click.echo("tool calls (total): " + ", ".join(f"{k} {v}" for k, v in calls))


@sessions.command(short_help="An item's attempts as one JSON document.")
@click.argument("item_id", metavar="ID")
@_all_attempts_option
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to this file instead of stdout.")
@click.pass_context
def export(ctx: click.Context, item_id: str, attempt: int | None, output: str | None) -> None:
    """One JSON document: the item, and each attempt's result, metrics and events.

    Lines of events.jsonl that are not JSON are listed under "bad_lines";
    a shell agent's attempt has no events.

    \b
    Example:
      parallel-harness sessions export fix-parser -o fix-parser.json
    """
    import time

    import orjson

    ws = _workspace(ctx)
    picked = _pick(ws, item_id, attempt, every=True)
    running = _running(ws)
    attempts = []
    for n, d in picked:
        reader = _load(d)
        info = _attempt_info(item_id, n, d, running=running, reader=reader)
        stderr = _read_lines(d / "stderr.log", complete_only=False)
        attempts.append({
            "attempt": n, "reason": info["reason"], "dir": str(d),
            "result": _read_json(d / "result.json"), "metrics": info["metrics"],
            "metrics_source": info["metrics_source"], "agent": info["agent"],
            "session_id": info["session_id"], "files": info["files"],
            "events": reader.events if reader and not reader.text_mode else [],
            "bad_lines": reader.bad_lines if reader else [],
            "stderr_tail": [line.decode("utf-8", "replace") for line in stderr[-50:]],
        })
    doc = {"item_id": item_id, "item": _read_json(picked[-1][1] / "item.json"),
           "root": str(ws.root), "exported_at": time.time(), "attempts": attempts}
    data = orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS, default=str)
    if output is None:
        click.echo(data.decode())
        return
    with open(output, "wb") as f:
        f.write(data + b"\n")
    events = sum(len(a["events"]) for a in attempts)
    click.echo(f"wrote {output} ({len(attempts)} attempt(s), {events} events)", err=True)


@sessions.command(short_help="Follow a running attempt's events live.")
@click.argument("item_id", metavar="ID")
@_attempt_option
@click.option("--timeout", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Stop after this many seconds (exit 1 if the attempt has not ended).")
@click.option("--interval", type=click.FloatRange(min=0.01), default=POLL_INTERVAL,
              metavar="SECONDS",
              show_default=True, help="Seconds between reads.")
@_json_option
@click.pass_context
def watch(ctx: click.Context, item_id: str, attempt: int | None, timeout: float | None,
          interval: float, as_json: bool) -> None:
    """Follow an attempt's events as they are written; stop when it ends or on Ctrl-C.

    Prints the events already written, then each new one as it arrives (one
    timeline line each; with --json one JSON object per line), until the
    attempt's result.json appears.

    \b
    Example:
      parallel-harness sessions watch fix-parser
    """
    import orjson

    ws = _workspace(ctx)
    (n, d), = _pick(ws, item_id, attempt, every=False)
    state: dict = {}

    def emit(raw: bytes) -> None:
        reader = state.get("reader")
        if reader is None:
            path = _stream_file(d)
            reader = state["reader"] = _Reader(text_mode=path is not None
                                               and path.name == "stdout.log")
        rec = reader.feed(raw)
        if rec is None:
            return
        if as_json:
            out = dict(rec)
            if rec["type"] not in ("non-json", "stdout"):
                out["event"] = reader.events[-1] if reader.events else None
            click.echo(orjson.dumps(out, default=str).decode())
        else:
            click.echo(_timeline_line(rec))

    if not as_json:
        ended = (d / "result.json").exists()
        click.echo(f"watching {item_id} attempt {n} ({d})"
                   + (": already ended" if ended else "; Ctrl-C to stop"), err=True)
    how = _follow(d, _stream_file, emit, timeout=timeout, interval=interval)
    if how == "ended":
        result = _read_json(d / "result.json") or {}
        if as_json:
            click.echo(orjson.dumps({"type": "end", "result": result}, default=str).decode())
        else:
            click.echo(f"ended: {result.get('reason')}: {result.get('detail')}")
    _follow_end(how, item_id, n, timeout)


@click.command(short_help="Print (or follow) an attempt's raw agent output.")
@click.argument("item_id", metavar="ID")
@_attempt_option
@click.option("-f", "--follow", is_flag=True,
              help="Keep printing as the log grows, until the attempt's result.json appears.")
@click.option("--stderr", "use_stderr", is_flag=True, help="Show stderr.log instead.")
@click.option("-n", "--tail", "tail_lines", type=click.IntRange(min=1), default=None, metavar="N",
              help="Start with only the last N lines.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="With --follow: stop after this many seconds (exit 1 if not ended).")
@click.option("--interval", type=click.FloatRange(min=0.01), default=POLL_INTERVAL,
              metavar="SECONDS",
              show_default=True, help="With --follow: seconds between reads.")
@click.pass_context
def logs(ctx: click.Context, item_id: str, attempt: int | None, follow: bool, use_stderr: bool,
         tail_lines: int | None, timeout: float | None, interval: float) -> None:
    """Print an attempt's raw agent output: events.jsonl, or stdout.log for shell agents.

    \b
    Examples:
      parallel-harness logs fix-parser --follow
      parallel-harness logs fix-parser --attempt 1 --stderr -n 50
    """
    ws = _workspace(ctx)
    (n, d), = _pick(ws, item_id, attempt, every=False)

    def pick(directory):
        if use_stderr:
            return directory / "stderr.log" if (directory / "stderr.log").is_file() else None
        return _stream_file(directory)

    out = sys.stdout.buffer
    path = pick(d)
    if path is None and not follow:
        wanted = "stderr.log" if use_stderr else " or ".join(STREAM_FILES)
        _fail(f"{item_id} attempt {n} has no {wanted} in {d}")
    if not follow:
        data = path.read_bytes()
        if tail_lines is not None:
            lines = data.split(b"\n")
            trailing = lines[-1] == b""
            lines = lines[:-1] if trailing else lines
            data = b"\n".join(lines[-tail_lines:]) + (b"\n" if trailing else b"")
        out.write(data)
        out.flush()
        return

    def emit(line: bytes) -> None:
        out.write(line + b"\n")
        out.flush()

    tail = None
    if tail_lines is not None and path is not None:  # start with the last N complete lines
        tail = _Tail(path)
        for line in tail.read()[-tail_lines:]:
            out.write(line + b"\n")
        out.flush()
    how = _follow(d, pick, emit, timeout=timeout, interval=interval, tail=tail)
    _follow_end(how, item_id, n, timeout)
