"""``codex exec --json``: handlers for each event, and the sandbox the preset asks for.

Event shapes (codex 0.171.0; captures in tests/data/cli-events/codex-*):

- ``thread.started`` {thread_id}: the session id (``codex exec resume <id>``);
- ``turn.started``; ``item.started`` / ``item.updated`` / ``item.completed`` with
  ``item.type`` ``agent_message`` (text), ``reasoning``, ``command_execution``
  (``command``, ``aggregated_output``, ``exit_code``, ``status``), ``file_change``,
  ``mcp_tool_call``, ``web_search``, ``todo_list``, ``error`` (a warning);
- ``error`` {message}: "Reconnecting... n/m (why)" while codex retries (not fatal),
  or the final error before ``turn.failed``;
- ``turn.completed`` {usage: input_tokens (cached included), cached_input_tokens,
  cache_write_input_tokens, output_tokens, reasoning_output_tokens}: success;
- ``turn.failed`` {error: {message}}: the failure, in codex's words.

Codex has no turn limit and reports no cost: the harness counts a turn per model
response (each tool result goes back to the model, plus the first), ends the
session itself past ``[agent] max_turns``, and leaves ``cost_usd`` at 0.
"""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path
from typing import Any, Final

from harness.agents.session import (
    RATE_LIMIT_BACKOFF, Retry, StreamState, api_problem, as_, num, short)

_RECONNECT_RE = re.compile(r"^Reconnecting\.\.\.\s*(\d+)/(\d+)\s*\((.*)\)\s*$", re.S)
_STATUS_RE = re.compile(r"status:? (\d{3})\b")
_SHELL_PREFIX_RE = re.compile(r"^/bin/(?:ba)?sh -l?c ")
ITEM_TYPES: Final = frozenset({"agent_message", "reasoning", "command_execution", "file_change",
                               "mcp_tool_call", "web_search", "todo_list", "error"})
FIXES: Final = {
    "auth_failed": "give codex a working login: the variable named by the provider's env_key"
                   " in $CODEX_HOME/config.toml (in the environment or [agent] env), or"
                   " `codex login` for OpenAI itself; check it with"
                   " `parallel-harness doctor --check-auth`",
    "quota": "add credits or raise the quota of the model provider's account",
}


