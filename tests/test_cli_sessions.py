"""harness.cli.sessions and harness.cli.logs: `sessions ...` and `logs` over a fake
workspace's logs/ directory.

The commands are registered on a tiny test group that sets ``ctx.obj["root"]``,
as harness.cli's main group does. The following commands (`watch`,
`logs --follow`) are driven line by line: the test appends a line and waits,
with a deadline, for the command to print it.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from harness.cli.main import main
from harness.agents.claude import ClaudeStream as StreamState
from harness.agents.session import Metrics

REPO = Path(__file__).resolve().parent.parent
STREAM = (Path(__file__).parent / "data" / "claude_stream_success.jsonl").read_text().splitlines()
GARBAGE = "this line is not JSON {"
T0 = 1_763_790_000.0
ID_COMMANDS = [["sessions", "summary"], ["sessions", "tools"], ["sessions", "errors"],
               ["sessions", "timeline"], ["sessions", "metrics"], ["sessions", "export"],
               ["sessions", "watch"], ["logs"]]
DEADLINE = 10.0  # seconds any one wait may take before the test fails


cli = main  # the real command group: every command reads ctx.obj['root']


def invoke(root: Path, *args: str):
    return CliRunner().invoke(cli, ["--root", str(root), *args], catch_exceptions=False)


def stream_metrics(lines: list[str]) -> Metrics:
    state = StreamState()
    for line in lines:
        state.feed(line)
    return state.metrics


def write_attempt(root: Path, item: str, attempt: int, *, started: float,
                  lines: list[str] | None = None, stdout: str | None = None,
                  reason: str | None = "succeeded", stderr: str = "", title: str = "") -> Path:
    """One attempt directory as a worker leaves it (reason None: still running)."""
    (root / "queue").mkdir(exist_ok=True)  # what makes root a workspace
    d = root / "logs" / item / str(attempt)
    d.mkdir(parents=True)
    (d / "item.json").write_text(json.dumps({"id": item, "title": title or f"do {item}"}))
    os.utime(d / "item.json", (started, started))
    if lines is not None:
        (d / "events.jsonl").write_text("".join(f"{line}\n" for line in lines))
    if stdout is not None:
        (d / "stdout.log").write_text(stdout)
    (d / "stderr.log").write_text(stderr)
    if reason is not None:
        metrics = stream_metrics(lines or []).as_dict()
        metrics["duration_s"] = 50.0
        (d / "metrics.json").write_text(json.dumps(metrics))
        (d / "result.json").write_text(json.dumps({
            "item": item, "attempt": attempt, "worker": "w1", "generation": "g",
            "reason": reason, "detail": f"{reason} detail", "queue": "done",
            "branch": f"harness-attempts/{item}/{attempt}", "commit": "abc123def4567890",
            "started_at": started, "ended_at": started + 50.0}))
    return d


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """fix-parser: attempt 1 failed (garbage line, stderr), attempt 2 succeeded; shell-job."""
    with_garbage = STREAM[:3] + [GARBAGE] + STREAM[3:]
    write_attempt(tmp_path, "fix-parser", 1, started=T0, lines=with_garbage, reason="failed",
                  stderr="".join(f"warning {i}\n" for i in range(30)), title="Fix the parser")
    write_attempt(tmp_path, "fix-parser", 2, started=T0 + 100, lines=STREAM,
                  title="Fix the parser")
    write_attempt(tmp_path, "shell-job", 1, started=T0 + 200, stdout="hello\nworld\n")
    return tmp_path


def as_json(result) -> object:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- help and errors ----------------------------------------------------------


@pytest.mark.parametrize("args", [["sessions"], ["sessions", "list"], ["sessions", "latest"],
                                  *ID_COMMANDS])
def test_help_has_an_example(tmp_path, args):
    result = invoke(tmp_path, *args, "--help")
    assert result.exit_code == 0
    assert "Example" in result.output and "parallel-harness" in result.output


@pytest.mark.parametrize("args", ID_COMMANDS)
def test_unknown_item_is_a_usage_error_naming_it(root, args):
    result = invoke(root, *args, "no-such-item")
    assert result.exit_code == 2
    assert "no-such-item" in result.stderr and str(root / "logs" / "no-such-item") in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("args", ID_COMMANDS)
def test_unknown_attempt_names_the_attempts_there(root, args):
    result = invoke(root, *args, "fix-parser", "--attempt", "7")
    assert result.exit_code == 2
    assert "attempt 7" in result.stderr and "attempts: 1, 2" in result.stderr


@pytest.mark.parametrize("bad", ["../fix-parser", "a/b", ".hidden"])
def test_ids_that_are_paths_are_refused(root, bad):
    result = invoke(root, "sessions", "summary", bad)
    assert result.exit_code == 2 and "not a valid item id" in result.stderr


def test_empty_workspace(tmp_path):
    (tmp_path / "queue").mkdir()
    assert invoke(tmp_path, "sessions", "list").output.startswith("no attempts in")
    assert as_json(invoke(tmp_path, "sessions", "list", "--json")) == []
    result = invoke(tmp_path, "sessions", "latest")
    assert result.exit_code == 2 and str(tmp_path / "logs") in result.stderr


def test_logs_dir_without_attempt_dirs_is_no_logs(tmp_path):
    (tmp_path / "queue").mkdir()
    (tmp_path / "logs" / "empty-item").mkdir(parents=True)
    (tmp_path / "logs" / "empty-item" / "notes.txt").write_text("x")
    result = invoke(tmp_path, "sessions", "summary", "empty-item")
    assert result.exit_code == 2 and "empty-item" in result.stderr


# -- list, latest, summary ------------------------------------------------------


def test_list_is_newest_first(root):
    result = invoke(root, "sessions", "list")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split() == ["ITEM", "ATTEMPT", "REASON", "STARTED", "DURATION", "TOKENS",
                                "COST"]
    assert [line.split()[:3] for line in lines[1:]] == [
        ["shell-job", "1", "succeeded"], ["fix-parser", "2", "succeeded"],
        ["fix-parser", "1", "failed"]]
    assert "$0.0873" in lines[2] and "50.0s" in lines[2]


def test_list_json_and_limit(root):
    data = as_json(invoke(root, "sessions", "list", "--json"))
    assert [(d["item"], d["attempt"]) for d in data] == [
        ("shell-job", 1), ("fix-parser", 2), ("fix-parser", 1)]
    m = stream_metrics(STREAM)
    assert data[1]["tokens"] == (m.input_tokens + m.output_tokens + m.cache_creation_tokens
                                 + m.cache_read_tokens)
    assert data[1]["cost_usd"] == pytest.approx(0.0873421)
    assert data[1]["started_at"] == T0 + 100 and data[1]["duration_s"] == 50.0
    result = invoke(root, "sessions", "list", "--limit", "1")
    assert "shell-job" in result.output and "fix-parser" not in result.output
    assert "1 of 3 attempts" in result.output
    assert len(as_json(invoke(root, "sessions", "list", "--limit", "2", "--json"))) == 2


def test_latest_is_the_newest_attempt(root):
    result = invoke(root, "sessions", "latest")
    assert result.exit_code == 0
    assert result.output.startswith("shell-job attempt 1: succeeded")
    data = as_json(invoke(root, "sessions", "latest", "--json"))
    assert (data["item"], data["attempt"], data["agent"]) == ("shell-job", 1, "shell")


def test_summary_text(root):
    result = invoke(root, "sessions", "summary", "fix-parser")
    assert result.exit_code == 0
    out = result.output
    assert "fix-parser attempt 1: failed (queue: done)" in out
    assert "fix-parser attempt 2: succeeded" in out and "Fix the parser" in out
    assert "input 22  output 1311  cache write 8227  cache read 83548" in out
    assert "$0.0873" in out and "4 calls: Bash 2, Edit 1, Read 1" in out
    assert "harness-attempts/fix-parser/2 @ abc123def456" in out
    assert "1 non_json" in out and "1 tool_error" in out  # attempt 1's stream problems
    assert str(root / "logs" / "fix-parser" / "2") in out and "events.jsonl" in out
    assert "8f3c2a71-5d4e-4b9a-9c0e-2f6a1d7b3e55" in out


def test_summary_json_one_attempt(root):
    data = as_json(invoke(root, "sessions", "summary", "fix-parser", "--attempt", "1",
                          "--json"))
    assert data["item"] == "fix-parser" and data["title"] == "Fix the parser"
    (att,) = data["attempts"]
    assert att["attempt"] == 1 and att["reason"] == "failed" and att["detail"] == "failed detail"
    assert att["metrics"]["output_tokens"] == 1311 and att["metrics"]["turns"] == 9
    assert att["metrics"]["tool_calls"] == {"Read": 1, "Bash": 2, "Edit": 1}
    assert att["metrics_source"] == "metrics.json"
    assert att["lines"] == {"records": 14, "events": 13, "non_json": 1}
    assert att["files"]["stderr.log"] == str(root / "logs" / "fix-parser" / "1" / "stderr.log")


# -- tools, errors, timeline ---------------------------------------------------


def test_tools_counts_and_sequence(root):
    result = invoke(root, "sessions", "tools", "fix-parser")
    assert result.exit_code == 0
    out = result.output
    assert out.startswith("fix-parser attempt 2: 4 tool calls (1 failed)")
    counts = out.split("sequence:")[0]
    assert counts.index("Bash") < counts.index("Edit") < counts.index("Read")
    seq = out.split("sequence:")[1].splitlines()[1:]
    assert [line.split()[3:5] for line in seq] == [["Read", "ok"], ["Bash", "ERROR"],
                                                   ["Edit", "ok"], ["Bash", "ok"]]
    assert "python -m pytest -q tests/test_parse.py" in seq[1]


def test_tools_json_and_full(root):
    data = as_json(invoke(root, "sessions", "tools", "fix-parser", "--attempt", "1", "--json"))
    assert data["attempt"] == 1 and data["counts"] == {"Bash": 2, "Edit": 1, "Read": 1}
    assert [c["name"] for c in data["calls"]] == ["Read", "Bash", "Edit", "Bash"]
    assert data["calls"][1]["is_error"] is True and "FAILED" in data["calls"][1]["result"]
    assert data["calls"][2]["input"]["new_string"].endswith("else []")
    assert "old_string" in invoke(root, "sessions", "tools", "fix-parser", "--full").output
    assert "old_string" not in invoke(root, "sessions", "tools", "fix-parser").output


def test_errors(root):
    result = invoke(root, "sessions", "errors", "fix-parser", "--attempt", "1", "--tail", "3")
    assert result.exit_code == 0
    out = result.output
    assert "non_json" in out and GARBAGE in out
    assert "tool_error" in out and "Bash" in out and "AssertionError" in out
    assert "outcome: failed: failed detail" in out
    assert "last 3 of 30 lines" in out and "warning 29" in out and "warning 26" not in out
    data = as_json(invoke(root, "sessions", "errors", "fix-parser", "--attempt", "1", "--json"))
    assert [e["kind"] for e in data["errors"]] == ["non_json", "tool_error"]
    assert data["errors"][0]["line"] == 4
    assert data["outcome"]["reason"] == "failed" and data["stderr_lines"] == 30
    assert len(data["stderr_tail"]) == 20


def test_errors_of_error_results(tmp_path):
    lines = [json.dumps({"type": "system", "subtype": "api_retry", "attempt": 1}),
             json.dumps({"type": "result", "subtype": "error_max_budget_usd", "is_error": True,
                         "errors": ["Reached maximum budget ($0.01)"]}), "[1, 2]"]
    write_attempt(tmp_path, "broke", 1, started=T0, lines=lines, reason="budget_exceeded")
    data = as_json(invoke(tmp_path, "sessions", "errors", "broke", "--json"))
    assert [e["kind"] for e in data["errors"]] == ["api_retry", "result_error", "not_an_object"]
    assert "Reached maximum budget" in data["errors"][1]["text"]
    assert "stderr.log: empty" in invoke(tmp_path, "sessions", "errors", "broke").output


def test_timeline(root):
    result = invoke(root, "sessions", "timeline", "fix-parser", "--attempt", "1")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == "fix-parser attempt 1: 14 events"
    events = lines[1:15]
    assert [line.split()[0] for line in events] == [f"#{i}" for i in range(1, 15)]
    assert events[0].split()[1] == "system/init"
    assert "Read(/work/repo/worktrees/w1/src/parse.py)" in events[2]
    assert events[3].split()[1] == "non-json" and GARBAGE in events[3]
    assert "Bash ERROR" in events[7] and events[13].split()[1] == "result/success"
    assert lines[15] == "ended: failed: failed detail"
    data = as_json(invoke(root, "sessions", "timeline", "fix-parser", "--json"))
    assert data["attempt"] == 2 and len(data["events"]) == 13
    assert data["events"][-1]["type"] == "result/success" and data["events"][-1]["t"] is None


def test_timeline_relative_times_when_events_have_them(tmp_path):
    lines = [json.dumps({"type": "system", "subtype": "init", "timestamp":
                         "2025-11-22T05:40:00.000Z"}),
             json.dumps({"type": "assistant", "timestamp": "2025-11-22T05:40:01.500Z",
                         "message": {"content": [{"type": "text", "text": "hi"}]}}),
             json.dumps({"type": "user", "message": {"content": "no time here"}}),
             json.dumps({"type": "result", "subtype": "success", "ts": T0 + 4})]
    write_attempt(tmp_path, "timed", 1, started=T0, lines=lines)
    out = invoke(tmp_path, "sessions", "timeline", "timed").output.splitlines()
    assert [line.split()[0] for line in out[1:5]] == ["+0.0s", "+1.5s", "#3", "+4.0s"]


def test_shell_agent_attempt(root):
    assert invoke(root, "logs", "shell-job").stdout == "hello\nworld\n"
    out = invoke(root, "sessions", "timeline", "shell-job").output
    assert "stdout" in out and "hello" in out and "world" in out
    data = as_json(invoke(root, "sessions", "tools", "shell-job", "--json"))
    assert data["calls"] == []


# -- metrics, export -------------------------------------------------------------


def test_metrics_total_is_metrics_add(root):
    data = as_json(invoke(root, "sessions", "metrics", "fix-parser", "--json"))
    assert [a["attempt"] for a in data["attempts"]] == [1, 2]
    assert all(a["source"] == "metrics.json" for a in data["attempts"])
    one = stream_metrics(STREAM)
    assert data["total"]["output_tokens"] == 2 * one.output_tokens
    assert data["total"]["cost_usd"] == pytest.approx(2 * one.cost_usd)
    assert data["total"]["tool_calls"] == {"Read": 2, "Bash": 4, "Edit": 2}
    assert data["total"]["non_json_lines"] == 1 and data["total"]["duration_s"] == 100.0
    out = invoke(root, "sessions", "metrics", "fix-parser").output
    assert "attempt 1" in out and "attempt 2" in out and "total" in out
    assert "tool calls (total): Bash 4" in out
    single = as_json(invoke(root, "sessions", "metrics", "fix-parser", "--attempt", "2",
                            "--json"))
    assert len(single["attempts"]) == 1 and single["total"]["output_tokens"] == 1311


def test_export_stdout_and_file(root, tmp_path):
    doc = as_json(invoke(root, "sessions", "export", "fix-parser"))
    assert doc["item_id"] == "fix-parser" and doc["item"]["title"] == "Fix the parser"
    first, second = doc["attempts"]
    assert first["result"]["reason"] == "failed" and second["result"]["reason"] == "succeeded"
    assert len(first["events"]) == 13 and first["events"][0]["subtype"] == "init"
    assert first["bad_lines"] == [{"line": 4, "text": GARBAGE}]
    assert first["metrics"]["output_tokens"] == 1311 and first["stderr_tail"][-1] == "warning 29"
    out = tmp_path / "export.json"
    result = invoke(root, "sessions", "export", "fix-parser", "--attempt", "2", "-o", str(out))
    assert result.exit_code == 0 and result.stdout == "" and str(out) in result.stderr
    saved = json.loads(out.read_text())
    assert [a["attempt"] for a in saved["attempts"]] == [2]


# -- a running attempt -------------------------------------------------------------


def test_running_attempt_uses_the_stream_so_far(root):
    d = write_attempt(root, "live", 1, started=time.time(), lines=STREAM[:6], reason=None)
    with open(d / "events.jsonl", "a") as f:
        f.write(STREAM[6][:40])  # a line still being written
    hb = root / "state" / "heartbeats"
    hb.mkdir(parents=True)
    (hb / "w2.json").write_text(json.dumps({"counter": 3, "item_id": "live", "attempt": 1}))
    from harness.liveness.process import hold_lock

    lock = hold_lock(root / "state" / "workers" / "w2.lock")  # its worker is alive
    data = as_json(invoke(root, "sessions", "list", "--json"))
    os.close(lock)
    assert (data[0]["item"], data[0]["reason"]) == ("live", "running")
    assert data[0]["duration_s"] is not None and data[0]["tokens"] > 0
    summary = as_json(invoke(root, "sessions", "summary", "live", "--json"))["attempts"][0]
    assert summary["metrics_source"] == "stream" and summary["lines"]["non_json"] == 0
    assert summary["metrics"]["tool_calls"] == {"Read": 1, "Bash": 1}
    (hb / "w2.json").unlink()
    assert as_json(invoke(root, "sessions", "list", "--json"))[0]["reason"] == "unfinished"


def test_watch_timeout_exits_1(root):
    write_attempt(root, "live", 1, started=time.time(), lines=STREAM[:2], reason=None)
    result = invoke(root, "sessions", "watch", "live", "--timeout", "0.2", "--interval", "0.02")
    assert result.exit_code == 1 and "--timeout" in result.stderr
    assert "system/init" in result.stdout


def test_watch_an_ended_attempt_replays_it(root):
    result = invoke(root, "sessions", "watch", "fix-parser", "--json")
    assert result.exit_code == 0
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 14 and records[-1] == {"type": "end", "result": records[-1]["result"]}
    assert records[-1]["result"]["reason"] == "succeeded"
    assert records[0]["event"]["session_id"] == "8f3c2a71-5d4e-4b9a-9c0e-2f6a1d7b3e55"


def test_logs_tail_and_stderr(root):
    out = invoke(root, "logs", "fix-parser", "--attempt", "1").stdout
    assert out.splitlines() == STREAM[:3] + [GARBAGE] + STREAM[3:]
    assert invoke(root, "logs", "fix-parser", "-n", "2").stdout.splitlines() == STREAM[-2:]
    err = invoke(root, "logs", "fix-parser", "--attempt", "1", "--stderr", "-n", "1").stdout
    assert err == "warning 29\n"
    d = write_attempt(root, "nostream", 1, started=T0, lines=None, reason=None)
    (d / "stderr.log").unlink()
    result = invoke(root, "logs", "nostream")
    assert result.exit_code == 2 and "events.jsonl or stdout.log" in result.stderr
    assert invoke(root, "logs", "nostream", "--stderr").exit_code == 2


def test_logs_follow_with_a_writer_thread(root):
    """A thread writes the stream in pieces, then result.json; --follow prints all and stops."""
    d = write_attempt(root, "live", 1, started=time.time(), lines=None, reason=None)

    def writer() -> None:
        with open(d / "events.jsonl", "ab", buffering=0) as f:
            for line in STREAM:
                half = len(line) // 2
                f.write(line[:half].encode())
                f.write(line[half:].encode() + b"\n")
        (d / "result.tmp").write_text(json.dumps({"reason": "succeeded", "detail": "ok"}))
        os.replace(d / "result.tmp", d / "result.json")

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        result = invoke(root, "logs", "live", "--follow", "--timeout", str(DEADLINE),
                        "--interval", "0.01")
    finally:
        thread.join(DEADLINE)
    assert result.exit_code == 0
    assert result.stdout.splitlines() == STREAM


# -- following in another process, line by line -------------------------------------

RUNNER = """
import sys, click
from harness.cli.logs import logs
from harness.cli.sessions import sessions

