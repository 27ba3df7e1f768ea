"""The Anthropic Messages API dialect (what ``claude`` speaks).

Contract: :func:`parse` turns a ``POST /v1/messages`` body (+ headers) into a
:class:`~tests.fakeapi.behaviours.Conversation`; :func:`stream` yields the SSE
frames of the answer for an action (``message_start`` ... ``message_stop``,
or an ``error`` event, or :data:`~tests.fakeapi.sse.HANG`); :func:`message`
is the non-streaming JSON body; :func:`error` is an HTTP error body.
Side requests: a tool-less request whose system prompt mentions a title
(Claude's session-title request, even though it quotes the user's prompt and
so its marker), or a marker-less request with no tools or a haiku model.
The shell tool is ``Bash`` (``command``, ``description``, ``timeout`` in ms,
``run_in_background``); if the request offers no ``Bash`` tool the action
degrades to a text answer saying so.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from typing import Any

from . import sse
from .behaviours import Action, Conversation, Fail, Hang, Say, Shell, StreamError, Usage
from .markers import Marker, last_marker

ERROR_TYPES = {
    "rate_limit": "rate_limit_error",
    "quota": "rate_limit_error",
    "usage_limit": "rate_limit_error",
    "overloaded": "overloaded_error",
    "auth": "authentication_error",
    "invalid_request": "invalid_request_error",
    "server": "api_error",
    "not_found": "not_found_error",
}
SHELL_TOOL = "Bash"


def _texts(content: Any) -> list[str]:
    """User-authored text of one message's content (tool results excluded)."""
    if isinstance(content, str):
        return [content]
    return [
        b.get("text", "") for b in content or [] if isinstance(b, dict) and b.get("type") == "text"
    ]


def _tool_results(content: Any) -> list[str]:
    out = []
    if isinstance(content, list):
        for b in content:
            if isinstance(b, dict) and b.get("type") == "tool_result":
                c = b.get("content")
                out.append(c if isinstance(c, str) else "\n".join(_texts(c)))
    return out


def _system_texts(system: Any) -> list[str]:
    return _texts(system) if system else []


def _session_key(body: Mapping[str, Any], headers: Mapping[str, str]) -> str:
    sid = headers.get("x-claude-code-session-id")
    if sid:
        return sid
    user_id = (body.get("metadata") or {}).get("user_id") or ""
    try:
        sid = json.loads(user_id).get("session_id")
    except (ValueError, AttributeError):
        sid = None
    if sid:
        return sid
    first = next((t for m in body.get("messages", []) for t in _texts(m.get("content"))), "")
    return "h:" + hashlib.sha1(first.encode()).hexdigest()[:16]


def parse(body: Mapping[str, Any], headers: Mapping[str, str]) -> Conversation:
    """Reduce a Messages API request to a Conversation (headers: lower-case keys)."""
    messages = [m for m in body.get("messages", []) if isinstance(m, dict)]
    marker: Marker | None = None
    start = 0
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            marker = last_marker(_texts(messages[i].get("content")))
            if marker:
                start = i
                break
    if marker is None:
        marker = last_marker(_system_texts(body.get("system")))
    results = [
        r
        for m in messages[start:]
        if m.get("role") == "user"
        for r in _tool_results(m.get("content"))
    ]
    tools = frozenset(t.get("name", "") for t in body.get("tools") or [] if isinstance(t, dict))
    model = str(body.get("model", ""))
    title = not tools and "title" in " ".join(_system_texts(body.get("system"))).lower()
    return Conversation(
        dialect="anthropic",
        model=model,
        key=_session_key(body, headers),
        marker=marker,
        steps=len(results),
        n_messages=len(messages),
        tool_names=tools,
        last_tool_output=results[-1] if results else None,
        side=title or (marker is None and (not tools or "haiku" in model)),
        side_reply='{"title": "Fake session title"}' if title else "Fake side answer",
        stream=bool(body.get("stream")),
    )


def _ids(conv: Conversation) -> tuple[str, str]:
    h = hashlib.sha1(f"{conv.key}:{conv.n_messages}".encode()).hexdigest()
    return f"msg_fake{h[:20]}", f"toolu_fake{h[20:40]}"


def _resolve(conv: Conversation, action: Action) -> Action:
    if isinstance(action, Shell) and SHELL_TOOL not in conv.tool_names:
        return Say(
            f"fakeapi: the request offers no {SHELL_TOOL} tool; would have run: {action.command}"
        )
    return action


def _tool_input(action: Shell) -> dict[str, Any]:
    inp: dict[str, Any] = {"command": action.command, "description": "fakeapi scripted command"}
    if action.timeout_ms is not None:
        inp["timeout"] = action.timeout_ms
    if action.background:
        inp["run_in_background"] = True
    return inp


