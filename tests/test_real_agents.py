"""The real claude and codex CLIs, end to end through ``parallel-harness run``, against the
project's fake model API: one test per behaviour of the fake (tests/fakeapi/README.md).

Each asserts what an operator would look at: the item's end state and reason, the
commit, the metrics, what the heartbeat said, and that no process is left. The CLIs
are the latest tested versions (harness/agents/tested_versions.toml); every tested
version runs in bench/agent_versions.py. Missing CLIs skip these tests, unless
HARNESS_REQUIRE_AGENT_CLIS=1 (.ci/run), which fails them. Short waits come from the
CLIs' own knobs and the fake's parameters, never from sleeping.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from harness.queue.core import Queue
from harness.queue.invariants import check
from tests.agentclis import (
    AgentRun, claude_env, codex_env, make_agent_workspace, need, processes_in, version)
from tests.fakeapi import FakeModelAPI
from tests.test_agents import result, state_of
from tests.wsutil import events, live_recorded, wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def api():
    with FakeModelAPI(hang_seconds=60) as server:
        yield server


def metrics(ws, item_id, attempt=1):
    return orjson.loads((ws.attempt_dir(item_id, attempt) / "metrics.json").read_bytes())


def git(ws, *args):
    return subprocess.run(["git", *args], cwd=ws.root, capture_output=True, text=True).stdout


def nothing_left(ws) -> None:
    """No process is left, and every attempt's stream was understood, event by event."""
    assert live_recorded(ws) == []
    assert processes_in(ws.root) == []
    for path in ws.logs_dir.glob("*/*/metrics.json"):
        assert orjson.loads(path.read_bytes())["unknown_events"] == 0, path


def harness_cli(ws, *args):
    from click.testing import CliRunner

    from harness.cli.main import main

    res = CliRunner().invoke(main, ["--root", str(ws.root), *args])
    assert res.exit_code == 0, res.output
    return res.output


def run_one(ws, prompt: str, item_id: str = "it", timeout: float = 120.0, **item):
    Queue(ws.queue_dir).enqueue({"id": item_id, "title": item_id, "prompt": prompt} | item)
    with AgentRun(ws) as run:
        code = run.wait(timeout)
    nothing_left(ws)
    return code, run


def claude_ws(tmp_path, api, **kw):
    binary = need("claude")
    env = claude_env(binary, api.url, tmp_path / "home", **kw.pop("env", {}))
    return make_agent_workspace(tmp_path / "ws", "claude", env, **kw)


def codex_ws(tmp_path, api, provider=None, **kw):
    binary = need("codex")
    env = codex_env(binary, api.url, tmp_path / "home", provider, **kw.pop("env", {}))
    return make_agent_workspace(tmp_path / "ws", "codex", env, **kw)


WORKSPACES = {"claude": claude_ws, "codex": codex_ws}
# A short stall_after for the tests of silence, still well above a CLI's start-up time on
# a loaded 2-core machine (claude 2.1.332 is a 400 MB binary).
STALL = 4.0
BOTH = pytest.mark.parametrize("cli", ["claude", "codex"])


# --- success paths --------------------------------------------------------------------


@BOTH
def test_text(tmp_path, api, cli):
    ws = WORKSPACES[cli](tmp_path, api)
    code, run = run_one(ws, "Say hello. [[fake:text]]")
    r, m = result(ws, "it"), metrics(ws, "it")
    assert (code, r["reason"], r["queue"]) == (0, "succeeded", "done"), run.output()
    assert r["no_changes"] is True, "a success that changed nothing says so"
    assert m["turns"] == 1 and m["input_tokens"] > 0 and m["output_tokens"] > 0
    assert m["partial"] is False and m["unknown_events"] == 0
    assert (m["cost_usd"] > 0) == (cli == "claude")  # codex reports no cost
    assert r["session_id"] and r["session_id"] in (ws.attempt_dir("it", 1) / "events.jsonl"
                                                   ).read_text()
    assert [q.behaviour for q in api.main_requests] == ["text"]
    assert check(ws.queue_dir, enqueued=["it"], expect_finished=True) == []
    # visible wherever the operator looks: the run's output, status, show
    assert "succeeded -> done" in run.output() and "(NO CHANGES)" in run.output()
    assert "NO CHANGES  1 done item(s) changed nothing: it" in harness_cli(ws, "status")
    assert "[NO CHANGES]" in harness_cli(ws, "show", "it")