@click.group()
@click.option("--root")
@click.pass_context
def main(ctx, root):
    ctx.ensure_object(dict)
    ctx.obj["root"] = root

main.add_command(sessions)
main.add_command(logs)
main(sys.argv[1:])
"""


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Follower:
    """The command in a subprocess; its stdout lines arrive on a queue read with deadlines."""

    def __init__(self, root: Path, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        # SIGINT back to SIG_DFL in the child: a suite started as a background job of a
        # non-interactive shell inherits SIGINT ignored, and Python then installs no
        # KeyboardInterrupt handler, so the Ctrl-C test would wait forever.
        self.proc = subprocess.Popen([sys.executable, "-c", RUNNER, "--root", str(root), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                     preexec_fn=_default_sigint)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        for raw in self.proc.stdout:
            self.lines.put(raw.decode().rstrip("\n"))
        self.lines.put(None)

    def next_line(self) -> str:
        try:
            line = self.lines.get(timeout=DEADLINE)
        except queue.Empty:
            pytest.fail(f"no output within {DEADLINE}s")
        assert line is not None, f"exited early: {self.proc.wait()} {self.proc.stderr.read()!r}"
        return line

    def wait(self) -> int:
        try:
            return self.proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running after {DEADLINE}s")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def follow(root):
    started: list[Follower] = []

    def start(*args: str) -> Follower:
        started.append(Follower(root, *args))
        return started[-1]

    yield start
    for f in started:
        f.close()


def append(path: Path, data: str) -> None:
    with open(path, "a") as f:
        f.write(data)


def finish(d: Path, reason: str = "succeeded") -> None:
    (d / "result.tmp").write_text(json.dumps({"reason": reason, "detail": "all good"}))
    os.replace(d / "result.tmp", d / "result.json")


def test_watch_follows_each_event_as_it_is_written(root, follow):
    d = write_attempt(root, "live", 1, started=time.time(), lines=None, reason=None)
    f = follow("sessions", "watch", "live", "--interval", "0.02", "--timeout", "60")
    # The stream file does not exist yet (agent not started); watch waits for it.
    for i, line in enumerate(STREAM[:6], 1):
        half = len(line) // 2
        append(d / "events.jsonl", line[:half])  # a torn write is never shown half
        append(d / "events.jsonl", line[half:] + "\n")
        got = f.next_line()
        assert got.split()[0] == f"#{i}" and "non-json" not in got
        if i == 3:
            assert "Read(/work/repo/worktrees/w1/src/parse.py)" in got
    append(d / "events.jsonl", GARBAGE + "\n")
    assert f.next_line().split()[:2] == ["#7", "non-json"]
    append(d / "events.jsonl", "".join(f"{line}\n" for line in STREAM[6:]))
    rest = [f.next_line() for _ in STREAM[6:]]
    assert rest[-1].split()[1] == "result/success"
    finish(d)
    assert f.next_line() == "ended: succeeded: all good"
    assert f.wait() == 0


def test_logs_follow_prints_raw_lines_as_they_are_written(root, follow):
    d = write_attempt(root, "live", 1, started=time.time(), lines=STREAM[:2], reason=None)
    f = follow("logs", "live", "--follow", "-n", "1", "--interval", "0.02", "--timeout", "60")
    assert f.next_line() == STREAM[1]  # -n 1: only the last existing line
    for line in STREAM[2:5]:
        append(d / "events.jsonl", line + "\n")
        assert f.next_line() == line
    append(d / "events.jsonl", "no newline at the end")
    finish(d)
    assert f.next_line() == "no newline at the end"  # flushed once the attempt ended
    assert f.wait() == 0


def test_watch_stops_quietly_on_ctrl_c(root, follow):
    d = write_attempt(root, "live", 1, started=time.time(), lines=STREAM[:1], reason=None)
    f = follow("sessions", "watch", "live", "--interval", "0.02", "--timeout", "60")
    assert f.next_line().split()[:2] == ["#1", "system/init"]
    append(d / "events.jsonl", STREAM[1] + "\n")
    assert f.next_line().split()[0] == "#2"  # it is in its polling loop now
    f.proc.send_signal(signal.SIGINT)
    assert f.wait() == 0
    assert b"Traceback" not in f.proc.stderr.read()
