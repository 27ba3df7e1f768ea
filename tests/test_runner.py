"""The agent runner: process group, resource limits, clean environment, live lines."""

from __future__ import annotations

import sys

import pytest

from harness.agents import presets, runner
from harness.config import AgentConfig
from tests.wsutil import gone, wait_for

pytestmark = pytest.mark.timeout(60)


def run(tmp_path, argv, **kw):
    lines: list[bytes] = []
    started = []
    outcome = runner.run(
        argv, cwd=tmp_path, env=kw.pop("env", runner.clean_env()),
        stdout=tmp_path / "out.log", stderr=tmp_path / "err.log",
        limits=kw.pop("limits", runner.Limits(timeout=20)), poll=0.05,
        on_start=started.append, on_poll=lambda: None, on_line=lines.append, **kw)
    return outcome, lines, started


def test_resource_limits_apply_to_the_agent(tmp_path):
    limiter = presets.resource_limiter(AgentConfig(memory_mb=256, cpu_seconds=7, open_files=99))
    outcome, lines, _ = run(tmp_path, ["/bin/sh", "-c", "ulimit -v; ulimit -t; ulimit -n"],
                            preexec=limiter)
    assert outcome.exit_code == 0
    assert [line.decode() for line in lines] == [str(256 * 1024), "7", "99"]
    assert presets.resource_limiter(AgentConfig()) is None


def test_nested_session_variables_are_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("CLAUDECODE", "1")
    monkeypatch.setenv("CLAUDE_CODE_ENTRYPOINT", "cli")
    monkeypatch.setenv("HARNESS_RUN_AGENTS", "9")
    monkeypatch.setenv("KEEP_ME", "yes")
    env = runner.clean_env({"EXTRA": "1"})
    assert "CLAUDECODE" not in env and "CLAUDE_CODE_ENTRYPOINT" not in env
    assert "HARNESS_RUN_AGENTS" not in env
    assert env["KEEP_ME"] == "yes" and env["EXTRA"] == "1"


def test_lines_arrive_while_the_agent_runs_and_stdin_is_closed(tmp_path):
    code = ("import sys, time\n"
            "print(sys.stdin.read() == '', flush=True)\n"
            "time.sleep(0.3)\n"
            "print('second', flush=True)\n")
    seen_at: list[float] = []
    import time

    def on_line(line):
        seen_at.append(time.monotonic())

    outcome = runner.run([sys.executable, "-c", code], cwd=tmp_path, env=runner.clean_env(),
                         stdout=tmp_path / "out.log", stderr=tmp_path / "err.log",
                         limits=runner.Limits(timeout=20), poll=0.05, on_start=lambda p: None,
                         on_poll=lambda: None, on_line=on_line)
    assert outcome.exit_code == 0
    assert (tmp_path / "out.log").read_text() == "True\nsecond\n"
    assert len(seen_at) == 2 and seen_at[1] - seen_at[0] > 0.2, "read as it arrived"


def test_stall_and_timeout_kill_the_whole_group(tmp_path):
    # The agent starts a grandchild that would outlive it and prints its pid; the group
    # kill on the stall must end both.
    outcome, lines, started = run(tmp_path, ["/bin/sh", "-c", "sleep 300 & echo $!; wait"],
                                  limits=runner.Limits(timeout=30, stall_after=0.5))
    assert outcome.stalled and not outcome.timed_out
    grandchild = int(lines[0])
    # SIGKILL is delivered asynchronously: the group is killed, death follows promptly.
    wait_for(lambda: gone(started[0].pid) and gone(grandchild), 5, "the agent's group to die")
    timed, _, _ = run(tmp_path, ["/bin/sh", "-c", "sleep 300"], limits=runner.Limits(timeout=0.5))
    assert timed.timed_out and timed.signal is not None


def test_output_beyond_the_cap_is_counted_not_stored(tmp_path):
    outcome, _, _ = run(tmp_path, [sys.executable, "-c", "print('x' * 5000)"],
                        limits=runner.Limits(timeout=20, log_cap_bytes=1000))
    assert (tmp_path / "out.log").stat().st_size == 1000
    assert outcome.truncated_bytes == 5001 - 1000


def test_an_agent_that_closes_its_pipes_before_exiting_is_not_killed(tmp_path):
    # GNU sleep closes stdout/stderr in an atexit handler, so both pipes reach EOF while
    # it still runs. The runner used to kill it then (41 of 60 runs): 'crashed' attempts.
    outcomes = [run(tmp_path, ["sleep", "0.01"])[0] for _ in range(30)]
    assert [(o.exit_code, o.signal) for o in outcomes] == [(0, None)] * 30


def test_a_program_that_cannot_start_raises_spawn_error(tmp_path):
    with pytest.raises(runner.SpawnError, match=r"cannot start '.*no-such-agent': No such file"):
        run(tmp_path, [str(tmp_path / "no-such-agent")])
    not_executable = tmp_path / "script.sh"
    not_executable.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(runner.SpawnError, match="Permission denied"):
        run(tmp_path, [str(not_executable)])


def test_find_program_looks_where_exec_would(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    claude = AgentConfig(preset="claude")
    assert presets.program(claude) == "claude"
    assert presets.find_program(claude, path=str(bindir)) is None
    fake = bindir / "claude"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    assert presets.find_program(claude, path=str(bindir)) == str(fake)
    assert presets.program(AgentConfig(preset="sim")) is None
    assert presets.program(AgentConfig(preset="custom", command=["{python}", "x"])) is None
    custom = AgentConfig(preset="custom", command=[str(fake), "{prompt}"])
    assert presets.find_program(custom) == str(fake)