@BOTH
def test_write_commit(tmp_path, api, cli):
    ws = WORKSPACES[cli](tmp_path, api)
    code, run = run_one(ws, "Write a file and commit it. [[fake:write_commit]]")
    r = result(ws, "it")
    assert (code, r["reason"], r["no_changes"]) == (0, "succeeded", False), run.output()
    # The agent's own commit (not the harness's auto-commit) is on the item's branch.
    assert git(ws, "log", "-1", "--format=%s", "harness/it").strip() == \
        "fake: add fake_commit.txt"
    assert git(ws, "show", "harness/it:fake_commit.txt") == "written by fakeapi\n"
    m = metrics(ws, "it")
    assert m["turns"] == 3 and sum(m["tool_calls"].values()) == 2 and m["tool_errors"] == 0


@BOTH
def test_bash(tmp_path, api, cli):
    ws = WORKSPACES[cli](tmp_path, api)
    code, run = run_one(ws, '[[fake:bash cmd="echo hello from bash"]]')
    assert (code, result(ws, "it")["reason"]) == (0, "succeeded"), run.output()
    m = metrics(ws, "it")
    assert m["tool_calls"] == ({"Bash": 1} if cli == "claude" else {"shell": 1})
    assert m["turns"] == 2


@BOTH
def test_max_turns(tmp_path, api, cli):
    ws = WORKSPACES[cli](tmp_path, api, max_turns=3)
    code, run = run_one(ws, "[[fake:max_turns]]")
    r, m = result(ws, "it"), metrics(ws, "it")
    assert (code, r["reason"], r["queue"]) == (1, "failed", "failed"), run.output()
    assert "max_turns" in r["detail"] and "3" in r["detail"], r["detail"]
    assert sum(m["tool_calls"].values()) == 3  # the third tool call is the last one run


@BOTH
def test_long_tool_is_not_a_stall(tmp_path, api, cli):
    # stall_after is shorter than the tool: the open tool call is allowed its timeout.
    ws = WORKSPACES[cli](tmp_path, api, stall_after=STALL)
    code, run = run_one(ws, "[[fake:long_tool secs=7]]")
    assert (code, result(ws, "it")["reason"]) == (0, "succeeded"), run.output()
    tool = "tool Bash: sleep 7" if cli == "claude" else "tool shell: sleep 7"
    assert any(a.startswith(tool) for a in run.activities), run.activities


@BOTH
def test_background_task(tmp_path, api, cli):
    ws = WORKSPACES[cli](tmp_path, api, stall_after=STALL)
    code, run = run_one(ws, "[[fake:background secs=6]]")
    r, m = result(ws, "it"), metrics(ws, "it")
    assert (code, r["reason"]) == (0, "succeeded"), run.output()
    if cli == "claude":  # claude waits for the task, then a second turn reads its output
        assert m["turns"] == 3
        assert git(ws, "show", "harness/it:fake_background.txt").strip() == "background done"
    else:  # codex ends its background command when it exits
        assert m["turns"] == 1


@BOTH
def test_rate_limit_retries_are_shown_and_allowed(tmp_path, api, cli):
    # The CLI waits retry-after between its retries; stall_after is shorter than that wait.
    # (codex announces no delay: its wait stays under stall_after here.)
    after, stall = (STALL + 3, STALL) if cli == "claude" else (1, STALL)
    provider = {"stream_max_retries": 5} if cli == "codex" else None
    kw = {"provider": provider} if cli == "codex" else {}
    ws = WORKSPACES[cli](tmp_path, api, stall_after=stall, **kw)
    code, run = run_one(ws, f"[[fake:rate_429 retries=1 after={after}]]")
    assert (code, result(ws, "it")["reason"]) == (0, "succeeded"), run.output()
    expect = "retrying 1/10 (rate_limit, " if cli == "claude" else "retrying 1/5 (rate_limit)"
    assert any(a.startswith(expect) for a in run.activities), run.activities


