"""harness.agents.claude and .session: Claude's stream-json parsing, metrics, rate-limit
detection and classify(), on hand-written streams (captured ones: test_cli_events.py)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.agents.claude import ClaudeStream as StreamState
from harness.agents.session import ERRORS_CAP, REASONS, Metrics, classify, parse_reset

DATA = Path(__file__).parent / "data"
NOW = 1_763_790_000.0  # 2025-11-22 05:40 UTC, a fixed clock for reset-time parsing


def lines(name: str) -> list[bytes]:
    return (DATA / name).read_bytes().splitlines()


def fed(*items: bytes | str | dict) -> StreamState:
    state = StreamState(clock=lambda: NOW)
    for item in items:
        state.feed(json.dumps(item) if isinstance(item, dict) else item)
    return state


def result(**fields) -> dict:
    return {"type": "result", "subtype": "success", "is_error": False, **fields}


def ended(state: StreamState, exit_code: int | None = 0, signal: int | None = None, *,
          timed_out: bool = False, stalled: bool = False, killed_after_result: bool = False):
    return classify(exit_code, signal, state, timed_out=timed_out, stalled=stalled,
                    killed_after_result=killed_after_result)


# --- the recorded-shape success stream ------------------------------------------------


def test_success_stream_gives_exact_metrics():
    state = fed(*lines("claude_stream_success.jsonl"))
    assert state.metrics.as_dict() == {
        "input_tokens": 22, "output_tokens": 1311, "cache_creation_tokens": 8227,
        "cache_read_tokens": 83548, "cost_usd": 0.0873421, "turns": 9,
        "tool_calls": {"Read": 1, "Bash": 2, "Edit": 1}, "tool_errors": 1,
        "errors": ["Bash error: Exit code 1 F. FAILED tests/test_parse.py::test_empty - "
                   "AssertionError: assert [''] == [] 1 failed, 1 passed in 0.04s"],
        "duration_s": 48.213, "model": "claude-sonnet-4-5-20250929",
        "events": 13, "unknown_events": 0, "non_json_lines": 0, "truncated_bytes": 0,
        "partial": False,
    }
    assert state.session_id == "8f3c2a71-5d4e-4b9a-9c0e-2f6a1d7b3e55"
    assert state.turns == 9 and state.last_tool == "Bash" and state.activity == "finished"
    assert state.result is not None and not state.result_is_error
    assert state.rate_limit is None and not state.budget_exceeded
    assert ended(state) == ("succeeded", "9 turns, 1333 tokens, $0.0873")


def test_killed_session_keeps_tokens_summed_per_message_without_double_counting():
    state = fed(*lines("claude_stream_success.jsonl")[:-1])  # everything but the result
    m = state.metrics
    # msg_01QfA7 spans two lines with the same usage; it is counted once.
    assert (m.input_tokens, m.output_tokens, m.cache_creation_tokens, m.cache_read_tokens) \
        == (22, 106, 8227, 83548)
    assert m.turns == 5 and m.cost_usd == 0.0 and state.result is None
    assert ended(state, None, 9) == ("crashed", "agent killed by signal 9 before its result")


def test_the_result_replaces_the_running_sum_and_later_usage_is_ignored():
    stream = lines("claude_stream_success.jsonl")
    state = fed(*stream, stream[1])  # an assistant line replayed after the result
    assert (state.metrics.input_tokens, state.metrics.output_tokens) == (22, 1311)
    assert state.metrics.turns == 9


def test_a_later_line_of_the_same_message_replaces_its_usage():
    def msg(output):
        return {"type": "assistant", "message": {"id": "m1", "content": [],
                "usage": {"input_tokens": 10, "output_tokens": output}}}
    state = fed(msg(1), msg(40))
    assert (state.metrics.input_tokens, state.metrics.output_tokens, state.turns) == (10, 40, 1)


# --- activity -----------------------------------------------------------------------------


def block(**b) -> dict:
    return {"type": "assistant", "message": {"id": "m", "content": [b]}}


@pytest.mark.parametrize("b, activity", [
    ({"type": "tool_use", "name": "Bash", "input": {"command": "pytest -q"}},
     "tool Bash: pytest -q"),
    ({"type": "tool_use", "name": "Read", "input": {"file_path": "src/a.py"}},
     "tool Read: src/a.py"),
    ({"type": "tool_use", "name": "TodoWrite", "input": {"todos": []}}, "tool TodoWrite"),
    ({"type": "thinking", "thinking": "hmm"}, "thinking"),
    ({"type": "text", "text": "Done."}, "writing"),
])
def test_activity_says_what_the_agent_does_now(b, activity):
    assert fed(block(**b)).activity == activity


def test_activity_is_one_line_of_at_most_80_chars():
    state = fed(block(type="tool_use", name="Bash", input={"command": "echo x\n" * 40}))
    assert len(state.activity) <= 80 and "\n" not in state.activity
    assert state.activity.startswith("tool Bash: echo x echo x") and state.activity.endswith("…")


# --- garbage never raises -----------------------------------------------------------------


def test_garbage_lines_and_unknown_events_are_counted():
    state = fed(b"", b"   ", b"not json", b"\xff\xfe{", "{\"type\":", "[1, 2]", "42", "null",
                {"type": "a_future_event"}, {"no_type": 1}, {"type": ["list"]},
                {"type": "stream_event", "event": {}},
                {"type": "assistant", "message": 5}, {"type": "user", "message": {"content": "x"}},
                {"type": "result", "usage": "x", "num_turns": "9", "total_cost_usd": True})
    m = state.metrics
    assert (m.non_json_lines, m.events, m.unknown_events) == (3, 10, 6)
    assert state.result is not None and m.turns == 0 and m.cost_usd == 0.0


def test_feed_returns_the_event_object_or_none():
    state = StreamState()
    assert state.feed('{"type": "mystery", "x": 1}') == {"type": "mystery", "x": 1}
    assert state.feed("[1]") is None and state.feed("oops") is None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_arbitrary_bytes_never_raise(raw_lines):
    state = StreamState()
    for raw in raw_lines:
        state.feed(raw)
    assert state.metrics.events + state.metrics.non_json_lines <= len(raw_lines)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=10)
KNOWN = st.sampled_from(["system", "assistant", "user", "result", "rate_limit_event"])
EVENT = st.fixed_dictionaries({"type": KNOWN}, optional={
    k: JSON for k in ["message", "subtype", "usage", "is_error", "result", "errors",
                      "rate_limit_info", "num_turns", "total_cost_usd", "error", "session_id"]})


@settings(max_examples=150, deadline=None)
@given(st.lists(EVENT, max_size=6), st.booleans(), st.booleans())
def test_known_events_in_any_shape_never_raise(events, timed_out, stalled):
    state = StreamState()
    for event in events:
        state.feed(json.dumps(event))
    reason, detail = ended(state, 1, None, timed_out=timed_out, stalled=stalled)
    assert reason in REASONS and isinstance(detail, str)


# --- rate limits --------------------------------------------------------------------------


def test_rejected_rate_limit_event_from_the_stream():
    state = fed(*lines("claude_stream_rate_limited.jsonl"))
    assert state.rate_limit == {"status": "rejected", "resets_at": 1763805600.0,
                                "type": "five_hour"}
    reason, detail = ended(state, 1)
    assert reason == "rate_limited" and detail.startswith("five_hour limit reached; resets at 20")


def test_usage_limit_error_result_with_pipe_epoch():
    state = fed(*lines("claude_stream_usage_limit.jsonl"))
    assert state.rate_limit == {"status": "rejected", "resets_at": 1763800000.0, "type": None}
    assert (state.metrics.input_tokens, state.metrics.output_tokens) == (9, 41)
    assert state.metrics.tool_calls == {"Glob": 1} and ended(state, 1)[0] == "rate_limited"


@pytest.mark.parametrize("info", [
    {"status": "allowed", "resetsAt": 1763805600},
    {"status": "allowed_warning", "resetsAt": 1763805600, "rateLimitType": "seven_day"},
    {"status": "rejected", "resetsAt": 1763805600, "isUsingOverage": True},
])
def test_rate_limit_events_that_do_not_stop_the_session(info):
    assert fed({"type": "rate_limit_event", "rate_limit_info": info}).rate_limit is None


def test_a_later_allowed_status_clears_a_rejection():
    rejected = {"type": "rate_limit_event", "rate_limit_info": {"status": "rejected"}}
    allowed = {"type": "rate_limit_event", "rate_limit_info": {"status": "allowed"}}
    assert fed(rejected).rate_limit == {"status": "rejected", "resets_at": None, "type": None}
    assert fed(rejected, allowed).rate_limit is None


def at(zone: str, hour: int, minute: int = 0, day_offset: int = 0) -> float:
    start = datetime.fromtimestamp(NOW, ZoneInfo(zone))
    when = start.replace(hour=hour, minute=minute, second=0, microsecond=0)
    return when.timestamp() + 86400 * day_offset


@pytest.mark.parametrize("text, resets_at", [
    ("Claude AI usage limit reached|1763800000", 1763800000.0),
    ("You've hit your session limit · resets 9am (Europe/Berlin)", at("Europe/Berlin", 9)),
    ("Claude usage limit reached. Your limit will reset at 3pm (America/Santiago).",
     at("America/Santiago", 15)),
    ("You've hit your session limit · resets 12:50am (America/Los_Angeles)",
     at("America/Los_Angeles", 0, 50, 1)),
    ("API Error: Request rejected (429) · The usage limit has been reached", None),
    ("API Error: 429 This request would exceed your account's rate limit.", None),
])
def test_limit_messages_in_an_error_result(text, resets_at):
    state = fed(result(is_error=True, result=text))
    if resets_at is None:  # no reset named: a rate limit, backed off, never the long pause
        assert state.rate_limit == {"status": "rejected", "resets_at": NOW + 60, "type": "rate"}
    else:
        assert state.rate_limit == {"status": "rejected", "resets_at": resets_at, "type": None}


def test_a_local_reset_clock_time_is_the_next_one():
    resets = fed(result(is_error=True, result="5-hour limit reached ∙ resets 3pm")).rate_limit
    when = datetime.fromtimestamp(resets["resets_at"]).astimezone()
    assert NOW < resets["resets_at"] <= NOW + 86400 and (when.hour, when.minute) == (15, 0)


def test_api_error_status_429_is_a_rate_limit_whatever_the_text():
    state = fed(result(is_error=True, api_error_status=429, result="API Error: overloaded"))
    assert state.rate_limit is not None and ended(state, 1)[0] == "rate_limited"


@pytest.mark.parametrize("items", [
    # ralph #183: limit words in the agent's work or in echoed files are not a limit.
    [result(result="Added a rate limit; 'usage limit reached|1763800000' is now handled.")],
    [{"type": "user", "message": {"content": [{"type": "tool_result", "is_error": True,
      "content": "grep: Claude AI usage limit reached|1763800000"}]}}],
    [{"type": "assistant", "message": {"content": [{"type": "text",
      "text": "You've hit your session limit · resets 9am"}]}}],
    [result(subtype="error_max_turns", is_error=True, result="stopped at the rate limit code")],
    [{"type": "system", "subtype": "api_retry", "error_status": 429, "error": "rate_limit"}],
])
def test_limit_words_elsewhere_are_not_a_rate_limit(items):
    assert fed(*items).rate_limit is None


def test_parse_reset_without_a_time_is_none():
    assert parse_reset("usage limit reached", NOW) is None
    assert parse_reset("resets 13pm (Nowhere/Zone)", NOW) is None


# --- budget -------------------------------------------------------------------------------


@pytest.mark.parametrize("event", [
    result(subtype="error_max_budget_usd", is_error=True, total_cost_usd=0.1273986,
           errors=["Reached maximum budget ($0.01)"]),
    result(is_error=True, terminal_reason="budget_exhausted"),
    result(is_error=True, result="Budget exceeded: --max-budget-usd 0.50"),
])
def test_budget_exceeded(event):
    state = fed(event)
    assert state.budget_exceeded and state.rate_limit is None
    assert ended(state, 1)[0] == "budget_exceeded"


def test_budget_detail_names_the_reason():
    state = fed(result(subtype="error_max_budget_usd", is_error=True,
                       errors=["Reached maximum budget ($0.01)"]))
    assert ended(state, 1) == ("budget_exceeded", "Reached maximum budget ($0.01)")


# --- classify -----------------------------------------------------------------------------

OK = result(num_turns=3, total_cost_usd=0.5, usage={"input_tokens": 10, "output_tokens": 5})
LIMITED = {"type": "rate_limit_event", "rate_limit_info": {"status": "rejected"}}
BUDGET = result(subtype="error_max_budget_usd", is_error=True)
BOOM = result(subtype="error_during_execution", is_error=True, errors=["boom"])


@pytest.mark.parametrize("items, exit_code, signal, flags, reason", [
    ([LIMITED, BUDGET], 1, None, {"timed_out": True, "stalled": True}, "rate_limited"),
    ([LIMITED, OK], 0, None, {}, "rate_limited"),
    ([BUDGET], None, 9, {"timed_out": True}, "budget_exceeded"),
    ([OK], None, 15, {"timed_out": True, "stalled": True}, "timed_out"),
    ([], None, 15, {"stalled": True}, "stalled"),
    ([OK], 0, None, {}, "succeeded"),
    ([OK], None, 15, {"killed_after_result": True}, "succeeded"),
    ([OK], 1, None, {}, "failed"),
    ([OK], None, 9, {}, "failed"),
    ([], None, 9, {}, "crashed"),
    ([BOOM], None, 9, {}, "failed"),
    ([BOOM], 1, None, {"killed_after_result": True}, "failed"),
    ([], 0, None, {}, "failed"),
    ([], 1, None, {}, "failed"),
])
def test_classify_rules(items, exit_code, signal, flags, reason):
    assert ended(fed(*items), exit_code, signal, **flags)[0] == reason


@pytest.mark.parametrize("items, exit_code, signal, detail", [
    ([BOOM], 1, None, "error_during_execution: boom"),
    ([], 1, None, "exit 1 without a result event"),
    ([OK], 2, None, "the result was a success but the agent ended with exit 2"),
    ([{"type": "user", "message": {"content": [{"type": "tool_result", "is_error": True,
       "content": "No such file"}]}}], 0, None,
     "exit 0 without a result event; tool error: No such file"),
])
def test_classify_failed_details(items, exit_code, signal, detail):
    assert ended(fed(*items), exit_code, signal) == ("failed", detail)


# --- Metrics ------------------------------------------------------------------------------


def test_metrics_add_sums_per_item_and_run():
    a = fed(*lines("claude_stream_success.jsonl")).metrics
    b = fed(*lines("claude_stream_usage_limit.jsonl")).metrics
    total = Metrics().add(a).add(b)
    assert (total.input_tokens, total.output_tokens, total.cache_creation_tokens) == \
        (31, 1352, 13347)
    assert total.cost_usd == pytest.approx(0.1084421) and total.turns == 11
    assert total.tool_calls == {"Read": 1, "Bash": 2, "Edit": 1, "Glob": 1}
    assert total.errors == a.errors + b.errors and total.events == 17
    assert total.model == "claude-sonnet-4-5-20250929"
    assert Metrics(model="x").add(Metrics()).model == "x"


def test_errors_are_capped_and_short():
    failing = {"type": "user", "message": {"content": [
        {"type": "tool_result", "is_error": True, "content": "E" * 1000}]}}
    state = fed(*[failing] * (ERRORS_CAP + 5))
    assert state.metrics.tool_errors == ERRORS_CAP + 5
    assert len(state.metrics.errors) == ERRORS_CAP
    assert all(len(e) <= 200 for e in state.metrics.errors)
    assert len(Metrics(errors=["x"] * ERRORS_CAP).add(state.metrics).errors) == ERRORS_CAP


def test_synthetic_messages_do_not_change_the_model():
    state = fed(*lines("claude_stream_rate_limited.jsonl"))
    assert state.metrics.model == "claude-sonnet-4-5-20250929"
    assert state.session_id == "a74d2edb-d7df-475f-ad7f-2c89def2ca88"


# --- what the pool does with the API's trouble --------------------------------------------


def test_the_circuit_breaker_counts_item_failures_not_the_apis_trouble(tmp_path):
    from harness.config import RunConfig
    from harness.pool.guards import Guards
    from harness.workspace import Workspace

    ws = Workspace.at(tmp_path)
    ws.make_dirs()
    guards = Guards(ws, RunConfig(max_consecutive_failures=2), lambda *a, **k: None)
    for reason, queue in [("failed", "retry"), ("overloaded", "waiting"),
                          ("auth_failed", "waiting"), ("quota", "waiting")]:
        guards.attempt_ended({"reason": reason, "queue": queue, "item": "x"})
    assert guards.consecutive_failures == 1 and not ws.interrupt_file.exists()
    guards.attempt_ended({"reason": "overloaded", "queue": "failed", "item": "x"})  # retries spent
    assert ws.interrupt_file.exists() and "circuit breaker" in ws.interrupt_reason()


@pytest.mark.parametrize("status, text, reason", [
    (401, "Failed to authenticate", "auth_failed"), (403, "forbidden", "auth_failed"),
    (None, "Not logged in · Please run /login", "auth_failed"),
    (None, "Invalid API key · Fix external API key", "auth_failed"),
    (None, "Quota exceeded. Check your plan and billing details.", "quota"),
    (400, "Your credit balance is too low to access the Anthropic API", "quota"),
    (429, "Request rejected (429)", "rate_limited"), (529, "Overloaded", "overloaded"),
    (500, "internal", "overloaded"), (None, "Request timed out.", "overloaded"),
    (None, "Selected model is at capacity.", "overloaded"),
    (400, "Prompt is too long", "prompt_too_long"), (400, "API Error: 400 bad request", None),
    (None, "boom", None),
])
def test_api_problems_map_to_reasons(status, text, reason):
    from harness.agents.session import api_problem

    assert api_problem(status, text) == reason


def test_an_announced_retry_is_shown_and_its_delay_allowed_until_the_next_line():
    retry = {"type": "system", "subtype": "api_retry", "attempt": 3, "max_retries": 10,
             "retry_delay_ms": 45000, "error_status": 529, "error": "overloaded"}
    state = fed(retry)
    assert state.activity == "retrying 3/10 (overloaded, 45 s)"
    assert state.quiet_allowance() == 45.0 and state.problem is None
    state.feed(json.dumps(block(type="text", text="hi")))
    assert state.quiet_allowance() == 0.0


def test_a_401_retry_stops_the_session_now():
    state = fed({"type": "system", "subtype": "api_retry", "attempt": 1, "max_retries": 10,
                 "retry_delay_ms": 600, "error_status": 401, "error": "authentication_failed"})
    assert state.stop_now is not None and state.stop_now[0] == "auth_failed"
    assert ended(state, None, 15)[0] == "auth_failed"


def test_an_open_tool_call_may_be_silent_for_its_timeout():
    call = block(type="tool_use", id="t1", name="Bash", input={"command": "make", "timeout": 90000})
    state = fed(call)
    assert state.quiet_allowance() == 90.0
    state = StreamState(tool_timeout=600)
    state.feed(json.dumps(block(type="tool_use", id="t2", name="Read", input={})))
    assert state.quiet_allowance() == 600.0
    state.feed(json.dumps({"type": "user", "message": {"content": [
        {"type": "tool_result", "tool_use_id": "t2", "content": "ok"}]}}))
    assert state.quiet_allowance() == 0.0
