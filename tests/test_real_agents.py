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

import subprocess
import time
from pathlib import Path

import orjson
import pytest

from harness.queue.core import Queue
from harness.queue.invariants import check
from tests.agentclis import (
    AgentRun, claude_env, codex_env, make_agent_workspace, need, processes_in)
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
    assert live_recorded(ws) == []
    assert processes_in(ws.root) == []


def run_one(ws, prompt: str, item_id: str = "it", timeout: float = 120.0, **item):
    Queue(ws.queue_dir).enqueue({"id": item_id, "title": item_id, "prompt": prompt, **item})
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
