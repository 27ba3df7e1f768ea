"""Read what attempts left behind in ``logs/<item-id>/<attempt>/``.

Every attempt of an item writes::

    item.json  prompt.md  events.jsonl (stream agents) | stdout.log (shell agents)
    stderr.log  verify.log  metrics.json  result.json

``metrics.json`` and ``result.json`` appear when the attempt ends (result.json
last); until then the metrics are derived by replaying the stream through a
:class:`harness.agents.transcript.Transcript`. A last line without its newline is
only read once the attempt has ended (it may still be being written). No click:
the commands that render all this live in harness.cli.sessions.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

from harness.liveness import heartbeat
from harness.liveness.process import lock_is_held
from harness.queue.names import ID_PATTERN
from harness.agents.session import Metrics
from harness.agents.transcript import Transcript
from harness.workspace import Workspace

STREAM_FILES = ("events.jsonl", "stdout.log")  # stream agents, shell agents
SHELL_STREAM = "stdout.log"
LOG_FILES = ("events.jsonl", "stdout.log", "stderr.log", "verify.log", "prompt.md", "item.json",
             "metrics.json", "result.json")
EXPORT_STDERR_LINES = 50

read_json = heartbeat.read  # a file's JSON object, or None if missing, unreadable or no object


class NoAttempt(LookupError):
    """The item id is invalid, or the item (or the asked-for attempt) has no logs."""


# ---------------------------------------------------------------------------
# Locating attempts
# ---------------------------------------------------------------------------


def attempt_numbers(item_dir: Path) -> list[int]:
    """The attempts of an item's log directory, ascending ([] if it has none)."""
    try:
        entries = os.listdir(item_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(e) for e in entries if e.isdigit() and (item_dir / e).is_dir())


def pick(ws: Workspace, item_id: str, attempt: int | None, *,
         every: bool) -> list[tuple[int, Path]]:
    """[(attempt, dir)] of an item: ``attempt`` only, else every attempt or the latest.

    Raises :class:`NoAttempt` (its message names the directory and the
    attempts there) for an invalid id, an item without logs or a missing attempt.
    """
    if not ID_PATTERN.fullmatch(item_id):
        raise NoAttempt(f"{item_id!r} is not a valid item id")
    item_dir = ws.logs_dir / item_id
    numbers = attempt_numbers(item_dir)
    if not numbers:
        raise NoAttempt(f"no logs for item {item_id!r} (nothing in {item_dir})")
    if attempt is not None:
        if attempt not in numbers:
            raise NoAttempt(f"item {item_id!r} has no attempt {attempt} in {item_dir} "
                            f"(attempts: {', '.join(map(str, numbers))})")
        numbers = [attempt]
    elif not every:
        numbers = numbers[-1:]
    return [(n, ws.attempt_dir(item_id, n)) for n in numbers]


def all_attempts(ws: Workspace) -> list[tuple[str, int, Path]]:
    """Every (item id, attempt, dir) under logs/, most recently started first.

    The start is the mtime of ``item.json`` (written once when the attempt
    starts), else of the directory: a stat per attempt, no file reads.
    """
    try:
        items = os.listdir(ws.logs_dir)
    except FileNotFoundError:
        return []
    found = []
    for item_id in items:
        for n in attempt_numbers(ws.logs_dir / item_id):
            d = ws.attempt_dir(item_id, n)
            try:
                key = os.stat(d / "item.json").st_mtime
            except OSError:
                try:
                    key = os.stat(d).st_mtime
                except OSError:
                    continue
            found.append((key, item_id, n, d))
    found.sort(key=lambda t: (t[0], t[1], t[2]), reverse=True)
    return [(item_id, n, d) for _, item_id, n, d in found]


def running_attempts(ws: Workspace) -> set[tuple[str, int]]:
    """(item, attempt) pairs a live worker is working on: its heartbeat names the attempt
    and it holds its slot lock. A dead worker's heartbeat stays until the coordinator
    (or gc) removes it; its attempt is not running for all that."""
    return {(hb.get("item_id"), hb.get("attempt"))
            for worker, hb in heartbeat.read_all(ws.heartbeats_dir).items()
            if hb.get("item_id") and lock_is_held(ws.worker_lock(worker))}