class CodexStream(StreamState):
    """The live state of one ``codex exec --json`` session (see the module docstring)."""

    FIXES = FIXES

    def __init__(self, *args: Any, max_turns: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_turns = max_turns  # 0: no limit
        self._started_turns = 0
        self._tool_results = 0
        self._seen_items: set[str] = set()
        self._last_error = ""

    def result_text(self) -> str:
        err = as_((self.result or {}).get("error"), dict, {})
        return as_(err.get("message"), str) or self._last_error

    def _thread_started(self, ev: dict) -> None:
        self.session_id = as_(ev.get("thread_id"), str) or self.session_id
        self.activity = "started"

    def _turn_started(self, ev: dict) -> None:
        self._started_turns += 1
        self._count_turns()
        self.activity = "thinking"

    def _count_turns(self) -> None:
        self.metrics.turns = self._started_turns + self._tool_results
        if self.max_turns and self.metrics.turns > self.max_turns and self.stop_now is None:
            self.stop_now = ("failed", f"max_turns: reached [agent] max_turns ({self.max_turns});"
                                       " codex has no turn limit, the harness ended it")

    def _item(self, ev: dict) -> None:
        item = as_(ev.get("item"), dict, {})
        kind, key = as_(item.get("type"), str) or "?", as_(item.get("id"), str) or "?"
        done = ev.get("type") == "item.completed"
        if kind in ("command_execution", "file_change", "mcp_tool_call", "web_search"):
            if key not in self._seen_items:
                self._seen_items.add(key)
                name, arg = _tool(kind, item)
                self.open_tool(key, name, arg, None)
            if done:
                self._tool_done(key, kind, item)
        elif kind == "agent_message":
            self.activity = "writing"
        elif kind == "reasoning":
            self.activity = "thinking"
        elif kind == "error" and done:  # a warning (e.g. no metadata for the model)
            self.metrics.note_error(f"codex: {as_(item.get('message'), str, '?')}")
        elif kind not in ITEM_TYPES:
            self.metrics.unknown_events += 1  # an item type this parser was never shown

    def _tool_done(self, key: str, kind: str, item: dict) -> None:
        self.close_tool(key)
        self._tool_results += 1
        self._count_turns()
        code = item.get("exit_code")
        failed = item.get("status") == "failed" or (isinstance(code, int) and code != 0)
        if failed:
            self.metrics.tool_errors += 1
            out = as_(item.get("aggregated_output"), str, "") or as_(item.get("error"), str, "")
            self.metrics.note_error(f"{_tool(kind, item)[0]} error: exit {code}: {out}")
        if self.stop_now is None:
            self.activity = f"tool {self.last_tool} done"

    def _error(self, ev: dict) -> None:
        message = as_(ev.get("message"), str) or "error"
        match = _RECONNECT_RE.match(message)
        if match is None:
            self._last_error = message
            self.metrics.note_error(f"codex: {message}")
            return
        why = match.group(3)
        status = _status(why)
        self.retry = Retry(int(match.group(1)), int(match.group(2)), None,
                           _why(status, why), status)
        self.activity = short(self.retry.describe())
        if api_problem(status, why) == "auth_failed":
            self.set_problem("auth_failed", why)

    def _turn_completed(self, ev: dict) -> None:
        usage = as_(ev.get("usage"), dict, {})
        m = self.metrics
        cached, written = int(num(usage.get("cached_input_tokens"))), int(
            num(usage.get("cache_write_input_tokens")))
        m.input_tokens += max(0, int(num(usage.get("input_tokens"))) - cached - written)
        m.cache_read_tokens += cached
        m.cache_creation_tokens += written
        m.output_tokens += int(num(usage.get("output_tokens")))
        self.result, self.result_is_error = ev, False
        self.open_tools.clear()
        self.activity = "finished"

    def _turn_failed(self, ev: dict) -> None:
        self.result, self.result_is_error = ev, True
        self.open_tools.clear()
        text = self.result_text()
        self.metrics.note_error(f"turn failed: {text}")
        self.activity = short(f"failed: {text}")
        reason = api_problem(_status(text), text)
        if reason == "rate_limited" or self.limit_from_text(text):
            self.limit_from_text(text, force=True, retry_after=RATE_LIMIT_BACKOFF)
        elif reason is not None:
            self.set_problem(reason, text)


CodexStream.HANDLERS = {
    "thread.started": CodexStream._thread_started, "turn.started": CodexStream._turn_started,
    "item.started": CodexStream._item, "item.updated": CodexStream._item,
    "item.completed": CodexStream._item, "error": CodexStream._error,
    "turn.completed": CodexStream._turn_completed, "turn.failed": CodexStream._turn_failed,
}


def event_kind(ev: dict) -> str:
    """``type`` or ``type/item type`` (for item events), as listed per CLI version."""
    kind = ev.get("type") if isinstance(ev.get("type"), str) else "?"
    item = ev.get("item") if isinstance(ev.get("item"), dict) else None
    if kind.startswith("item.") and item is not None and isinstance(item.get("type"), str):
        return f"{kind}/{item['type']}"
    return kind


def knows(kind: str) -> bool:
    """True if the parser handles events of this kind."""
    base, _, sub = kind.partition("/")
    return base in CodexStream.HANDLERS and (not sub or sub in ITEM_TYPES)


def _tool(kind: str, item: dict) -> tuple[str, str]:
    """(tool name for the metrics, its telling argument) of a tool item."""
    if kind == "command_execution":
        return "shell", _command(as_(item.get("command"), str, ""))
    if kind == "file_change":
        paths = [c.get("path") for c in as_(item.get("changes"), list, []) if isinstance(c, dict)]
        return "patch", " ".join(p for p in paths if isinstance(p, str))
    if kind == "mcp_tool_call":
        return f"mcp {item.get('server')}.{item.get('tool')}", ""
    return "web_search", as_(item.get("query"), str, "")


def _command(command: str) -> str:
    """The script of ``/bin/bash -lc '<script>'`` (how codex reports each command)."""
    if not _SHELL_PREFIX_RE.match(command):
        return command
    try:
        words = shlex.split(command)
    except ValueError:
        return _SHELL_PREFIX_RE.sub("", command)
    return words[2] if len(words) == 3 else _SHELL_PREFIX_RE.sub("", command)


def _status(text: str) -> int | None:
    match = _STATUS_RE.search(text)
    return int(match.group(1)) if match else None


def _why(status: int | None, text: str) -> str:
    """A retry's cause in the words Claude's api_retry uses, where one applies."""
    named = {401: "authentication_failed", 403: "authentication_failed", 429: "rate_limit",
             529: "overloaded"}
    if status in named:
        return named[status]
    if status is not None and status >= 500:
        return "server_error"
    return short(text, 40)


def sandbox_args(git_dir: str, common_dir: str) -> list[str]:
    """``-c`` options that let codex write in its worktree and commit there, nowhere else.

    ``workspace-write`` keeps every git directory read-only, and a linked worktree's
    git directory is outside it (``<repo>/.git/worktrees/<name>``): it is added as a
    writable root by name, with the common directory's ``objects``, ``refs`` and
    ``logs`` (a commit writes there). ``-c`` rather than ``--add-dir`` because
    ``codex exec resume`` has no ``--add-dir``.
    """
    roots = [git_dir, *(f"{common_dir}/{sub}" for sub in ("objects", "refs", "logs"))]
    listed = ",".join('"' + r.replace("\\", "\\\\").replace('"', '\\"') + '"' for r in roots)
    return ["-c", 'sandbox_mode="workspace-write"',
            "-c", f"sandbox_workspace_write.writable_roots=[{listed}]"]


def provider(env: dict[str, str]) -> dict[str, Any]:
    """The model provider codex will use with ``env``: ``{"id", "config", "base_url",
    "env_key", "custom"}`` read from ``$CODEX_HOME/config.toml`` (default ``~/.codex``).

    ``id`` is ``openai`` (the built-in one) unless ``model_provider`` names another;
    ``custom`` says whether ``[model_providers.<id>]`` defines it. Raises ValueError
    naming the file if it is not valid TOML.
    """
    home = Path(env.get("CODEX_HOME") or Path(env.get("HOME", "~")).expanduser() / ".codex")
    config = home / "config.toml"
    try:
        data = tomllib.loads(config.read_text())
    except FileNotFoundError:
        data = {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"{config}: {exc}") from None
    pid = data.get("model_provider") if isinstance(data.get("model_provider"), str) else "openai"
    defined = (data.get("model_providers") or {}).get(pid)
    defined = defined if isinstance(defined, dict) else None
    return {"id": pid, "config": str(config), "custom": defined is not None,
            "base_url": (defined or {}).get("base_url"), "env_key": (defined or {}).get("env_key")}
