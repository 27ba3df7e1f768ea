"""Claude Code's ``--output-format stream-json --verbose`` stream: handlers for each event.

Event shapes, per CLI version, are in tests/data/cli-events/ (captured from the real
CLIs) and docs/agents.md says what each one means to the harness. In short:

- ``system/init`` names the session and model; a second one after a ``result``
  means the session goes on (a background task finished): the result is not final.
- ``assistant`` carries one content block per line, usage repeated per message id;
  ``user`` carries tool results, which close the tool call of that id.
- ``system/api_retry`` announces a retry (attempt, delay, status, error): shown as
  the activity, its delay allowed as silence; a 401/403 ends the session at once.
- ``system/task_*`` track background tasks: the CLI stays silent while one runs.
- ``rate_limit_event`` (OAuth logins only) says whether a usage limit rejected us.
- ``result`` is the session's verdict; the last one wins. Tokens come from the sum
  of its ``modelUsage`` (the one figure that matched the billed cost in every
  captured stream), cost from ``total_cost_usd``; both are cumulative per session.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Final

from harness.agents.session import Retry, StreamState, api_problem, as_, num, short, text_of

_BUDGET_RE = re.compile(r"max(?:imum)?[ _-]budget|budget (?:exceeded|exhausted)", re.I)
_ARG_KEYS: Final = ("command", "file_path", "path", "pattern", "description", "url", "query")
_USAGE_KEYS: Final = ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                      "cache_read_input_tokens")
_MODEL_USAGE_KEYS: Final = ("inputTokens", "outputTokens", "cacheCreationInputTokens",
                            "cacheReadInputTokens")
_TASK_DONE: Final = frozenset({"completed", "failed", "killed", "stopped", "cancelled"})
# system subtypes read and knowingly passed over (tests/test_cli_events.py checks the list)
SYSTEM_KNOWN: Final = frozenset({"init", "api_retry", "task_started", "task_updated",
                                 "task_notification", "background_tasks_changed",
                                 "permission_denied", "compact_boundary", "status",
                                 "hook_response"})
FIXES: Final = {
    "auth_failed": "give the agent a working login: ANTHROPIC_API_KEY, CLAUDE_CODE_OAUTH_TOKEN"
                   " (`claude setup-token`) or CLAUDE_CODE_USE_BEDROCK / CLAUDE_CODE_USE_VERTEX"
                   " with their cloud credentials, in the environment or [agent] env; check it"
                   " with `parallel-harness doctor --check-auth`",
    "quota": "add credits or raise the spend limit of the Anthropic account",
}


class ClaudeStream(StreamState):
    """The live state of one Claude Code session.

    Until a ``result``, tokens are summed over assistant messages (deduplicated by
    ``message.id``, the last line wins) and marked partial, so a killed session
    still has counts; the result's ``modelUsage``, cost and turns then replace them.
    """

    IGNORED = frozenset({"stream_event", "control_request", "control_response"})
    FIXES = FIXES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._msg_usage: dict[str, tuple[int, ...]] = {}
        self._turns_before = 0  # num_turns of earlier results in this session
        self._retry_delay: float | None = None  # the last announced retry's, kept after it
        self._retry_status: int | None = None

    def result_text(self) -> str:
        return _result_text(self.result or {})

    def failure_text(self) -> str:
        # Claude Code reports API errors (a bad key) as subtype "success" with is_error:
        # the subtype would contradict the reason, so only a real one is kept.
        sub, text = (self.result or {}).get("subtype"), self.result_text()
        return f"{sub}: {text}" if sub and sub != "success" and text else text or (sub or "")

    def is_final(self) -> bool:
        """A result with no background task running: claude -p waits for its tasks and
        then starts another turn, so a result before that is not the session's end."""
        return self.result is not None and not any(k.startswith("task:") for k in self.open_tools)

    def _system(self, ev: dict) -> None:
        sub = ev.get("subtype")
        if sub == "init":
            self.session_id = as_(ev.get("session_id"), str) or self.session_id
            self.metrics.model = as_(ev.get("model"), str) or self.metrics.model
            if self.result is not None:  # a background task ended: the session goes on
                self._turns_before = self.metrics.turns
                self.result, self.result_is_error = None, False
            self.activity = "started"
        elif sub == "api_retry":
            self._api_retry(ev)
        elif sub == "task_started":
            task = as_(ev.get("task_id"), str) or "?"
            self.open_tools[f"task:{task}"] = self.tool_timeout
            self.activity = short(f"task: {as_(ev.get('description'), str, task)}")
        elif sub in ("task_updated", "task_notification"):
            status = as_(ev.get("status"), str) or as_(as_(ev.get("patch"), dict, {})
                                                      .get("status"), str)
            if status in _TASK_DONE:
                self.close_tool(f"task:{as_(ev.get('task_id'), str) or '?'}")
        elif sub not in SYSTEM_KNOWN:
            self.metrics.unknown_events += 1  # a subtype this parser was never shown

    def _api_retry(self, ev: dict) -> None:
        status = ev.get("error_status") if isinstance(ev.get("error_status"), int) else None
        why = as_(ev.get("error"), str) or (f"status {status}" if status else "error")
        self.retry = Retry(int(num(ev.get("attempt"), 1)), int(num(ev.get("max_retries"))) or None,
                           num(ev.get("retry_delay_ms")) / 1000, why, status)
        self.activity = self.retry.describe()
        self._retry_delay, self._retry_status = self.retry.delay_s, status
        if status in (401, 403) or why == "authentication_failed":
            self.set_problem("auth_failed", f"the API rejected the credentials ({status or why});"
                                            " the CLI would retry it for minutes")

    def _assistant(self, ev: dict) -> None:
        msg = as_(ev.get("message"), dict, {})
        model = as_(msg.get("model"), str)
        if model and not model.startswith("<"):  # "<synthetic>": a message made by the CLI
            self.metrics.model = model
        usage = msg.get("usage")
        if isinstance(usage, dict) and self.result is None and not model_is_synthetic(model):
            key = as_(msg.get("id"), str) or f"anonymous-{len(self._msg_usage)}"
            self._msg_usage[key] = _usage(usage, _USAGE_KEYS)
            self._set_tokens(self._msg_usage.values())
            self.metrics.turns = self._turns_before + len(self._msg_usage)
        for block in as_(msg.get("content"), list, []):
            self._block(as_(block, dict, {}))
        if ev.get("error") == "rate_limit":  # the CLI's own message after a rejected request
            self.limit_from_text(text_of(msg.get("content")), force=True,
                                 retry_after=self._retry_delay)

    def _set_tokens(self, usages: Iterable[tuple[int, ...]]) -> None:
        m = self.metrics
        m.input_tokens, m.output_tokens, m.cache_creation_tokens, m.cache_read_tokens = (
            sum(column) for column in zip(*usages, (0, 0, 0, 0)))

    def _block(self, block: dict) -> None:
        if block.get("type") == "tool_use":
            name = as_(block.get("name"), str) or "?"
            tool_input = as_(block.get("input"), dict, {})
            arg = next((a for k in _ARG_KEYS if (a := as_(tool_input.get(k), str))), "")
            timeout_ms = num(tool_input.get("timeout"))
            self.open_tool(as_(block.get("id"), str) or f"tool-{name}", name, arg,
                           timeout_ms / 1000 if timeout_ms > 0 else None)
        elif block.get("type") in ("thinking", "redacted_thinking", "text"):
            self.activity = "writing" if block["type"] == "text" else "thinking"

    def _user(self, ev: dict) -> None:
        for block in as_(as_(ev.get("message"), dict, {}).get("content"), list, []):
            if not (isinstance(block, dict) and block.get("type") == "tool_result"):
                continue
            self.close_tool(as_(block.get("tool_use_id"), str) or f"tool-{self.last_tool}")
            if block.get("is_error") is True:
                self.metrics.tool_errors += 1
                self.metrics.note_error(f"{self.last_tool or 'tool'} error: "
                                        f"{text_of(block.get('content'))}")
        self.activity = f"tool {self.last_tool} done" if self.last_tool else "reading input"

    def _rate_limit_event(self, ev: dict) -> None:
        info = as_(ev.get("rate_limit_info"), dict, {})
        if info.get("status") == "rejected" and not info.get("isUsingOverage"):
            resets = num(info.get("resetsAt"))  # epoch seconds; nonsense becomes None
            self.set_rate_limit(resets if 0 < resets < 1e11 else None,
                                as_(info.get("rateLimitType"), str))
        elif info.get("status") in ("allowed", "allowed_warning"):
            self.rate_limit = None  # the latest status is the one that holds

    def _result(self, ev: dict) -> None:
        m, sub = self.metrics, as_(ev.get("subtype"), str) or ""
        self.result = ev
        self.result_is_error = ev.get("is_error") is True or sub.startswith("error")
        self.session_id = as_(ev.get("session_id"), str) or self.session_id
        model_usage = [u for u in as_(ev.get("modelUsage"), dict, {}).values()
                       if isinstance(u, dict)]
        if model_usage:
            self._set_tokens(_usage(u, _MODEL_USAGE_KEYS) for u in model_usage)
        elif isinstance(ev.get("usage"), dict) and not self._msg_usage:
            self._set_tokens([_usage(ev["usage"], _USAGE_KEYS)])
        m.cost_usd = num(ev.get("total_cost_usd"), m.cost_usd)
        m.turns = self._turns_before + int(num(ev.get("num_turns"), m.turns - self._turns_before))
        m.duration_s = num(ev.get("duration_ms"), m.duration_s * 1000) / 1000
        # Tool calls end with the turn; background tasks run on, and the session with them.
        self.open_tools = {k: v for k, v in self.open_tools.items() if k.startswith("task:")}
        if not self.result_is_error:
            self.activity = "finished"
            return
        text = _result_text(ev)
        m.note_error(f"{sub or 'error'}: {text}" if text else sub or "error")
        self.activity = short(f"failed: {text or sub}")
        if sub == "error_max_budget_usd" or ev.get("terminal_reason") == "budget_exhausted" \
                or _BUDGET_RE.search(text):
            self.budget_exceeded = True
        elif sub != "error_max_turns":
            self._api_failure(ev, text)

    def _api_failure(self, ev: dict, text: str) -> None:
        """An error result that is no budget or turn limit: an API failure is reported as
        subtype ``success`` with is_error (2.1.332 adds ``api_error_status``; 2.1.197 may
        not, then the last announced retry's status stands in)."""
        status = ev.get("api_error_status") if isinstance(ev.get("api_error_status"), int) \
            else self._retry_status
        sub = as_(ev.get("subtype"), str) or "success"
        reason = api_problem(status, text) if sub == "success" or status else None
        if self.rate_limit is not None or reason == "rate_limited":
            self.limit_from_text(text, force=True, retry_after=self._retry_delay)
        elif reason is not None:
            self.set_problem(reason, text)
        else:
            self.limit_from_text(text, retry_after=self._retry_delay)


