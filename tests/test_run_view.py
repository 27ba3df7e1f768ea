"""What ``run`` shows: the live line on a terminal, every event, this run's summary, the
final state it leaves in run.json and metrics.prom, and a planned stop read as planned."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import orjson
import pytest
from click.testing import CliRunner

from harness.cli.main import main
from harness.queue.core import Queue
from tests.wsutil import events, heartbeat_of, kill_all, make_workspace, start_coordinator, wait_for

pytestmark = pytest.mark.timeout(120)

SIM = '\n[agent]\npreset = "sim"\n'
MERGE = SIM + '\n[git]\nintegrate = "merge"\n'


@pytest.fixture
def ws(tmp_path):
    ws = make_workspace(tmp_path / "ws", extra=SIM)
    yield ws
    kill_all(ws)


def cli(ws, *args):
    return CliRunner().invoke(main, ["--root", str(ws.root), *args])


def enqueue_quick(ws, n: int, **sim) -> None:
    q = Queue(ws.queue_dir)
    for i in range(n):
        q.enqueue({"id": f"quick-{i}", "meta": {"sim": {"seconds": 0.2, **sim}}})


def read_pty(master: int, proc: subprocess.Popen[bytes], deadline: float) -> bytes:
    """Everything the child writes to the terminal until it exits (or the deadline)."""
    out = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out


def test_run_on_a_terminal_draws_a_live_progress_line_and_ends_cleanly(ws):
    enqueue_quick(ws, 3, seconds=1.0)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "--root", str(ws.root), "run", "--agents", "2"],
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        env={**os.environ, "COLUMNS": "200", "LINES": "40", "TERM": "xterm"})
    os.close(slave)
    try:
        raw = read_pty(master, proc, time.monotonic() + 90)
        code = proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
    text = raw.decode("utf-8", "replace")
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert code == 0, plain[-3000:]
    assert re.search(r"done \d+  failed 0  running \d+  pending \d+  waiting 0  \|  [\d.]+/min"
                     r"  eta \S+  \|  [\d,]+ tokens  \$\d+\.\d\d  \|  \d+ worker\(s\)", plain), plain
    assert "\x1b[" in text, "drawn with terminal escapes"
    assert "\x1b[?25h" in text, "the cursor is shown again when the run ends"
    # The live line is removed before the summary: the summary is the last thing on screen.
    assert plain.rstrip().splitlines()[-2].startswith("summary: 3 done, 0 failed this run"), plain
    assert "quick-0~1 succeeded -> done" in plain


def test_run_prints_the_last_ticks_merges_and_leaves_a_final_state(tmp_path):
    ws = make_workspace(tmp_path / "ws", extra=MERGE)
    try:
        enqueue_quick(ws, 2)
        result = cli(ws, "run", "--agents", "2")
    finally:
        kill_all(ws)
    assert result.exit_code == 0, result.output
    out = result.output
    # The last merge happens on the tick that ends the run: it is printed all the same.
    assert len(re.findall(r"^\d\d:\d\d:\d\d merged quick-\d \(merged, [0-9a-f]{12}\)$", out,
                          re.M)) == 2, out
    assert out.rstrip().splitlines()[-2].startswith("summary: 2 done, 0 failed this run")
    snap = orjson.loads(ws.run_file.read_bytes())
    assert snap["running"] is False and snap["ended_at"] and snap["workers_alive"] == 0
    assert "harness_workers_alive 0" in ws.metrics_file.read_text()
    assert not ws.desired_workers_file.exists()


def test_the_summary_is_of_this_run_with_every_reason_whole(ws):
    q = Queue(ws.queue_dir, max_attempts=1)
    q.enqueue({"id": "earlier"})
    q.claim().fail("from an earlier run")
    long = "the agent gave up " + " ".join(f"because-of-reason-{i}" for i in range(6))
    Queue(ws.queue_dir).enqueue({"id": "broken", "max_attempts": 1, "meta": {
        "sim": {"behavior": "fail", "message": long}}})
    enqueue_quick(ws, 1)
    result = cli(ws, "run", "--agents", "1")
    assert result.exit_code == 1, result.output
    summary = result.output[result.output.index("summary: "):]
    assert summary.startswith("summary: 1 done, 1 failed this run (failed 1) in ")
    assert "earlier" not in summary
    joined = " ".join(summary.split())
    assert long in joined, "the reason is given whole, wrapped"
    assert len(summary.splitlines()) > 3, "wrapped over lines"
    assert max(len(line) for line in summary.splitlines()[:-1]) <= 100


def test_run_quiet_prints_nothing_and_json_prints_only_the_summary(ws):
    enqueue_quick(ws, 1)
    quiet = cli(ws, "run", "--agents", "1", "--quiet")
    assert quiet.exit_code == 0 and quiet.output == ""
    Queue(ws.queue_dir).enqueue({"id": "another", "meta": {"sim": {"seconds": 0.2}}})
    as_json = cli(ws, "run", "--agents", "1", "--json")
    assert as_json.exit_code == 0, as_json.output
    report = orjson.loads(as_json.stdout)
    assert (report["done"], report["failed"], report["attempts"]) == (1, 0, {"succeeded": 1})
    assert report["tokens"] > 0


def test_run_with_no_workers_is_refused_naming_the_setting(ws):
    Queue(ws.queue_dir).enqueue({"id": "a"})
    result = cli(ws, "run", "--agents", "0")
    assert result.exit_code == 2
    assert "0 workers" in result.output and "--agents N" in result.output
    env_result = CliRunner().invoke(main, ["--root", str(ws.root), "run"],
                                    env={"HARNESS_RUN_AGENTS": "0"})
    assert env_result.exit_code == 2 and "HARNESS_RUN_AGENTS" in env_result.output


def test_a_scale_down_stop_reads_as_planned(ws):
    coord = start_coordinator(ws, "--agents", "2", "--forever")
    try:
        wait_for(lambda: heartbeat_of(ws, "w2"), 20, "two workers")
        assert cli(ws, "scale", "1").exit_code == 0
        wait_for(lambda: any(e["event"] == "worker-retired" for e in events(ws)), 20,
                 "w2 retired")
        coord.send_signal(signal.SIGTERM)
        coord.wait(30)
    finally:
        kill_all(ws, coord)
    retired = [e for e in events(ws) if e["event"] == "worker-retired"]
    assert [(e["worker"], e["why"]) for e in retired][:1] == [("w2", "retired by scale-down")]
    assert not [e for e in events(ws) if e["event"] == "worker-dead"]
    out = (ws.root / "coordinator.out").read_text()
    assert "w2 stopped: retired by scale-down" in out and "dead" not in out


def test_a_long_run_of_no_op_items_keeps_a_count_and_the_latest_names():
    """A soak of 100,000 no-op items held every name in memory (the coordinator grew by
    about 300 bytes an item); now a count and the last few names."""
    from harness.cli.render import no_changes_text
    from harness.pool.runstats import NO_CHANGES_LISTED, RunStats

    stats = RunStats()
    n = NO_CHANGES_LISTED + 5
    for i in range(n):
        stats.observe({"event": "attempt-end", "item": f"it-{i}", "queue": "done",
                       "reason": "succeeded", "no_changes": True})
    counts = dict.fromkeys(("pending", "claimed", "waiting", "done", "failed"), 0)
    snap = stats.snapshot(counts, 0, 0, False)
    assert snap["no_changes_total"] == n and len(snap["no_changes"]) == NO_CHANGES_LISTED
    assert snap["no_changes"][-1] == f"it-{n - 1}"
    text = no_changes_text(snap["no_changes"], snap["no_changes_total"])
    assert text.startswith(f"NO CHANGES  {n} done item(s) changed nothing: latest it-5, it-6")
    assert no_changes_text(["a"], 1).startswith("NO CHANGES  1 done item(s) changed nothing: a ")


def test_the_rate_counts_the_completions_of_the_last_ten_minutes():
    import time

    from harness.pool.runstats import THROUGHPUT_WINDOW, RunStats

    now = time.time()
    stats = RunStats(started_at=now - 1000)
    done = [now - THROUGHPUT_WINDOW - 100] + [now - 60 + i for i in range(60)]
    for ts in done:
        stats.observe({"event": "attempt-end", "item": "x", "queue": "done",
                       "reason": "succeeded", "ts": ts})
    counts = dict.fromkeys(("pending", "claimed", "waiting", "done", "failed"), 0)
    counts["pending"] = 12
    snap = stats.snapshot(counts, 1, 1, False)
    assert snap["throughput_per_min"] == 6.0  # 60 in the window of 600 s; the older one gone
    assert snap["eta_s"] == 120
    assert len(stats.done_per_second) <= 61