@BOTH
def test_bad_request_fails_the_item(tmp_path, api, cli):
    ws = WORKSPACES[cli](tmp_path, api)
    code, run = run_one(ws, "[[fake:bad_400]]")
    r = result(ws, "it")
    assert (code, r["reason"], r["queue"]) == (1, "failed", "failed"), run.output()
    assert "fakeapi: bad request" in r["detail"]


@BOTH
@pytest.mark.parametrize("marker", ["hang_after_first_delta", "no_response"])
def test_a_hung_endpoint_is_a_stall(tmp_path, api, cli, marker):
    ws = WORKSPACES[cli](tmp_path, api, stall_after=STALL)
    code, run = run_one(ws, f"[[fake:{marker}]]")
    r, m = result(ws, "it"), metrics(ws, "it")
    assert (code, r["reason"], r["queue"]) == (1, "stalled", "failed"), run.output()
    assert m["partial"] is True, "killed before its totals: counted from the stream, marked"


# --- the API's trouble: transient, limits, logins ------------------------------------


def first_attempt_ended(ws, reason):
    return wait_for(lambda: [e for e in events(ws) if e["event"] == "attempt-end"
                             and e["reason"] == reason], 60, f"an attempt ending {reason}")


SWITCHABLE = "{{PROMPT}}\n"  # the template; a marker after it overrides the prompt's
# claude retries an overloaded API 10 times (minutes of backoff) unless told otherwise
FEW_RETRIES = {"claude": {"env": {"CLAUDE_CODE_MAX_RETRIES": "2"}}, "codex": {}}


@BOTH
def test_overload_is_retried_free_and_not_counted_by_the_breaker(tmp_path, api, cli):
    # The marker in the template overloads the first attempt; once that attempt is over
    # the template loses it, and the retry (after the backoff) succeeds.
    ws = WORKSPACES[cli](tmp_path, api, backoff=3.0, breaker=1, max_attempts=1,
                         **FEW_RETRIES[cli], template=SWITCHABLE + "[[fake:overload_529]]\n")
    Queue(ws.queue_dir).enqueue({"id": "it", "title": "it", "prompt": "[[fake:text]]"})
    with AgentRun(ws) as run:
        first_attempt_ended(ws, "overloaded")
        (ws.root / "prompts" / "bootstrap.md").write_text(SWITCHABLE)
        assert run.wait() == 0, run.output()
    nothing_left(ws)
    r1 = result(ws, "it", 1)
    assert (r1["reason"], r1["queue"]) == ("overloaded", "waiting"), r1
    assert "529" in r1["detail"] or "Overloaded" in r1["detail"]
    assert result(ws, "it", 2)["reason"] == "succeeded"
    state, name = state_of(ws, "it")
    assert (state, name.attempt, name.free) == ("done", 2, 1), "the overloaded attempt was free"
    assert not [e for e in events(ws) if e["event"] == "circuit-open"]
    if cli == "claude":
        assert any(a.startswith("retrying 1/2 (overloaded, ") for a in run.activities), \
            run.activities


@BOTH
def test_a_mid_stream_error_with_no_retries_left_fails_as_overloaded(tmp_path, api, cli):
    ws = WORKSPACES[cli](tmp_path, api, transient_retries=0, **FEW_RETRIES[cli])
    code, run = run_one(ws, "[[fake:sse_error]]")
    r = result(ws, "it")
    assert (code, r["reason"], r["queue"]) == (1, "overloaded", "failed"), run.output()
    assert "transient_retries" in (ws.queue_dir / "failed").joinpath(
        str(state_of(ws, "it")[1]) + ".reason").read_text()


