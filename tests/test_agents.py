"""Agent sessions end to end with the sim agent: every terminal reason, quota, merge queue."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from harness.queue import names
from harness.queue.invariants import check
from harness.queue.core import Queue
from tests.wsutil import events, kill_all, live_recorded, make_workspace, start_coordinator

pytestmark = pytest.mark.timeout(120)

SIM = """
session_timeout = 4
stall_after = 1.5
result_grace = 0.5

[agent]
preset = "sim"
"""


def run_batch(ws, agents=1, timeout=90):
    coord = start_coordinator(ws, "--agents", str(agents))
    try:
        return coord.wait(timeout=timeout)
    finally:
        kill_all(ws, coord)


def result(ws, item_id, attempt=1):
    return orjson.loads((ws.attempt_dir(item_id, attempt) / "result.json").read_bytes())


def metrics(ws, item_id, attempt=1):
    return orjson.loads((ws.attempt_dir(item_id, attempt) / "metrics.json").read_bytes())


def state_of(ws, item_id):
    for state in names.STATES:
        for entry in names.entries(ws.queue_dir / state):
            if names.parse(entry).id == item_id:
                return state, names.parse(entry)
    return None, None


def git(ws, *args):
    return subprocess.run(["git", *args], cwd=ws.root, capture_output=True, text=True)


@pytest.mark.parametrize("sim, reason, final", [
    ({"behavior": "succeed"}, "succeeded", "done"),
    ({"behavior": "fail"}, "failed", "failed"),
    ({"behavior": "slow", "seconds": 30}, "timed_out", "failed"),
    ({"behavior": "hang"}, "stalled", "failed"),
    ({"behavior": "crash"}, "crashed", "failed"),
    ({"behavior": "exceed_budget"}, "budget_exceeded", "failed"),
    ({"behavior": "hang_after_result"}, "succeeded", "done"),
    ({"behavior": "garbage"}, "succeeded", "done"),
])
def test_terminal_reason(tmp_path, sim, reason, final):
    ws = make_workspace(tmp_path / "ws", extra=SIM, max_attempts=1)
    Queue(ws.queue_dir).enqueue({"id": "it", "title": "Do it", "prompt": "Edit a file",
                                 "meta": {"sim": sim}})
    code = run_batch(ws)
    r = result(ws, "it")
    assert r["reason"] == reason, r
    assert state_of(ws, "it")[0] == final
    assert code == (0 if final == "done" else 1)
    assert (ws.attempt_dir("it", 1) / "prompt.md").read_text().count("Edit a file") == 1
    assert (ws.attempt_dir("it", 1) / "events.jsonl").stat().st_size > 0
    if final == "done":
        assert git(ws, "rev-parse", "harness/it").stdout.strip() == r["commit"]
        m = metrics(ws, "it")
        assert m["input_tokens"] > 0 and m["cost_usd"] > 0 and m["turns"] >= 1
        assert m["tool_calls"].get("Bash", 0) >= 1
        if sim["behavior"] == "garbage":
            assert m["non_json_lines"] > 0 and m["unknown_events"] > 0
    else:
        reason_file = ws.queue_dir / "failed" / (str(state_of(ws, "it")[1]) + ".reason")
        assert reason in reason_file.read_text()
    assert live_recorded(ws) == []
    assert check(ws.queue_dir, enqueued=["it"], expect_finished=True) == []


def test_fails_then_succeeds_with_retry(tmp_path):
    ws = make_workspace(tmp_path / "ws", extra=SIM)
    Queue(ws.queue_dir).enqueue({"id": "flaky", "meta": {"sim": {"fail_attempts": 1}}})
    assert run_batch(ws) == 0
    assert result(ws, "flaky", 1)["reason"] == "failed"
    assert result(ws, "flaky", 1)["queue"] == "retry"
    assert result(ws, "flaky", 2)["reason"] == "succeeded"
    assert state_of(ws, "flaky")[1].attempt == 2


def test_verify_failure_is_retried_then_dead_lettered(tmp_path):
    ws = make_workspace(tmp_path / "ws", extra=SIM + '\n[git]\nverify = "test -f never-there"\n',
                        max_attempts=2)
    Queue(ws.queue_dir).enqueue({"id": "unverified"})
    assert run_batch(ws) == 1
    assert [result(ws, "unverified", n)["reason"] for n in (1, 2)] == ["verify_failed"] * 2
    assert state_of(ws, "unverified")[0] == "failed"
    assert "verify" in (ws.attempt_dir("unverified", 1) / "result.json").read_text()


def test_uncommitted_agent_work_is_committed_on_the_attempt_branch(tmp_path):
    ws = make_workspace(tmp_path / "ws", extra=SIM)
    Queue(ws.queue_dir).enqueue({"id": "lazy", "meta": {"sim": {"commit": False}}})
    assert run_batch(ws) == 0
    files = git(ws, "show", "--name-only", "--format=", "harness/lazy").stdout.split()
    assert "sim/lazy.txt" in files


def test_quota_pauses_the_pool_then_resumes(tmp_path):
    ws = make_workspace(tmp_path / "ws", extra=SIM)
    q = Queue(ws.queue_dir)
    q.enqueue({"id": "quota", "priority": 0,
               "meta": {"sim": {"behavior": "rate_limit", "times": 1, "reset_after": 2}}})
    for i in range(7):
        q.enqueue({"id": f"work-{i}", "meta": {"sim": {"behavior": "slow", "seconds": 0.6}}})
    assert run_batch(ws, agents=4) == 0
    evs = events(ws)
    limited = [e for e in evs if e["event"] == "attempt-end" and e["reason"] == "rate_limited"]
    assert len(limited) == 1, "one rejection, no storm of failures"
    paused_at = next(e["ts"] for e in evs if e["event"] == "rate-limited")
    resumed_at = next(e["ts"] for e in evs if e["event"] == "resumed")
    assert resumed_at > paused_at
    assert not [e for e in evs if e["event"] == "claim" and paused_at < e["ts"] < resumed_at]
    assert not [e for e in evs if e["event"] == "attempt-end" and e["reason"] not in
                ("succeeded", "rate_limited")]
    state, name = state_of(ws, "quota")
    assert state == "done" and name.attempt == 2 and name.free == 1
    assert not ws.interrupt_file.exists()


MERGE = SIM + '\n[git]\nintegrate = "merge"\n'


def test_merge_queue_integrates_in_order_and_rejects_conflicts(tmp_path):
    ws = make_workspace(tmp_path / "ws", extra=MERGE)
    q = Queue(ws.queue_dir)
    for i in range(3):
        q.enqueue({"id": f"part-{i}", "meta": {"sim": {"file": f"part-{i}.txt"}}})
    q.enqueue({"id": "left", "meta": {"sim": {"behavior": "conflict", "file": "shared.txt"}}})
    q.enqueue({"id": "right", "meta": {"sim": {"behavior": "conflict", "file": "shared.txt"}}})
    assert run_batch(ws, agents=2) == 1
    for i in range(3):
        assert git(ws, "merge-base", "--is-ancestor", f"harness/part-{i}", "main").returncode == 0
    outcomes = {i: state_of(ws, i)[0] for i in ("left", "right")}
    assert sorted(outcomes.values()) == ["done", "failed"]
    loser = next(i for i, s in outcomes.items() if s == "failed")
    reason = (ws.queue_dir / "failed" / (str(state_of(ws, loser)[1]) + ".reason")).read_text()
    assert reason.startswith("conflict") and "shared.txt" in reason
    assert git(ws, "rev-parse", "--verify", f"harness/{loser}").returncode == 0, "branch kept"
    assert git(ws, "merge-base", "--is-ancestor", f"harness/{loser}", "main").returncode == 1
    merged = [e["item"] for e in events(ws) if e["event"] == "merged"]
    done_order = [e["item"] for e in events(ws) if e["event"] == "attempt-end"
                  and e["queue"] == "done"]
    assert merged == [i for i in done_order if i in merged], "merged in completion order"


@pytest.mark.parametrize("toml, key", [
    ("[agent]\npreset = 'sim'\nbogus = 1\n", "agent.bogus"),
    ("[run]\nagents = 'many'\n", "run.agents"),
    ("[agent]\npreset = 'custom'\ncommand = ['x', '{nope}']\n", "agent.command"),
    ("[git]\ntarget_branch = 'trunk'\n", "git.target_branch"),
    ("[agent]\npreset = 'codex'\noutput = 'stream-json'\n", "agent.output"),
])
def test_config_errors_exit_2_naming_file_and_key(tmp_path, toml, key):
    ws = make_workspace(tmp_path / "ws")
    (ws.root / "harness.toml").write_text(toml)
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "--root", str(ws.root), "run"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "harness.toml" in proc.stderr and key in proc.stderr


def test_a_missing_target_branch_refuses_the_run_naming_its_source(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    Queue(ws.queue_dir).enqueue({"id": "never-started", "command": "true"})
    env = {**os.environ, "HARNESS_GIT_TARGET_BRANCH": "master"}
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "--root", str(ws.root), "run"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2
    assert "HARNESS_GIT_TARGET_BRANCH" in proc.stderr and "git.target_branch" in proc.stderr
    assert "'master'" in proc.stderr and "its branches: main" in proc.stderr
    # Refused before anything ran: the item was not claimed, no attempt was spent.
    assert [n.attempt for n in map(names.parse, names.entries(ws.queue_dir / "pending"))] == [1]


def _path_with_only_git(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "git").symlink_to(shutil.which("git"))
    return str(bindir)


@pytest.mark.parametrize("agent, key", [
    ('preset = "claude"', "agent.preset"),
    ('preset = "custom"\ncommand = ["my-agent", "{prompt}"]', "agent.command"),
])
def test_a_missing_agent_program_refuses_the_run(tmp_path, agent, key):
    ws = make_workspace(tmp_path / "ws", extra=f"\n[agent]\n{agent}\n")
    Queue(ws.queue_dir).enqueue({"id": "never-started", "title": "t", "prompt": "p"})
    env = {**os.environ, "PATH": _path_with_only_git(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "--root", str(ws.root), "run"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "harness.toml" in proc.stderr and key in proc.stderr and "not found" in proc.stderr
    assert [n.attempt for n in map(names.parse, names.entries(ws.queue_dir / "pending"))] == [1]


def test_an_agent_that_cannot_start_fails_the_attempt_not_the_worker(tmp_path):
    # A placeholder program is not checked at start; the spawn itself fails.
    ws = make_workspace(tmp_path / "ws", max_attempts=1, extra=(
        '\n[agent]\npreset = "custom"\ncommand = ["{worktree}/no-such-agent", "{prompt}"]\n'))
    Queue(ws.queue_dir).enqueue({"id": "unstartable", "title": "t", "prompt": "p"})
    assert run_batch(ws) == 1
    res = result(ws, "unstartable")
    assert res["reason"] == "failed" and res["queue"] == "failed", res
    assert "cannot start" in res["detail"] and "no-such-agent" in res["detail"], res
    assert not [e for e in events(ws) if e["event"] == "worker-dead"]


FAKE_CLAUDE = """#!{python}
# Stands in for `claude` where the real one is not installed: checks the argv and
# environment the claude preset gives it, edits the worktree with the prompt it read on
# stdin, then replays a recorded stream. tests/test_real_agents.py runs the real CLI.
import json, os, sys
argv = sys.argv[1:]
def opt(flag):
    return argv[argv.index(flag) + 1]
