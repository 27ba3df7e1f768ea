"""The OpenAI Responses API dialect (what ``codex exec`` speaks).

Contract: :func:`parse` turns a ``POST /v1/responses`` body (+ headers) into a
:class:`~tests.fakeapi.behaviours.Conversation`; :func:`stream` yields the SSE
frames of the answer (``response.created`` ... ``response.completed``, or
``response.failed``, or :data:`~tests.fakeapi.sse.HANG`); :func:`response` is
the non-streaming body; :func:`error` is an HTTP error body.
The shell tool is the first one the request offers of ``exec_command``
(``cmd``, ``yield_time_ms``), ``shell_command`` (``command`` string) and
``shell`` (``command`` argv); with none of them the action degrades to text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from typing import Any

from . import sse
from .behaviours import Action, Conversation, Fail, Hang, Shell, StreamError, Usage
from .markers import Marker, last_marker

# kind -> (HTTP error "type", error "code"); codes are the ones Codex reacts to.
ERRORS = {
    "rate_limit": ("requests", "rate_limit_exceeded"),
    "quota": ("insufficient_quota", "insufficient_quota"),
    "usage_limit": ("usage_limit_reached", "usage_limit_reached"),
    "overloaded": ("server_error", "server_is_overloaded"),
    "auth": ("invalid_request_error", "invalid_api_key"),
    "invalid_request": ("invalid_request_error", "invalid_request"),
    "server": ("server_error", "server_error"),
    "not_found": ("invalid_request_error", "not_found"),
}
SHELL_TOOLS = ("exec_command", "shell_command", "shell")
CREATED_AT = 1_767_225_600  # 2026-01-01T00:00:00Z, fixed so output is reproducible


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [c.get("text", "") for c in content or [] if isinstance(c, dict) and "text" in c]


def _output_text(output: Any) -> str:
    return output if isinstance(output, str) else "\n".join(_texts(output))


def _tool_names(tools: Any) -> frozenset[str]:
    names: set[str] = set()
    for t in tools or []:
        if isinstance(t, dict):
            names.add(t.get("name") or t.get("type", ""))
            names.update(_tool_names(t.get("tools")))
    return frozenset(names)


def _key(body: Mapping[str, Any], headers: Mapping[str, str], items: list[dict[str, Any]]) -> str:
    for h in ("session-id", "session_id", "thread-id", "conversation_id"):
        if headers.get(h):
            return headers[h]
    if body.get("prompt_cache_key"):
        return str(body["prompt_cache_key"])
    first = next(
        (t for i in items if i.get("role") == "user" for t in _texts(i.get("content"))), ""
    )
    return "h:" + hashlib.sha1(first.encode()).hexdigest()[:16]


def parse(body: Mapping[str, Any], headers: Mapping[str, str]) -> Conversation:
    """Reduce a Responses API request to a Conversation (headers: lower-case keys)."""
    raw = body.get("input", [])
    items = (
        [{"type": "message", "role": "user", "content": raw}]
        if isinstance(raw, str)
        else [i for i in raw if isinstance(i, dict)]
    )
    marker: Marker | None = None
    start = 0
    for i in range(len(items) - 1, -1, -1):
        if items[i].get("role") == "user":
            marker = last_marker(_texts(items[i].get("content")))
            if marker:
                start = i
                break
    if marker is None and isinstance(body.get("instructions"), str):
        marker = last_marker([body["instructions"]])
    outputs = [
        _output_text(i.get("output"))
        for i in items[start:]
        if str(i.get("type", "")).endswith("_call_output")
    ]
    tools = _tool_names(body.get("tools"))
    return Conversation(
        dialect="openai",
        model=str(body.get("model", "")),
        key=_key(body, headers, items),
        marker=marker,
        steps=len(outputs),
        n_messages=len(items),
        tool_names=tools,
        last_tool_output=outputs[-1] if outputs else None,
        side=marker is None and not tools,
        stream=bool(body.get("stream")),
    )


def _ids(conv: Conversation) -> tuple[str, str, str]:
    h = hashlib.sha1(f"{conv.key}:{conv.n_messages}".encode()).hexdigest()
    return f"resp_fake{h[:16]}", f"msg_fake{h[16:32]}", f"call_fake{h[24:40]}"


def _shell_call(conv: Conversation, action: Shell) -> tuple[str, dict[str, Any]] | None:
    name = next((n for n in SHELL_TOOLS if n in conv.tool_names), None)
    if name == "exec_command":
        if action.background:
            wait = 250
        elif action.timeout_ms is not None:
            wait = 30_000
        else:
            wait = 10_000
        return name, {"cmd": action.command, "yield_time_ms": wait}
    if name == "shell_command":
        args: dict[str, Any] = {"command": action.command}
    elif name == "shell":
        args = {"command": ["bash", "-lc", action.command]}
    else:
        return None
    if action.timeout_ms is not None:
        args["timeout_ms"] = action.timeout_ms
    return name, args


def _items(conv: Conversation, action: Action) -> list[dict[str, Any]]:
    """The completed output items for a Say or Shell action."""
    _, msg_id, call_id = _ids(conv)
    text = getattr(action, "text", "")
    call = _shell_call(conv, action) if isinstance(action, Shell) else None
    if isinstance(action, Shell) and call is None:
        offered = ", ".join(SHELL_TOOLS)
        text = f"fakeapi: the request offers none of {offered}; would have run: {action.command}"
    items: list[dict[str, Any]] = []
    if text:
        items.append(
            {
                "id": msg_id,
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        )
    if call:
        items.append(
            {
                "id": "fc_" + call_id[5:],
                "type": "function_call",
                "status": "completed",
                "call_id": call_id,
                "name": call[0],
                "arguments": sse.dumps(call[1]),
            }
        )
    return items


def _usage(u: Usage) -> dict[str, Any]:
    return {
        "input_tokens": u.input_tokens,
        "input_tokens_details": {"cached_tokens": u.cached_tokens},
        "output_tokens": u.output_tokens,
        "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
        "total_tokens": u.input_tokens + u.output_tokens,
    }


def _response(
    conv: Conversation,
    status: str,
    output: list[dict[str, Any]],
    usage: Usage | None,
    err: dict[str, Any] | None = None,
) -> dict[str, Any]:
    resp_id, _, _ = _ids(conv)
    return {
        "id": resp_id,
        "object": "response",
        "created_at": CREATED_AT,
        "status": status,
        "model": conv.model,
        "output": output,
        "error": err,
        "usage": _usage(usage) if usage else None,
    }


def response(conv: Conversation, action: Action, usage: Usage) -> dict[str, Any]:
    """Non-streaming response body for a Say or Shell action."""
    return _response(conv, "completed", _items(conv, action), usage)


def stream(conv: Conversation, action: Action, usage: Usage) -> Iterator[bytes | object]:
    """SSE frames for a Say, Shell, StreamError or Hang(first_delta=True) action."""
    seq = iter(range(1_000_000))

    def ev(name: str, **data: Any) -> bytes:
        return sse.event(name, {"type": name, "sequence_number": next(seq), **data})

    yield ev("response.created", response=_response(conv, "in_progress", [], None))
    yield ev("response.in_progress", response=_response(conv, "in_progress", [], None))
    if isinstance(action, (StreamError, Hang)):
        _, msg_id, _ = _ids(conv)
        text = action.text if isinstance(action, StreamError) else "Thinking about it"
        yield ev(
            "response.output_item.added",
            output_index=0,
            item={
                "id": msg_id,
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            },
        )
        yield ev(
            "response.content_part.added",
            item_id=msg_id,
            output_index=0,
            content_index=0,
            part={"type": "output_text", "text": "", "annotations": []},
        )
        yield ev(
            "response.output_text.delta",
            item_id=msg_id,
            output_index=0,
            content_index=0,
            delta=text,
        )
        if isinstance(action, Hang):
            yield sse.HANG
            return
        code = ERRORS.get(action.kind, ERRORS["server"])[1]
        yield ev(
            "response.failed",
            response=_response(conv, "failed", [], None, {"code": code, "message": action.message}),
        )
        return
    items = _items(conv, action)
    for index, item in enumerate(items):
        if item["type"] == "message":
            text = item["content"][0]["text"]
            yield ev(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "content": []},
            )
            yield ev(
                "response.content_part.added",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": []},
            )
            size = max(1, -(-len(text) // 3))
            for i in range(0, len(text), size):
                yield ev(
                    "response.output_text.delta",
                    item_id=item["id"],
                    output_index=index,
                    content_index=0,
                    delta=text[i : i + size],
                )
            yield ev(
                "response.output_text.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                text=text,
            )
            yield ev(
                "response.content_part.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=item["content"][0],
            )
        else:
            yield ev(
                "response.output_item.added",
                output_index=index,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            yield ev(
                "response.function_call_arguments.delta",
                item_id=item["id"],
                output_index=index,
                delta=item["arguments"],
            )
            yield ev(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                arguments=item["arguments"],
            )
        yield ev("response.output_item.done", output_index=index, item=item)
    yield ev("response.completed", response=_response(conv, "completed", items, usage))


def error(kind: str, message: str) -> dict[str, Any]:
    """An OpenAI error body (``{"error":{"message","type","param","code"}}``)."""
    err_type, code = ERRORS.get(kind, ERRORS["server"])
    return {"error": {"message": message, "type": err_type, "param": None, "code": code}}


def error_headers(action: Fail) -> dict[str, str]:
    """Extra headers of an error answer (none for this dialect)."""
    return {}


def error_body(action: Fail) -> dict[str, Any]:
    """The error body of a Fail action (``usage_limit`` adds ``resets_at``)."""
    body = error(action.kind, action.message)
    if action.resets_at is not None:
        body["error"]["resets_at"] = action.resets_at
    return body


def models(model_ids: list[str]) -> dict[str, Any]:
    """``GET /v1/models`` in the OpenAI list shape."""
    return {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": CREATED_AT, "owned_by": "fakeapi"}
            for m in model_ids
        ],
    }