@BOTH
def test_bad_credentials_end_the_session_at_once_and_pause_the_pool(tmp_path, api, cli):
    # claude with its default 10 retries (3 minutes of them) and codex with its default
    # request retries: the first retry that says 401 ends the session.
    provider = {"request_max_retries": 4, "stream_max_retries": 5}
    ws = claude_ws(tmp_path, api) if cli == "claude" else codex_ws(tmp_path, api, provider)
    Queue(ws.queue_dir).enqueue({"id": "it", "title": "it", "prompt": "[[fake:auth_401]]"})
    with AgentRun(ws) as run:
        first_attempt_ended(ws, "auth_failed")
        assert run.interrupt() == 130
    nothing_left(ws)
    r = result(ws, "it")
    assert (r["reason"], r["queue"]) == ("auth_failed", "waiting"), r
    assert len(api.main_requests) <= 2, "stopped at the first retry, not after all of them"
    pause = ws.interrupt_file.read_text()
    assert pause.startswith("auth_failed:") and "doctor --check-auth" in pause
    assert "parallel-harness resume" in pause
    state, name = state_of(ws, "it")  # given back due now: promoted to pending meanwhile or not
    assert state in ("waiting", "pending") and (name.attempt, name.free) == (2, 1), \
        "no attempt burned"
    assert "authentication failed" in run.activities


def test_codex_quota_pauses_the_pool_with_the_fix(tmp_path, api):
    ws = codex_ws(tmp_path, api)
    Queue(ws.queue_dir).enqueue({"id": "it", "title": "it", "prompt": "[[fake:quota]]"})
    with AgentRun(ws) as run:
        first_attempt_ended(ws, "quota")
        assert run.interrupt() == 130
    nothing_left(ws)
    assert result(ws, "it")["detail"].startswith("Quota exceeded")
    assert "add credits" in ws.interrupt_file.read_text()
    assert state_of(ws, "it")[1].free == 1


@BOTH
def test_a_usage_limit_with_a_reset_time_pauses_until_then(tmp_path, api, cli):
    reset = int(time.time()) + 7200
    oauth = {"ANTHROPIC_API_KEY": "", "CLAUDE_CODE_OAUTH_TOKEN": "fake-oauth-token"}
    ws = claude_ws(tmp_path, api, env=oauth) if cli == "claude" else codex_ws(tmp_path, api)
    Queue(ws.queue_dir).enqueue({"id": "it", "title": "it",
                                 "prompt": f"[[fake:usage_limit reset={reset}]]"})
    with AgentRun(ws) as run:
        first_attempt_ended(ws, "rate_limited")
        assert run.interrupt() == 130
    nothing_left(ws)
    assert abs(ws.resume_at() - reset) <= 60  # codex says the minute only
    assert "limit reached; resets at" in result(ws, "it")["detail"]
    assert state_of(ws, "it")[1].free == 1


def test_claude_per_minute_rate_limit_backs_off_by_retry_after(tmp_path, api):
    # An API key gets no rate_limit_event: the exhausted 429 is a rate limit, backed off
    # by the CLI's announced delay (retry-after), not the long usage-limit pause.
    ws = claude_ws(tmp_path, api, env={"CLAUDE_CODE_MAX_RETRIES": "1"},
                   template=SWITCHABLE + "[[fake:rate_429 retries=9 after=3]]\n")
    Queue(ws.queue_dir).enqueue({"id": "it", "title": "it", "prompt": "[[fake:text]]"})
    with AgentRun(ws) as run:
        wait_for(lambda: [e for e in events(ws) if e["event"] == "rate-limited"], 60,
                 "the rate-limit pause")
        (ws.root / "prompts" / "bootstrap.md").write_text(SWITCHABLE)
        assert run.wait() == 0, run.output()
    nothing_left(ws)
    r1 = result(ws, "it", 1)
    assert r1["reason"] == "rate_limited", r1
    assert re.search(r"rate limit \(429\); backing off [34] s", r1["detail"]), r1["detail"]
    assert result(ws, "it", 2)["reason"] == "succeeded"
    assert [e["why"] for e in events(ws) if e["event"] == "resumed"] == [
        "rate-limit reset time reached"]


