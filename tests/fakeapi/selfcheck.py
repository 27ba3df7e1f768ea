"""Self-checks of the fake API (stdlib HTTP clients only, no CLI needed).

Run: ``python -m tests.fakeapi.selfcheck`` (prints ``N passed, M failed``).
The checks are plain ``test_*`` functions, so pytest can collect them once a
test module re-exports them, e.g. ``tests/test_fakeapi.py`` holding
``from tests.fakeapi.selfcheck import *  # noqa: F403``.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import FakeModelAPI
from .markers import find_markers

BASH_TOOL = [{"name": "Bash", "input_schema": {"type": "object"}}]
CODEX_TOOLS = [
    {"type": "function", "name": "exec_command", "parameters": {}},
    {"type": "function", "name": "write_stdin", "parameters": {}},
]


def _post(
    api: FakeModelAPI,
    path: str,
    body: dict[str, Any],
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=timeout)
    try:
        conn.request(
            "POST", path, json.dumps(body), {"content-type": "application/json", **(headers or {})}
        )
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _get(api: FakeModelAPI, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Parse an SSE body into (event, data) pairs."""
    out = []
    for frame in raw.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.splitlines() if ": " in line)
        if "event" in lines:
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def _claude(
    prompt: str,
    messages: list[dict[str, Any]] | None = None,
    stream: bool = True,
    tools: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    msgs = [{"role": "user", "content": [{"type": "text", "text": prompt}]}, *(messages or [])]
    return {
        "model": "claude-test",
        "max_tokens": 1000,
        "stream": stream,
        "messages": msgs,
        "tools": BASH_TOOL if tools is None else tools,
        **extra,
    }


def _codex(
    prompt: str,
    items: list[dict[str, Any]] | None = None,
    tools: list[dict[str, Any]] | None = None,
    stream: bool = True,
) -> dict[str, Any]:
    inp = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": prompt}]},
        *(items or []),
    ]
    return {
        "model": "gpt-test",
        "stream": stream,
        "input": inp,
        "tools": CODEX_TOOLS if tools is None else tools,
    }


def _tool_round(tool_id: str, output: str) -> list[dict[str, Any]]:
    return [
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": tool_id, "name": "Bash", "input": {}}],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": output}],
        },
    ]