problems = [f for f in ("-p", "--output-format", "--verbose", "--session-id", "--max-turns")
            if f not in argv]
if not problems:
    problems += [] if opt("--output-format") == "stream-json" else ["--output-format"]
    problems += [] if opt("-p") == "--output-format" else ["a prompt argument"]
problems += [k for k in os.environ if k in ("CLAUDECODE", "CLAUDE_CODE_ENTRYPOINT")]
problems += [] if os.environ.get("CLAUDE_CODE_OAUTH_TOKEN") == "kept" else ["login stripped"]
if problems:
    sys.exit(f"fake claude: bad invocation: {{problems}} in {{argv}}")
prompt = sys.stdin.read()
with open(os.environ["FAKE_CLAUDE_LOG"], "a") as f:
    f.write(json.dumps({{"argv": argv, "cwd": os.getcwd(), "prompt": prompt}}) + "\\n")
with open("from-claude.txt", "w") as f:
    f.write(prompt)
for line in open({stream!r}):
    print(line, end="", flush=True)
"""


def test_the_claude_preset_end_to_end_with_a_stand_in_binary(tmp_path, monkeypatch):
    """The claude code path (argv, prompt on stdin, clean env, stream parsing, metrics,
    commit) with a stand-in that replays tests/data/claude_stream_success.jsonl."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "claude"
    stream = Path(__file__).parent / "data" / "claude_stream_success.jsonl"
    fake.write_text(FAKE_CLAUDE.format(python=sys.executable, stream=str(stream)))
    fake.chmod(0o755)
    log = tmp_path / "claude-calls.jsonl"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("CLAUDECODE", "1")  # as if started from inside a Claude Code session
    monkeypatch.setenv("CLAUDE_CODE_ENTRYPOINT", "cli")
    monkeypatch.setenv("CLAUDE_CODE_OAUTH_TOKEN", "kept")  # a login, not a session marker
    ws = make_workspace(tmp_path / "ws", extra=(
        '\n[agent]\npreset = "claude"\nmax_turns = 7\nallowed_tools = ["Read", "Edit"]\n'
        f'env = {{FAKE_CLAUDE_LOG = "{log}"}}\n'))
    Queue(ws.queue_dir).enqueue({"id": "fix-parser", "title": "Fix the parser",
                                 "prompt": "- Make test_empty pass"})
    assert run_batch(ws) == 0, (ws.root / "coordinator.out").read_text()
    res = result(ws, "fix-parser")
    assert (res["reason"], res["queue"], res["detail"]) == (
        "succeeded", "done", "9 turns, 1333 tokens, $0.0873")
    metrics = orjson.loads((ws.attempt_dir("fix-parser", 1) / "metrics.json").read_bytes())
    assert metrics["tool_calls"] == {"Read": 1, "Bash": 2, "Edit": 1}
    assert (metrics["cost_usd"], metrics["turns"], metrics["output_tokens"]) == (
        0.0873421, 9, 1311)
    (call,) = [orjson.loads(line) for line in log.read_text().splitlines()]
    argv = call["argv"]
    assert "- Make test_empty pass" not in argv, "item text is never an argument"
    assert argv[argv.index("--max-turns") + 1] == "7"
    assert argv[argv.index("--allowedTools") + 1] == "Read,Edit"
    assert call["cwd"] == str(ws.worktree("w1"))
    # Its stdin was the rendered bootstrap prompt, kept with the attempt.
    prompt = (ws.attempt_dir("fix-parser", 1) / "prompt.md").read_text()
    assert call["prompt"] == prompt and "- Make test_empty pass" in prompt
    assert git(ws, "show", "harness/fix-parser:from-claude.txt").stdout == prompt