# --- resume ----------------------------------------------------------------------------


@BOTH
def test_resume_continues_the_session_after_a_stall(tmp_path, api, cli):
    ws = WORKSPACES[cli](tmp_path, api, stall_after=STALL, max_attempts=2, resume=True,
                         resume_prompt="Go on ({{REASON}}). [[fake:write_commit]]")
    code, run = run_one(ws, "[[fake:hang_after_first_delta]]")
    r1, r2 = result(ws, "it", 1), result(ws, "it", 2)
    assert (code, r1["reason"], r2["reason"]) == (0, "stalled", "succeeded"), run.output()
    assert r2["resumed_from"]["session_id"] == r1["session_id"] == r2["session_id"]
    assert r2["resumed_from"]["attempt"] == 1
    assert (ws.attempt_dir("it", 2) / "prompt.md").read_text().startswith("Go on (stalled).")
    assert git(ws, "show", "harness/it:fake_commit.txt") == "written by fakeapi\n"
    assert "[resumed the session of attempt 1]" in harness_cli(ws, "show", "it")


# --- the prompt path ------------------------------------------------------------------

FUZZ = {
    "dash": "- fix a bug in the parser\n- and add a test",
    "double-dash": "--version",
    "option": "--settings=/etc/passwd --dangerously-skip-permissions",
    "newlines": "first line\n\n\nlast line\n",
    "big": "a" * 1_040_000,  # 1 MB: codex 0.171 takes at most 1,048,576 characters
}
# Too big for some CLIs themselves (claude 2.1.332: "Prompt is too long" for 3 MB, which
# 2.1.197 sends; codex 0.171: "Input exceeds the maximum length of 1048576 characters"):
# refused, said so, and not retried.
TOO_BIG = {"three-mb": "b" * 3 * 2**20, "codex-limit": "c" * 2**20}
REFUSED = {"claude-2.1.197": set(), "claude-2.1.332": {"three-mb"},
           "codex-0.171.0": {"three-mb", "codex-limit"}}


@BOTH
def test_prompts_that_look_like_options_or_are_huge_reach_the_api_whole(tmp_path, cli):
    refused = REFUSED[f"{cli}-{version(cli)}"]
    big = {k: v for k, v in TOO_BIG.items() if cli == "codex" or k == "three-mb"}
    with FakeModelAPI(dump_dir=tmp_path / "requests") as api:
        ws = WORKSPACES[cli](tmp_path, api, max_attempts=2)
        q = Queue(ws.queue_dir)
        for name, text in {**FUZZ, **big}.items():
            q.enqueue({"id": name, "title": name, "prompt": f"{text} <{name}> [[fake:text]]"})
        with AgentRun(ws, agents=2) as run:
            assert run.wait(150) == (1 if refused else 0), run.output()
    nothing_left(ws)
    bodies = [p.read_text() for p in (tmp_path / "requests").glob("*-POST-*.json")]
    for name, text in {**FUZZ, **big}.items():
        r = result(ws, name)
        if name in refused:
            assert (r["reason"], r["queue"]) == ("prompt_too_long", "failed"), r
            assert state_of(ws, name)[1].attempt == 1, "a prompt that cannot fit is not retried"
            continue
        assert r["reason"] == "succeeded", (name, r)
        sent = orjson.dumps(f"{text} <{name}> [[fake:text]]").decode()[1:-1]
        assert any(sent in body for body in bodies), f"{name}: the prompt did not arrive whole"


