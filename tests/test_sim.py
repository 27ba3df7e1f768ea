"""The simulated agent: stream-json shapes, worktree edits and commits, and every behaviour.

Each test runs ``python -m harness.agents.sim`` as a real subprocess in a temporary git
repository with no git identity configured. Processes that do not exit by
themselves (hang behaviours) are started in their own process group, recorded,
and killed by that pid at the end of the test.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

ROOT = Path(__file__).resolve().parents[1]
SESSION = "6f1c2b9e-3d4a-4e5f-8a7b-0c1d2e3f4a5b"
RUN_TIMEOUT = 15


# -- helpers ----------------------------------------------------------------------


def git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=check)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment with no git identity at all (HOME without a config)."""
    home = tmp_path / "home"
    home.mkdir()
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("GIT_", "HARNESS_", "CLAUDE"))}
    return {**base, "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
            "GIT_CONFIG_NOSYSTEM": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture
def repo(tmp_path: Path, env: dict[str, str]) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("# test\n")
    (repo / "shared.txt").write_text("base line 1\nline 2\n")
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"],
                 [*ident, "commit", "-q", "-m", "initial"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)
    return repo


@pytest.fixture
def procs():
    """Popen objects started by a test; their process groups are killed at teardown."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=5)
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


def write_item(tmp_path: Path, item_id: str, sim: Any = None, prompt: str = "Do the thing",
               title: str | None = None) -> Path:
    item = {"id": item_id, "title": title or f"Title of {item_id}", "prompt": prompt,
            "meta": {} if sim is None else {"sim": sim}}
    path = tmp_path / f"{item_id}.json"
    path.write_bytes(orjson.dumps(item))
    return path


def argv(item: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "harness.agents.sim", "--item", str(item), "--session-id",
            SESSION, *extra]


def run_sim(cwd: Path, env: dict[str, str], item: Path, *extra: str,
            attempt: int | None = None) -> tuple[int, list[dict[str, Any]], list[bytes], str]:
    run_env = dict(env) if attempt is None else {**env, "HARNESS_ATTEMPT": str(attempt)}
    done = subprocess.run(argv(item, *extra), cwd=cwd, env=run_env, capture_output=True,
                          timeout=RUN_TIMEOUT)
    lines = done.stdout.split(b"\n")
    assert lines[-1] == b"", "every line, the last included, ends with a newline"
    lines = lines[:-1]
    return done.returncode, parse(lines), lines, done.stderr.decode(errors="replace")


def parse(lines: list[bytes]) -> list[dict[str, Any]]:
    events = []
    for line in lines:
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(value, dict):
            events.append(value)
    return events


def start(cwd: Path, env: dict[str, str], item: Path, procs: list) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(argv(item), cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    procs.append(proc)
    return proc


def read_lines(proc: subprocess.Popen[bytes], until, timeout: float) -> list[tuple[float, bytes]]:
    """Read stdout lines live, with arrival times, until ``until(events)`` or EOF/timeout."""
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    got: list[tuple[float, bytes]] = []
    partial = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.05):
                continue
            data = os.read(proc.stdout.fileno(), 65536)
            if not data:
                break
            *lines, partial = (partial + data).split(b"\n")
            got.extend((time.monotonic(), line) for line in lines)
            if until(parse([line for _, line in got])):
                break
    finally:
        sel.close()
    return got


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def blocks(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [b for e in events if e["type"] in ("assistant", "user")
            for b in e["message"]["content"] if b["type"] == kind]


def check_stream_shape(events: list[dict[str, Any]]) -> None:
    """The Claude Code stream-json envelope: init first, well-formed messages, paired tools."""
    init = events[0]
    assert (init["type"], init["subtype"]) == ("system", "init")
    assert init["session_id"] == SESSION and init["model"] and "Bash" in init["tools"]
    for e in events:
        if e["type"] in ("assistant", "user", "system", "result", "rate_limit_event"):
            assert e["session_id"] == SESSION
        if e["type"] == "assistant":
            msg = e["message"]
            assert msg["role"] == "assistant" and msg["model"] and msg["content"]
            assert set(msg["usage"]) >= {"input_tokens", "output_tokens",
                                         "cache_creation_input_tokens", "cache_read_input_tokens"}
            for b in msg["content"]:
                assert b["type"] in ("text", "tool_use")
                if b["type"] == "tool_use":
                    assert b["id"] and b["name"] and isinstance(b["input"], dict)
        if e["type"] == "user":
            for b in e["message"]["content"]:
                assert b["type"] == "tool_result"
                assert isinstance(b["content"], str) and isinstance(b["is_error"], bool)
    uses = [b["id"] for b in blocks(events, "tool_use")]
    results = [b["tool_use_id"] for b in blocks(events, "tool_result")]
    assert results == uses[: len(results)], "every tool_result answers the tool_use before it"


def check_result(event: dict[str, Any], subtype: str, is_error: bool) -> None:
    assert event["type"] == "result"
    assert (event["subtype"], event["is_error"]) == (subtype, is_error)
    assert event["session_id"] == SESSION and isinstance(event["result"], str)
    assert isinstance(event["duration_ms"], int) and event["duration_ms"] >= 0
    assert isinstance(event["num_turns"], int)
    assert isinstance(event["total_cost_usd"], float | int)
    assert set(event["usage"]) >= {"input_tokens", "output_tokens",
                                   "cache_creation_input_tokens", "cache_read_input_tokens"}


def commits(repo: Path) -> list[str]:
    return git(repo, "log", "--format=%s").stdout.splitlines()


# -- success ----------------------------------------------------------------------


def test_succeed_edits_commits_and_reports(repo: Path, env: dict[str, str], tmp_path: Path) -> None:
    item = write_item(tmp_path, "ok-1")
    code, events, lines, _ = run_sim(repo, env, item)
    assert code == 0
    assert len(events) == len(lines), "a normal session prints nothing but JSON objects"
    check_stream_shape(events)
    assert types(events) == ["system", "assistant", "assistant", "user", "assistant", "user",
                             "assistant", "result"]
    assert blocks(events, "text")[0]["text"].startswith("I'll")
    write, bash = blocks(events, "tool_use")
    assert write["name"] == "Write"
    assert write["input"]["file_path"] == str((repo / "sim" / "ok-1.txt").resolve())
    assert bash["name"] == "Bash" and "git commit" in bash["input"]["command"]
    assert not any(b["is_error"] for b in blocks(events, "tool_result"))

    result = events[-1]
    check_result(result, "success", False)
    assistants = [e for e in events if e["type"] == "assistant"]
    assert result["num_turns"] == len(assistants)
    for key in ("input_tokens", "output_tokens", "cache_creation_input_tokens",
                "cache_read_input_tokens"):
        assert result["usage"][key] == sum(e["message"]["usage"][key] for e in assistants)
    assert 0 < result["total_cost_usd"] < 1

    assert "attempt 1" in (repo / "sim" / "ok-1.txt").read_text()
    assert commits(repo)[0].startswith("ok-1:") and len(commits(repo)) == 2
    assert git(repo, "status", "--porcelain").stdout == ""
    assert git(repo, "log", "-1", "--format=%an").stdout.strip() == "harness-sim"


def test_usage_is_deterministic_and_follows_the_prompt(repo: Path, env: dict[str, str],
                                                      tmp_path: Path) -> None:
    short = write_item(tmp_path, "u1", {"commit": False}, prompt="short")
    long_prompt = tmp_path / "prompt.md"
    long_prompt.write_text("a much longer rendered prompt " * 200)
    usage = []
    for extra in ((), (), ("--prompt-file", str(long_prompt))):
        code, events, _, _ = run_sim(repo, env, short, *extra)
        assert code == 0
        usage.append((events[-1]["usage"], events[-1]["total_cost_usd"]))
    assert usage[0] == usage[1]
    assert usage[2][0]["cache_creation_input_tokens"] > usage[0][0]["cache_creation_input_tokens"]
    assert usage[2][1] > usage[0][1]


def test_commit_false_leaves_the_change_uncommitted(repo: Path, env: dict[str, str],
                                                    tmp_path: Path) -> None:
    item = write_item(tmp_path, "nc", {"commit": False, "file": "notes/out.txt",
                                       "content": "hello from nc"})
    code, events, _, _ = run_sim(repo, env, item)
    assert code == 0
    check_result(events[-1], "success", False)
    assert [b["name"] for b in blocks(events, "tool_use")] == ["Write"]
    assert (repo / "notes" / "out.txt").read_text() == "hello from nc\n"
    assert len(commits(repo)) == 1
    assert git(repo, "status", "--porcelain").stdout.strip() == "?? notes/"


def test_second_attempt_edits_the_existing_file(repo: Path, env: dict[str, str],
                                                tmp_path: Path) -> None:
    item = write_item(tmp_path, "again")
    assert run_sim(repo, env, item, attempt=1)[0] == 0
    code, events, _, _ = run_sim(repo, env, item, attempt=2)
    assert code == 0
    edit = blocks(events, "tool_use")[0]
    assert edit["name"] == "Edit"
    assert {"file_path", "old_string", "new_string"} <= set(edit["input"])
    text = (repo / "sim" / "again.txt").read_text().splitlines()
    assert len(text) == 2 and "attempt 1" in text[0] and "attempt 2" in text[1]
    assert len(commits(repo)) == 3


def test_ignores_claude_style_flags(repo: Path, env: dict[str, str], tmp_path: Path) -> None:
    item = write_item(tmp_path, "flags", {"commit": False})
    code, events, _, _ = run_sim(repo, env, item, "--output-format", "stream-json", "--verbose",
                                 "--max-turns", "5")
    assert code == 0 and events[-1]["subtype"] == "success"


# -- failures -----------------------------------------------------------------------


def test_fail(repo: Path, env: dict[str, str], tmp_path: Path) -> None:
    item = write_item(tmp_path, "bad", {"behavior": "fail", "message": "tests are red"})
    code, events, _, _ = run_sim(repo, env, item)
    assert code == 1
    check_stream_shape(events)
    check_result(events[-1], "error_during_execution", True)
    assert events[-1]["result"] == "tests are red"
    assert any(b["is_error"] for b in blocks(events, "tool_result"))
    assert len(commits(repo)) == 1 and git(repo, "status", "--porcelain").stdout == ""


def test_fail_attempts_then_succeed(repo: Path, env: dict[str, str], tmp_path: Path) -> None:
    item = write_item(tmp_path, "flaky", {"fail_attempts": 2})
    outcomes = []
    for attempt in (1, 2, 3):
        code, events, _, _ = run_sim(repo, env, item, attempt=attempt)
        outcomes.append((code, events[-1]["is_error"]))
    assert outcomes == [(1, True), (1, True), (0, False)]
    assert "attempt 3" in (repo / "sim" / "flaky.txt").read_text()
    assert commits(repo)[0].startswith("flaky:")
    code, _, _, _ = run_sim(repo, env, item)  # no HARNESS_ATTEMPT: attempt 1
    assert code == 1


def test_meta_sim_may_be_a_bare_behavior_name(repo: Path, env: dict[str, str],
                                              tmp_path: Path) -> None:
    code, events, _, _ = run_sim(repo, env, write_item(tmp_path, "bare", "fail"))
    assert code == 1 and events[-1]["is_error"] is True


def test_unknown_behavior_is_an_error_result(repo: Path, env: dict[str, str],
                                             tmp_path: Path) -> None:
    code, events, _, _ = run_sim(repo, env, write_item(tmp_path, "what", {"behavior": "dance"}))
    assert code == 2
    check_result(events[-1], "error_during_execution", True)
    assert "dance" in events[-1]["result"]


def test_unreadable_item(repo: Path, env: dict[str, str], tmp_path: Path) -> None:
    done = subprocess.run(argv(tmp_path / "missing.json"), cwd=repo, env=env,
                          capture_output=True, timeout=RUN_TIMEOUT)
    assert done.returncode == 2 and done.stdout == b"" and b"cannot read" in done.stderr


@pytest.mark.parametrize("sig", [None, "SEGV"])
def test_crash_exits_by_signal(repo: Path, env: dict[str, str], tmp_path: Path,
                               sig: str | None) -> None:
    cfg = {"behavior": "crash"} if sig is None else {"behavior": "crash", "signal": sig}
    code, events, _, _ = run_sim(repo, env, write_item(tmp_path, "boom", cfg))
    assert code == -(signal.SIGKILL if sig is None else signal.SIGSEGV)
    check_stream_shape(events)
    assert types(events) == ["system", "assistant", "assistant"]
    assert "result" not in types(events)
    assert git(repo, "status", "--porcelain").stdout == "", "no core file, no edit"


def test_rate_limit(repo: Path, env: dict[str, str], tmp_path: Path) -> None:
    item = write_item(tmp_path, "rl", {"behavior": "rate_limit", "reset_after": 30, "times": 1})
    before = time.time()
    code, events, _, _ = run_sim(repo, env, item)
    assert code == 1
    check_stream_shape(events)
    limit = next(e for e in events if e["type"] == "rate_limit_event")
    info = limit["rate_limit_info"]
    assert info["status"] == "rejected" and info["rateLimitType"] == "five_hour"
    assert isinstance(info["resetsAt"], int)
    assert before + 28 <= info["resetsAt"] <= time.time() + 31
    result = events[-1]
    assert result["type"] == "result" and result["is_error"] is True
    assert "usage limit" in result["result"] and str(info["resetsAt"]) in result["result"]
    assert len(commits(repo)) == 1
    # ``times: 1``: the retry after the reset succeeds
    code, events, _, _ = run_sim(repo, env, item, attempt=2)
    assert code == 0 and events[-1]["subtype"] == "success"
    assert "rate_limit_event" not in types(events)


def test_rate_limit_default_reset(repo: Path, env: dict[str, str], tmp_path: Path) -> None:
    before = int(time.time())
    _, events, _, _ = run_sim(repo, env, write_item(tmp_path, "rl2", "rate_limit"))
    limit = next(e for e in events if e["type"] == "rate_limit_event")
    reset = limit["rate_limit_info"]["resetsAt"]
    assert before + 1 <= reset <= time.time() + 3


def test_exceed_budget(repo: Path, env: dict[str, str], tmp_path: Path) -> None:
    item = write_item(tmp_path, "rich", {"behavior": "exceed_budget", "max_budget_usd": 0.25})
    code, events, _, _ = run_sim(repo, env, item)
    assert code == 1
    check_stream_shape(events)
    check_result(events[-1], "error_max_budget_usd", True)
    assert events[-1]["total_cost_usd"] > 0.25
    # the budget may also come from the claude-style flag
    item = write_item(tmp_path, "rich2", "exceed_budget")
    _, events, _, _ = run_sim(repo, env, item, "--max-budget-usd", "1.5")
    assert events[-1]["total_cost_usd"] > 1.5


def test_max_turns(repo: Path, env: dict[str, str], tmp_path: Path) -> None:
    code, events, _, _ = run_sim(repo, env, write_item(tmp_path, "long", "max_turns"))
    assert code == 1
    check_result(events[-1], "error_max_turns", True)


# -- stream oddities and timing -------------------------------------------------------


def test_garbage_is_interleaved_with_a_normal_session(repo: Path, env: dict[str, str],
                                                      tmp_path: Path) -> None:
    code, events, lines, stderr = run_sim(repo, env, write_item(tmp_path, "junk", "garbage"))
    assert code == 0
    non_json = 0
    for line in lines:
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError:
            non_json += 1
    assert non_json >= 4
    assert any(len(line) > 65536 for line in lines)
    assert any(not isinstance(v, dict) for line in lines
               for v in [_try_loads(line)] if v is not None)
    known = {"system", "assistant", "user", "result"}
    assert {"sim_debug"} <= set(types(events)) - known
    results = [e for e in events if e["type"] == "result"]
    assert len(results) == 1
    check_result(results[0], "success", False)
    assert events[0]["subtype"] == "init"
    assert commits(repo)[0].startswith("junk:")
    assert "garbage" in stderr


def _try_loads(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None


def test_slow_spreads_events_and_flushes_each_line(repo: Path, env: dict[str, str],
                                                   tmp_path: Path, procs: list) -> None:
    item = write_item(tmp_path, "slowpoke", {"behavior": "slow", "seconds": 1.0})
    started = time.monotonic()
    proc = start(repo, env, item, procs)
    got = read_lines(proc, lambda evs: any(e["type"] == "result" for e in evs), RUN_TIMEOUT)
    assert proc.wait(timeout=RUN_TIMEOUT) == 0
    events = parse([line for _, line in got])
    check_result(events[-1], "success", False)
    assert events[-1]["duration_ms"] >= 900
    assert len(events) >= 10
    times_ = [started] + [t for t, _ in got]
    assert times_[-1] - started >= 0.9
    gaps = [b - a for a, b in zip(times_[1:], times_[2:])]
    assert max(gaps) < 0.6, f"events arrive live and spread out, gaps={gaps}"
    assert commits(repo)[0].startswith("slowpoke:")


def test_hang_stalls_after_one_assistant_event(repo: Path, env: dict[str, str], tmp_path: Path,
                                               procs: list) -> None:
    proc = start(repo, env, write_item(tmp_path, "stuck", "hang"), procs)
    got = read_lines(proc, lambda evs: len(evs) >= 2, RUN_TIMEOUT)
    events = parse([line for _, line in got])
    assert types(events) == ["system", "assistant"]
    more = read_lines(proc, lambda evs: True, 0.5)
    assert more == [] and proc.poll() is None, "silent and still running"
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=5) == -signal.SIGKILL


def test_hang_after_result(repo: Path, env: dict[str, str], tmp_path: Path,
                           procs: list) -> None:
    proc = start(repo, env, write_item(tmp_path, "linger", "hang_after_result"), procs)
    got = read_lines(proc, lambda evs: any(e["type"] == "result" for e in evs), RUN_TIMEOUT)
    events = parse([line for _, line in got])
    check_result(events[-1], "success", False)
    assert commits(repo)[0].startswith("linger:")
    time.sleep(0.3)
    assert proc.poll() is None, "never exits after its result"
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=5) == -signal.SIGTERM


# -- conflicts -------------------------------------------------------------------------


def test_two_conflict_items_conflict_at_merge(repo: Path, env: dict[str, str],
                                              tmp_path: Path) -> None:
    trees = {}
    for name in ("c1", "c2"):
        tree = tmp_path / f"wt-{name}"
        git(repo, "worktree", "add", "-q", "-b", f"harness/{name}", str(tree), "main")
        code, events, _, _ = run_sim(tree, env, write_item(tmp_path, name, "conflict"))
        assert code == 0 and events[-1]["subtype"] == "success"
        edit = blocks(events, "tool_use")[0]
        assert edit["name"] == "Edit" and edit["input"]["old_string"] == "base line 1"
        lines = (tree / "shared.txt").read_text().splitlines()
        assert name in lines[0] and lines[1:] == ["line 2"]
        trees[name] = tree
    ident = ["-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    first = subprocess.run(["git", *ident, "merge", "--no-edit", "harness/c1"], cwd=repo,
                           env=env, capture_output=True, text=True)
    assert first.returncode == 0
    second = subprocess.run(["git", *ident, "merge", "--no-edit", "harness/c2"], cwd=repo,
                            env=env, capture_output=True, text=True)
    assert second.returncode != 0 and "CONFLICT" in second.stdout
    git(repo, "merge", "--abort")


# -- start-up cost ---------------------------------------------------------------------


def test_imports_stay_light(env: dict[str, str]) -> None:
    code = ("import sys, harness.agents.sim; heavy = {'pydantic', 'psutil', 'click', 'rich', 'git',"
            " 'filelock', 'harness.queue.item', 'harness.config'} & set(sys.modules);"
            " print(sorted(heavy))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