# ---------------------------------------------------------------------------
# Reading one attempt
# ---------------------------------------------------------------------------


def stream_file(d: Path) -> Path | None:
    """The attempt's agent output: events.jsonl, else stdout.log, else None."""
    for name in STREAM_FILES:
        if (d / name).is_file():
            return d / name
    return None


def new_transcript(path: Path | None) -> Transcript:
    """An empty transcript for a stream file (text mode for a shell agent's stdout.log)."""
    return Transcript(text_mode=path is not None and path.name == SHELL_STREAM)


def read_lines(path: Path, *, complete_only: bool) -> list[bytes]:
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


def stderr_lines(d: Path) -> list[str]:
    return [line.decode("utf-8", "replace")
            for line in read_lines(d / "stderr.log", complete_only=False)]


def load(d: Path) -> Transcript | None:
    """Replay an attempt's stream (events.jsonl, or stdout.log as text); None if it has none."""
    path = stream_file(d)
    if path is None:
        return None
    transcript = new_transcript(path)
    ended = (d / "result.json").exists()
    for line in read_lines(path, complete_only=not ended):
        transcript.feed(line)
    return transcript


def metrics_from_dict(data: dict) -> Metrics:
    """A Metrics from metrics.json's object: fields of the wrong type keep their default."""
    m = Metrics()
    for f in dataclasses.fields(Metrics):
        value, default = data.get(f.name), getattr(m, f.name)
        if f.name == "model":
            m.model = value if isinstance(value, str) else None
        elif isinstance(default, bool):
            setattr(m, f.name, value is True)
        elif isinstance(default, dict):
            if isinstance(value, dict):
                setattr(m, f.name, {str(k): int(v) for k, v in value.items()
                                    if isinstance(v, (int, float))})
        elif isinstance(default, list):
            if isinstance(value, list):
                setattr(m, f.name, [str(e) for e in value])
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            setattr(m, f.name, type(default)(value))
    return m


def attempt_metrics(d: Path, transcript: Transcript | None) -> tuple[Metrics, str]:
    """(metrics, source): metrics.json if the attempt wrote it, else derived from the stream.

    source is "metrics.json", "stream" or "none" (a shell agent's, or no stream).
    """
    data = read_json(d / "metrics.json")
    if data is not None:
        return metrics_from_dict(data), "metrics.json"
    if transcript is not None and not transcript.text_mode:
        return transcript.state.metrics, "stream"
    return Metrics(), "none"


def total_tokens(m: Metrics) -> int:
    return m.input_tokens + m.output_tokens + m.cache_creation_tokens + m.cache_read_tokens


def attempt_info(item_id: str, n: int, d: Path, *, running: set,
                 transcript: Transcript | None = None, parse: bool = True) -> dict[str, Any]:
    """Everything known about one attempt (the stream is parsed if ``parse`` or still running).

    reason is result.json's, else "running" (a heartbeat names the attempt) or
    "unfinished". "lines" and "problems" are present when the stream was read.
    """
    result = read_json(d / "result.json")
    if transcript is None and (parse or result is None or not (d / "metrics.json").exists()):
        transcript = load(d)
    m, source = attempt_metrics(d, transcript)
    started, ended = _times(d, result)
    if result is not None:
        reason = result.get("reason") or "unknown"
    else:
        reason = "running" if (item_id, n) in running else "unfinished"
    if started is not None and (ended is not None or reason == "running"):
        duration = round((ended or time.time()) - started, 3)
    else:
        duration = m.duration_s or None
    stream = stream_file(d)
    streamed = transcript is not None and not transcript.text_mode
    info = {
        "item": item_id, "attempt": n, "reason": reason,
        **{k: result.get(k) if result else None
           for k in ("detail", "queue", "worker", "branch", "commit", "base", "pushed",
                  "pr_url")},
        "started_at": started, "ended_at": ended, "duration_s": duration,
        "tokens": total_tokens(m), "cost_usd": m.cost_usd, "turns": m.turns, "model": m.model,
        "session_id": transcript.state.session_id if streamed else None,
        "agent": None if stream is None else "shell" if stream.name == SHELL_STREAM else "stream",
        "metrics": m.as_dict(), "metrics_source": source,
        "dir": str(d), "files": {name: str(d / name) for name in LOG_FILES if (d / name).exists()},
    }
    if transcript is not None:
        info["lines"] = {"records": len(transcript.records), "events": len(transcript.events),
                         "non_json": len(transcript.bad_lines)}
        info["problems"] = transcript.errors
    return info