def _stream_text(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(d["delta"].get("text", "") for e, d in events if e == "content_block_delta")


# -- markers ------------------------------------------------------------------


def test_markers_parse_params_and_quotes() -> None:
    ms = find_markers(
        "x [[fake:rate_429 retries=2 after=1.5]] y "
        '[[fake:bash cmd="echo a b"]] [[fake:Bad]] [[nope]]'
    )
    assert [m.name for m in ms] == ["rate_429", "bash"]
    assert ms[0].get_int("retries", 0) == 2 and ms[0].get_float("after", 0) == 1.5
    assert ms[1].get_str("cmd", "") == "echo a b"


# -- Anthropic ------------------------------------------------------------------


def test_anthropic_text_stream_shape_and_usage() -> None:
    with FakeModelAPI() as api:
        status, headers, raw = _post(
            api, "/v1/messages?beta=true", _claude('hi [[fake:text text="Hi there"]]')
        )
        assert status == 200 and headers["content-type"].startswith("text/event-stream")
        ev = _events(raw)
        names = [e for e, _ in ev]
        assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
        assert _stream_text(ev) == "Hi there"
        assert ev[-2][1]["delta"]["stop_reason"] == "end_turn"
        usage = ev[0][1]["message"]["usage"]
        assert usage["input_tokens"] + usage["cache_creation_input_tokens"] == 3400
        rec = api.requests[-1]
        assert (rec.behaviour, rec.outcome, rec.dialect, rec.side) == (
            "text",
            "text",
            "anthropic",
            False,
        )


def test_anthropic_write_commit_steps_follow_tool_results() -> None:
    with FakeModelAPI() as api:
        prompt = "go [[fake:write_commit file=a.txt]]"
        ev = _events(_post(api, "/v1/messages", _claude(prompt))[2])
        start = [d["content_block"] for e, d in ev if e == "content_block_start"]
        assert start[-1]["type"] == "tool_use" and start[-1]["name"] == "Bash"
        args = json.loads(
            "".join(
                d["delta"]["partial_json"]
                for e, d in ev
                if e == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
            )
        )
        assert "a.txt" in args["command"] and ev[-2][1]["delta"]["stop_reason"] == "tool_use"
        ev2 = _events(_post(api, "/v1/messages", _claude(prompt, _tool_round("t1", "")))[2])
        args2 = "".join(
            d["delta"].get("partial_json", "") for e, d in ev2 if e == "content_block_delta"
        )
        assert "git commit" in args2
        ev3 = _events(
            _post(
                api,
                "/v1/messages",
                _claude(prompt, _tool_round("t1", "") + _tool_round("t2", "abc123 fake")),
            )[2]
        )
        assert "abc123" in _stream_text(ev3) and ev3[-2][1]["delta"]["stop_reason"] == "end_turn"
        assert [r.steps for r in api.requests] == [0, 1, 2]


def test_anthropic_non_streaming_message() -> None:
    with FakeModelAPI() as api:
        status, _, raw = _post(api, "/v1/messages", _claude("[[fake:bash]]", stream=False))
        body = json.loads(raw)
        assert status == 200 and body["stop_reason"] == "tool_use"
        assert body["content"][-1]["input"]["command"] == "echo hello from fakeapi"


def test_anthropic_no_bash_tool_degrades_to_text() -> None:
    with FakeModelAPI() as api:
        ev = _events(
            _post(api, "/v1/messages", _claude("[[fake:bash]]", tools=[{"name": "Read"}]))[2]
        )
        assert "offers no Bash tool" in _stream_text(ev)


def test_rate_429_retry_after_then_success() -> None:
    with FakeModelAPI() as api:
        body = _claude("[[fake:rate_429 retries=2 after=3]]")
        results = [_post(api, "/v1/messages", body) for _ in range(3)]
        assert [s for s, _, _ in results] == [429, 429, 200]
        assert results[0][1]["retry-after"] == "3"
        assert json.loads(results[0][2])["error"]["type"] == "rate_limit_error"
        assert [r.attempt for r in api.requests] == [0, 1, 2]


def test_overload_529_always_and_counted() -> None:
    with FakeModelAPI() as api:
        assert {
            _post(api, "/v1/messages", _claude("[[fake:overload_529]]"))[0] for _ in range(4)
        } == {529}
        statuses = [
            _post(api, "/v1/messages", _claude("[[fake:overload_529 count=1]]"))[0]
            for _ in range(2)
        ]
        assert statuses == [529, 200]


def test_auth_401_and_bad_400_bodies() -> None:
    with FakeModelAPI() as api:
        s, _, raw = _post(api, "/v1/messages", _claude("[[fake:auth_401]]"))
        assert s == 401 and json.loads(raw)["error"]["type"] == "authentication_error"
        s, _, raw = _post(api, "/v1/messages", _claude("[[fake:bad_400]]"))
        assert s == 400 and json.loads(raw)["error"]["type"] == "invalid_request_error"


def test_sse_error_mid_stream_and_non_streaming_fallback() -> None:
    with FakeModelAPI() as api:
        s, _, raw = _post(api, "/v1/messages", _claude("[[fake:sse_error]]"))
        ev = _events(raw)
        assert (
            s == 200 and ev[-1][0] == "error" and ev[-1][1]["error"]["type"] == "overloaded_error"
        )
        assert "content_block_delta" in [e for e, _ in ev] and "message_stop" not in [
            e for e, _ in ev
        ]
        s, _, _ = _post(api, "/v1/messages", _claude("[[fake:sse_error]]", stream=False))
        assert s == 529


def _assert_hangs(api: FakeModelAPI, path: str, body: dict[str, Any], first_delta: bool) -> None:
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=1.0)
    data = json.dumps(body).encode()
    sock.sendall(
        b"POST %s HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (path.encode(), len(data), data)
    )
    got = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
    except TimeoutError:
        pass
    assert (b"200 OK" in got) == first_delta, got[:200]
    assert (b"delta" in got) == first_delta
    t0 = time.monotonic()
    api.stop()
    assert time.monotonic() - t0 < 5, "stop() must release hanging requests"
    sock.settimeout(5)
    try:
        sock.recv(65536)  # the server closed it: returns (or resets) at once instead of blocking
    except ConnectionResetError:
        pass
    sock.close()


def test_hang_after_first_delta_and_no_response_are_released_by_stop() -> None:
    with FakeModelAPI() as api:
        _assert_hangs(api, "/v1/messages", _claude("[[fake:hang_after_first_delta]]"), True)
        assert api.requests[-1].outcome == "hang_after_first_delta"
    with FakeModelAPI() as api:
        _assert_hangs(api, "/v1/responses", _codex("[[fake:no_response]]"), False)
        assert api.requests[-1].outcome == "no_response"


def test_title_side_request_answers_json() -> None:
    with FakeModelAPI() as api:
        body = _claude(
            "<session>\n[[fake:write_commit]]\n</session>",
            tools=[],
            system=[{"type": "text", "text": "Generate a concise, sentence-case title"}],
        )
        ev = _events(_post(api, "/v1/messages", body)[2])
        assert json.loads(_stream_text(ev)) == {"title": "Fake session title"}
        assert len(api.side_requests) == 1 and api.main_requests == []