def test_prompt_template_errors_exit_2(tmp_path):
    ws = make_workspace(tmp_path / "ws", extra=SIM)
    (ws.root / "prompts" / "bootstrap.md").write_text("Do {{TITEL}} now\n")
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "--root", str(ws.root), "run"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "{{TITEL}}" in proc.stderr and "bootstrap.md" in proc.stderr
    (ws.root / "prompts" / "bootstrap.md").unlink()
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "--root", str(ws.root), "run"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "bootstrap.md" in proc.stderr and "not found" in proc.stderr


def test_run_budget_stops_new_attempts_and_ends_the_run(tmp_path):
    ws = make_workspace(tmp_path / "ws", extra=SIM.replace(
        "result_grace = 0.5", "result_grace = 0.5\nbudget_tokens = 100"))
    q = Queue(ws.queue_dir)
    for i in range(4):
        q.enqueue({"id": f"spend-{i}"})
    coord = start_coordinator(ws, "--agents", "1")
    try:
        assert coord.wait(timeout=60) == 1
    finally:
        kill_all(ws, coord)
    out = (ws.root / "coordinator.out").read_text()
    assert "run budget reached" in out
    done = names.entries(ws.queue_dir / "done")
    # The first attempt spends the budget; the coordinator sees it within one tick, by
    # which time the worker may already have started one more attempt (it finishes).
    assert 1 <= len(done) <= 2
    assert len(names.entries(ws.queue_dir / "pending")) == 4 - len(done)
    assert not ws.interrupt_file.exists(), "the budget pause ends with the run"
    assert any(e["event"] == "budget-reached" for e in events(ws))


def test_a_bad_resume_prompt_refuses_the_run(tmp_path):
    extra = SIM + 'resume = true\nresume_prompt = "Go {{RESAON}}"\n'
    ws = make_workspace(tmp_path / "ws", extra=extra)
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "--root", str(ws.root), "run"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "agent.resume_prompt" in proc.stderr
    assert "{{RESAON}}" in proc.stderr and "REASON" in proc.stderr
