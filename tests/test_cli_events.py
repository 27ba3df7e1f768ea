"""The parsers against what the real CLIs emitted (tests/data/cli-events/<cli>-<version>/).

Every event kind in a capture must be listed for its version in event_types.toml and
handled knowingly by the parser; every tested version (harness/agents/tested_versions.toml)
must have captures; and each captured scenario must end with the reason the harness
gives it (the same scenarios run live in tests/test_real_agents.py).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import orjson
import pytest

from harness.agents import presets, streams
from harness.agents.session import classify

DATA = Path(__file__).parent / "data" / "cli-events"
LISTED = {v["dir"]: v["seen"] for v in tomllib.loads(
    (DATA / "event_types.toml").read_text()).values()}
CAPTURES = sorted(p for p in DATA.glob("*/*.jsonl"))


def fmt(version_dir: str) -> str:
    return "codex-json" if version_dir.startswith("codex") else "stream-json"


def events(path: Path) -> list[dict]:
    out = []
    for line in path.read_bytes().splitlines():
        try:
            ev = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # auth_check captures are text output
        if isinstance(ev, dict):
            out.append(ev)
    return out


def test_every_tested_version_has_captures_and_a_list_of_event_kinds():
    for cli, info in presets.tested_versions().items():
        for version in info["tested"]:
            assert (DATA / f"{cli}-{version}").is_dir(), f"no captures of {cli} {version}"
            assert f"{cli}-{version}" in LISTED, f"{cli} {version} not in event_types.toml"
    assert set(LISTED) == {p.name for p in DATA.iterdir() if p.is_dir()}


@pytest.mark.parametrize("version_dir", sorted(LISTED))
def test_captured_event_kinds_are_listed_and_handled_knowingly(version_dir):
    seen = {streams.event_kind(fmt(version_dir), ev)
            for path in (DATA / version_dir).glob("*.jsonl") for ev in events(path)}
    assert seen == set(LISTED[version_dir]), (
        f"{version_dir}: event kinds changed; new: {sorted(seen - set(LISTED[version_dir]))},"
        f" gone: {sorted(set(LISTED[version_dir]) - seen)}; update event_types.toml and the"
        " parser")
    unknown = [k for k in LISTED[version_dir] if not streams.knows(fmt(version_dir), k)]
    assert unknown == [], f"{version_dir}: the parser does not handle {unknown}"


# scenario -> reason, for every CLI version unless the entry names one ("cli-version/scenario")
EXPECTED = {
    "auth_401": "auth_failed", "bad_400": "failed", "max_budget": "budget_exceeded",
    "max_turns": "failed", "overload_529": "overloaded", "sse_error": "overloaded",
    "server_500": "overloaded", "no_response": "overloaded", "quota": "quota",
    "usage_limit": "rate_limited", "usage_limit_oauth": "rate_limited",
    "usage_limit_api_key": "rate_limited", "hang_after_first_delta": "overloaded",
    "session_id_in_use": "failed",
    # killed by the capture script's timeout: no end of their own
    "claude-2.1.197/hang_after_first_delta": "stalled", "codex-0.171.0/no_response": "stalled",
    "codex-0.171.0/max_turns": "stalled",
}
SKIP = {"auth_check", "auth_check_401"}  # text output, not a stream


@pytest.mark.parametrize("path", [p for p in CAPTURES if p.stem not in SKIP],
                         ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_each_captured_scenario_ends_with_its_reason(path):
    name = f"{path.parent.name}/{path.stem}"
    state = streams.new(fmt(path.parent.name))
    for line in path.read_bytes().splitlines():
        state.feed(line)
    expected = EXPECTED.get(name, EXPECTED.get(path.stem, "succeeded"))
    killed = expected == "stalled"
    reason, detail = classify(None if killed else int(state.result_is_error or not state.result),
                              15 if killed else None, state, timed_out=False, stalled=killed,
                              killed_after_result=False)
    assert reason == expected, (name, detail)
    m = state.metrics
    assert m.unknown_events == 0 and m.non_json_lines == 0
    assert m.partial == (state.result is None and m.events > 0)  # empty: nothing to count
    if reason == "succeeded":
        assert m.input_tokens + m.cache_read_tokens > 0 and m.output_tokens > 0 and m.turns >= 1


def test_claude_tokens_are_the_model_usage_sum_where_the_result_usage_is_wrong():
    # 2.1.332's budget stop: result.usage says 700 in / 392 out, modelUsage (the billed
    # figure, matching total_cost_usd) 800 / 448.
    state = streams.new("stream-json")
    for line in (DATA / "claude-2.1.332" / "max_budget.jsonl").read_bytes().splitlines():
        state.feed(line)
    assert (state.metrics.input_tokens, state.metrics.output_tokens) == (800, 448)