ClaudeStream.HANDLERS = {
    "system": ClaudeStream._system, "assistant": ClaudeStream._assistant,
    "user": ClaudeStream._user, "rate_limit_event": ClaudeStream._rate_limit_event,
    "result": ClaudeStream._result,
}


def model_is_synthetic(model: str | None) -> bool:
    """``<synthetic>``: a message the CLI made itself (an error text), with zero usage."""
    return bool(model) and model.startswith("<")  # type: ignore[union-attr]


def event_kind(ev: dict) -> str:
    """``type`` or ``type/subtype`` (for system events), as listed per CLI version."""
    kind = ev.get("type") if isinstance(ev.get("type"), str) else "?"
    return f"{kind}/{ev['subtype']}" if kind == "system" and isinstance(
        ev.get("subtype"), str) else kind


def knows(kind: str) -> bool:
    """True if the parser handles (or knowingly skips) events of this kind."""
    base, _, sub = kind.partition("/")
    if base == "system":
        return sub in SYSTEM_KNOWN
    return base in ClaudeStream.HANDLERS or base in ClaudeStream.IGNORED


def _usage(usage: dict, keys: tuple[str, ...]) -> tuple[int, ...]:
    return tuple(int(num(usage.get(k))) for k in keys)


def _result_text(ev: dict) -> str:
    errors = [e for e in as_(ev.get("errors"), list, []) if isinstance(e, str)]
    # The result text often repeats the last error: each distinct text once.
    return " ".join(dict.fromkeys(t for t in [as_(ev.get("result"), str, ""), *errors] if t))