def test_an_empty_prompt_fails_with_what_the_cli_said(tmp_path, api):
    # Nothing to say at all (an empty template and prompt): 0 bytes on stdin. The CLI's
    # own complaint, from its stderr, is in the reason.
    ws = claude_ws(tmp_path, api, template="{{PROMPT}}")
    code, run = run_one(ws, "", item_id="empty", title="")
    r = result(ws, "empty")
    assert (code, r["reason"]) == (1, "failed"), run.output()
    assert "stderr:" in r["detail"] and "Input must be provided" in r["detail"], r["detail"]
    assert (ws.attempt_dir("empty", 1) / "prompt.md").read_bytes() == b""
    shown = " ".join(harness_cli(ws, "show", "empty").split())
    assert "stderr: Error: Input must be provided" in shown, shown


@pytest.mark.parametrize("raw, code, says", [
    (b"# Fix it\n\nfix \x00 this\n", 1, "(task): field 'prompt': contains a NUL byte"),
    (b"# Fix it\n\ncaf\xe9 in Latin-1\n", 2, "task.md: not UTF-8 text (byte 0xe9 at offset 13)"),
])
def test_prompt_files_no_delivery_can_carry_are_refused_at_enqueue(tmp_path, raw, code, says):
    from click.testing import CliRunner

    from harness.cli.main import main
    from tests.wsutil import make_workspace

    ws = make_workspace(tmp_path / "ws")
    (tmp_path / "task.md").write_bytes(raw)
    res = CliRunner().invoke(main, ["--root", str(ws.root), "enqueue", str(tmp_path / "task.md")])
    assert res.exit_code == code and says in res.output, res.output
    pending = ws.queue_dir / "pending"
    assert not pending.exists() or not list(pending.iterdir())


# --- doctor ------------------------------------------------------------------------------


def doctor(ws, *args):
    import sys

    from tests.agentclis import caller_env

    proc = subprocess.run([sys.executable, "-m", "harness.cli", "--root", str(ws.root), "doctor",
                           "--json", *args], capture_output=True, text=True, timeout=180,
                          env=caller_env())
    return proc.returncode, {c["name"]: (c["status"], c["detail"])
                             for c in orjson.loads(proc.stdout)["checks"]}


@BOTH
def test_doctor_checks_the_version_the_login_and_a_real_request(tmp_path, cli):
    with FakeModelAPI(default_behaviour="auth_401") as api:
        ws = WORKSPACES[cli](tmp_path, api)
        code, checks = doctor(ws)
        assert checks["agent"][0] == "PASS" and "a tested version" in checks["agent"][1]
        assert checks["agent-login"][0] == "PASS", checks["agent-login"]
        assert "agent-auth" not in checks, "no request unless asked"
        code, checks = doctor(ws, "--check-auth")
        assert code == 1 and checks["agent-auth"][0] == "FAIL", checks
        assert "--check-auth" in checks["agent-auth"][1], "the fix is named"
        assert len(api.main_requests) <= 2, "the CLI's own retries are off for the check"
    with FakeModelAPI() as api:
        ws = WORKSPACES[cli](tmp_path / "good", api)
        code, checks = doctor(ws, "--check-auth")
        assert checks["agent-auth"][0] == "PASS", checks["agent-auth"]


def test_doctor_fails_a_codex_without_provider_or_login(tmp_path, api):
    binary = need("codex")
    env = codex_env(binary, api.url, tmp_path / "home")
    ws = make_agent_workspace(tmp_path / "ws", "codex", {**env, "FAKE_API_KEY": ""})
    assert "FAKE_API_KEY" in doctor(ws)[1]["agent-login"][1]
    (Path(env["CODEX_HOME"]) / "config.toml").unlink()  # an empty CODEX_HOME
    code, checks = doctor(ws)
    assert code == 1 and checks["agent-login"][0] == "FAIL"
    assert "not logged in" in checks["agent-login"][1] and "codex login" in checks[
        "agent-login"][1]


def test_doctor_fails_a_claude_without_a_login(tmp_path, api):
    ws = claude_ws(tmp_path, api, env={"ANTHROPIC_API_KEY": ""})
    code, checks = doctor(ws)
    assert code == 1 and checks["agent-login"][0] == "FAIL"
    assert "CLAUDE_CODE_OAUTH_TOKEN" in checks["agent-login"][1]