def test_routes_count_tokens_models_root_and_unknown() -> None:
    with FakeModelAPI() as api:
        s, _, raw = _post(api, "/v1/messages/count_tokens", _claude("x"))
        assert s == 200 and json.loads(raw)["input_tokens"] > 0
        s, body = _get(api, "/v1/models", {"anthropic-version": "2023-06-01"})
        assert s == 200 and body["data"][0]["type"] == "model"
        s, body = _get(api, "/v1/models")
        assert s == 200 and body["object"] == "list"
        assert _get(api, "/")[0] == 200
        s, body = _get(api, "/v1/nowhere")
        assert s == 404 and "no route" in body["error"]["message"]
        assert [r.behaviour for r in api.requests] == [
            "count_tokens",
            "models",
            "models",
            "root",
            "unknown_path",
        ]


def test_log_file_has_one_line_per_request() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "log.jsonl"
        with FakeModelAPI(log_path=log) as api:
            _post(api, "/v1/messages", _claude("[[fake:text]]"))
            _get(api, "/nope")
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        assert [d["behaviour"] for d in lines] == ["text", "unknown_path"]


def test_answers_are_deterministic() -> None:
    with FakeModelAPI() as api:
        a = _post(api, "/v1/responses", _codex("[[fake:bash]]"))[2]
        b = _post(api, "/v1/responses", _codex("[[fake:bash]]"))[2]
        assert a == b


def test_usage_limit_headers_and_body() -> None:
    with FakeModelAPI() as api:
        s, headers, _ = _post(api, "/v1/messages", _claude("[[fake:usage_limit reset=1900000000]]"))
        assert s == 429 and headers["anthropic-ratelimit-unified-status"] == "rejected"
        assert headers["anthropic-ratelimit-unified-reset"] == "1900000000"
        s, _, raw = _post(api, "/v1/responses", _codex("[[fake:usage_limit reset=1900000000]]"))
        err = json.loads(raw)["error"]
        assert s == 429 and err["type"] == "usage_limit_reached" and err["resets_at"] == 1900000000


# -- OpenAI Responses -------------------------------------------------------------


def test_openai_text_stream_shape_and_usage() -> None:
    with FakeModelAPI() as api:
        s, _, raw = _post(api, "/v1/responses", _codex('[[fake:text text="Yo"]]'))
        ev = _events(raw)
        names = [e for e, _ in ev]
        assert s == 200 and names[0] == "response.created" and names[-1] == "response.completed"
        assert "".join(d["delta"] for e, d in ev if e == "response.output_text.delta") == "Yo"
        usage = ev[-1][1]["response"]["usage"]
        assert usage["input_tokens_details"]["cached_tokens"] == 0
        assert usage["output_tokens_details"]["reasoning_tokens"] == 8
        assert [d["sequence_number"] for _, d in ev] == list(range(len(ev)))


def test_openai_function_call_for_each_shell_tool() -> None:
    with FakeModelAPI() as api:
        for tools, name, key in (
            (CODEX_TOOLS, "exec_command", "cmd"),
            ([{"type": "function", "name": "shell"}], "shell", "command"),
        ):
            ev = _events(
                _post(api, "/v1/responses", _codex('[[fake:bash cmd="ls"]]', tools=tools))[2]
            )
            done = [d["item"] for e, d in ev if e == "response.output_item.done"]
            assert done[-1]["type"] == "function_call" and done[-1]["name"] == name
            assert json.loads(done[-1]["arguments"])[key] in ("ls", ["bash", "-lc", "ls"])
        out = [
            {"type": "function_call", "call_id": "c1", "name": "exec_command", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "file.txt"},
        ]
        ev = _events(_post(api, "/v1/responses", _codex('[[fake:bash cmd="ls"]]', items=out))[2])
        assert "file.txt" in "".join(d["delta"] for e, d in ev if e == "response.output_text.delta")


def test_openai_failures() -> None:
    with FakeModelAPI() as api:
        ev = _events(_post(api, "/v1/responses", _codex("[[fake:sse_error]]"))[2])
        assert (
            ev[-1][0] == "response.failed"
            and ev[-1][1]["response"]["error"]["code"] == "server_is_overloaded"
        )
        s, _, raw = _post(api, "/v1/responses", _codex("[[fake:quota]]"))
        assert s == 429 and json.loads(raw)["error"]["code"] == "insufficient_quota"
        s, _, raw = _post(api, "/v1/responses", _codex("[[fake:auth_401]]"))
        assert s == 401 and json.loads(raw)["error"]["code"] == "invalid_api_key"


__all__ = [name for name in list(globals()) if name.startswith("test_")]


def main() -> int:
    tests: list[tuple[str, Callable[[], None]]] = [(n, globals()[n]) for n in __all__]
    failed = 0
    for name, fn in tests:
        t0 = time.monotonic()
        try:
            fn()
        except Exception:  # noqa: BLE001 - report every failure and go on
            failed += 1
            print(f"FAIL {name}\n{traceback.format_exc()}")
        else:
            print(f"ok   {name} ({time.monotonic() - t0:.2f}s)")
    print(f"{len(tests) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