def _usage(u: Usage, output: int | None = None) -> dict[str, int]:
    return {
        "input_tokens": u.input_tokens - u.cached_tokens - u.cache_creation_tokens,
        "cache_creation_input_tokens": u.cache_creation_tokens,
        "cache_read_input_tokens": u.cached_tokens,
        "output_tokens": u.output_tokens if output is None else output,
    }


def _blocks(conv: Conversation, action: Action) -> list[dict[str, Any]]:
    _, tool_id = _ids(conv)
    if isinstance(action, Say):
        return [{"type": "text", "text": action.text}]
    if isinstance(action, Shell):
        blocks: list[dict[str, Any]] = (
            [{"type": "text", "text": action.text}] if action.text else []
        )
        return blocks + [
            {"type": "tool_use", "id": tool_id, "name": SHELL_TOOL, "input": _tool_input(action)}
        ]
    return [{"type": "text", "text": getattr(action, "text", "")}]


def _chunks(text: str, n: int = 3) -> list[str]:
    size = max(1, -(-len(text) // n))
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def message(conv: Conversation, action: Action, usage: Usage) -> dict[str, Any]:
    """Non-streaming response body for a Say or Shell action."""
    action = _resolve(conv, action)
    msg_id, _ = _ids(conv)
    return {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": conv.model,
        "content": _blocks(conv, action),
        "stop_reason": "tool_use" if isinstance(action, Shell) else "end_turn",
        "stop_sequence": None,
        "usage": _usage(usage),
    }


def stream(conv: Conversation, action: Action, usage: Usage) -> Iterator[bytes | object]:
    """SSE frames for a Say, Shell, StreamError or Hang(first_delta=True) action."""
    action = _resolve(conv, action)
    msg_id, _ = _ids(conv)
    start = {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": conv.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": _usage(usage, output=1),
    }
    yield sse.event("message_start", {"type": "message_start", "message": start})
    yield sse.event("ping", {"type": "ping"})
    if isinstance(action, (StreamError, Hang)):
        text = action.text if isinstance(action, StreamError) else "Thinking about it"
        yield sse.event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        yield sse.event(
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": text},
            },
        )
        if isinstance(action, Hang):
            yield sse.HANG
            return
        yield sse.event("error", error(action.kind, action.message))
        return
    for index, block in enumerate(_blocks(conv, action)):
        if block["type"] == "text":
            yield sse.event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": index,
                    "content_block": {"type": "text", "text": ""},
                },
            )
            for piece in _chunks(block["text"]):
                yield sse.event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": piece},
                    },
                )
        else:
            empty = {**block, "input": {}}
            yield sse.event(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": empty},
            )
            for piece in _chunks(sse.dumps(block["input"]), 2):
                yield sse.event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    },
                )
        yield sse.event("content_block_stop", {"type": "content_block_stop", "index": index})
    stop = "tool_use" if isinstance(action, Shell) else "end_turn"
    yield sse.event(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": usage.output_tokens},
        },
    )
    yield sse.event("message_stop", {"type": "message_stop"})


def error(kind: str, message: str) -> dict[str, Any]:
    """An Anthropic error body (``{"type":"error","error":{...}}``)."""
    return {
        "type": "error",
        "error": {"type": ERROR_TYPES.get(kind, "api_error"), "message": message},
    }


def error_headers(action: Fail) -> dict[str, str]:
    """Extra headers of an error answer: the subscription limit headers for ``usage_limit``."""
    if action.kind != "usage_limit":
        return {}
    return {
        "anthropic-ratelimit-unified-status": "rejected",
        "anthropic-ratelimit-unified-reset": str(action.resets_at),
        "anthropic-ratelimit-unified-representative-claim": "five_hour",
        "anthropic-ratelimit-unified-overage-status": "rejected",
        "anthropic-ratelimit-unified-overage-disabled-reason": "org_level_disabled",
    }


def count_tokens(body: Mapping[str, Any]) -> dict[str, int]:
    """``POST /v1/messages/count_tokens``: a size-based estimate (bytes / 4)."""
    return {"input_tokens": max(1, len(sse.dumps(body)) // 4)}


def models(model_ids: list[str]) -> dict[str, Any]:
    """``GET /v1/models`` in the Anthropic shape."""
    data = [
        {"type": "model", "id": m, "display_name": m, "created_at": "2026-01-01T00:00:00Z"}
        for m in model_ids
    ]
    return {
        "data": data,
        "has_more": False,
        "first_id": model_ids[0] if model_ids else None,
        "last_id": model_ids[-1] if model_ids else None,
    }