def _times(d: Path, result: dict | None) -> tuple[float | None, float | None]:
    """(started_at, ended_at) from result.json; the start falls back to item.json's mtime."""
    started = result.get("started_at") if result else None
    if not isinstance(started, (int, float)):
        try:
            started = os.stat(d / "item.json").st_mtime
        except OSError:
            started = None
    ended = result.get("ended_at") if result else None
    return started, ended if isinstance(ended, (int, float)) else None


def item_title(d: Path) -> str:
    data = read_json(d / "item.json") or {}
    return str(data.get("title") or "")


# ---------------------------------------------------------------------------
# Across an item's attempts
# ---------------------------------------------------------------------------


def item_metrics(picked: list[tuple[int, Path]]) -> tuple[list[dict], Metrics]:
    """Per attempt ``{"attempt", "source", "metrics"}``, and their sum (Metrics.add)."""
    per, total = [], Metrics()
    for n, d in picked:
        has_file = (d / "metrics.json").exists()
        m, source = attempt_metrics(d, None if has_file else load(d))
        total.add(m)
        per.append({"attempt": n, "source": source, "metrics": m.as_dict()})
    return per, total


def export(ws: Workspace, item_id: str, picked: list[tuple[int, Path]]) -> dict[str, Any]:
    """One JSON-able document: the item, and each attempt's result, metrics and events.

    Lines of events.jsonl that are not JSON are listed under "bad_lines"; a
    shell agent's attempt has no events.
    """
    running = running_attempts(ws)
    attempts = []
    for n, d in picked:
        transcript = load(d)
        info = attempt_info(item_id, n, d, running=running, transcript=transcript)
        streamed = transcript is not None and not transcript.text_mode
        attempts.append({
            "attempt": n, "reason": info["reason"], "dir": str(d),
            "result": read_json(d / "result.json"), "metrics": info["metrics"],
            "metrics_source": info["metrics_source"], "agent": info["agent"],
            "session_id": info["session_id"], "files": info["files"],
            "events": transcript.events if streamed else [],
            "bad_lines": transcript.bad_lines if transcript else [],
            "stderr_tail": stderr_lines(d)[-EXPORT_STDERR_LINES:],
        })
    return {"item_id": item_id, "item": read_json(picked[-1][1] / "item.json"),
            "root": str(ws.root), "exported_at": time.time(), "attempts": attempts}


# ---------------------------------------------------------------------------
# Following a growing file
# ---------------------------------------------------------------------------


class Tail:
    """Reads the complete lines appended to a file since the last call."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset, self.partial = path, 0, b""

    def read(self, final: bool = False) -> list[bytes]:
        """New complete lines; with ``final`` also a last line without newline."""
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


def follow(d: Path, pick_file, emit, *, timeout: float | None, interval: float,
           tail: Tail | None = None) -> str:
    """Feed each new line of ``pick_file(d)``'s file to ``emit`` until result.json appears.

    Returns "ended", "timeout" or "interrupted" (Ctrl-C). The file may not
    exist yet (the agent has not started); result.json is checked before the
    last read, so every line written before it is emitted. ``tail``: a
    :class:`Tail` already positioned (``logs -n N --follow``).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            done = (d / "result.json").exists()
            if tail is None and (path := pick_file(d)) is not None:
                tail = Tail(path)
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
