"""The operator's CLI: every command, its error paths and exit codes."""

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

from harness.queue import names
from harness.cli.main import main
from harness.queue.core import Queue
from tests.wsutil import events, kill_all, make_workspace, start_coordinator, wait_for

pytestmark = pytest.mark.timeout(120)

SIM = '\n[agent]\npreset = "sim"\n'


@pytest.fixture
def ws(tmp_path):
    ws = make_workspace(tmp_path / "ws", extra=SIM)
    yield ws
    kill_all(ws)


def cli(ws, *args, input=None, env=None):
    return CliRunner().invoke(main, ["--root", str(ws.root), *args], input=input, env=env)


def ids_in(ws, state):
    return sorted(names.parse(e).id for e in names.entries(ws.queue_dir / state))


# -- init ---------------------------------------------------------------------------------


def test_init_scaffolds_a_workspace_and_refuses_to_overwrite(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True)
    result = CliRunner().invoke(main, ["init", str(repo), "--agent", "sim"])
    assert result.exit_code == 0, result.output
    assert "preset = \"sim\"" in (repo / "harness.toml").read_text()
    assert "{{WORK_ITEM}}" in (repo / "prompts" / "bootstrap.md").read_text()
    for d in ("queue/pending", "state/heartbeats", "worktrees"):
        assert (repo / d).is_dir()
    assert "/queue/" in (repo / ".git" / "info" / "exclude").read_text()
    again = CliRunner().invoke(main, ["init", str(repo)])
    assert again.exit_code == 2 and "refusing to overwrite" in again.output
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=other, check=True)
    as_json = CliRunner().invoke(main, ["init", str(other), "--json"])
    assert str(other / "harness.toml") in orjson.loads(as_json.stdout)["created"]


@pytest.mark.parametrize("branch", ["master", "trunk"])
def test_init_targets_the_branch_the_repository_is_on(tmp_path, branch):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", "-b", branch], cwd=repo, check=True)
    assert CliRunner().invoke(main, ["init", str(repo)]).exit_code == 0
    assert f'target_branch = "{branch}"' in (repo / "harness.toml").read_text()


@pytest.mark.parametrize("args", [["status"], ["ls"], ["show", "x"], ["enqueue", "--title", "x"],
                                  ["pause"], ["scale", "2"], ["run"], ["fsck"], ["gc"],
                                  ["metrics"], ["sessions", "list"], ["logs", "x"]])
def test_commands_outside_a_workspace_are_usage_errors_that_write_nothing(tmp_path, args):
    result = CliRunner().invoke(main, ["--root", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert f"{tmp_path} is not a parallel-harness workspace" in result.output
    assert "parallel-harness init" in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_cloned_workspace_without_queue_dirs_is_still_a_workspace(tmp_path):
    (tmp_path / "harness.toml").write_text("[run]\nagents = 1\n")
    assert CliRunner().invoke(main, ["--root", str(tmp_path), "ls"]).exit_code == 0
    result = CliRunner().invoke(main, ["--root", str(tmp_path), "enqueue", "--id", "first",
                                                     "--title", "First"])
    assert result.exit_code == 0, result.output
    assert names.entries(tmp_path / "queue" / "pending")


def test_init_outside_a_git_repository_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(main, ["init", str(tmp_path)])
    assert result.exit_code == 2 and "git init" in result.output


# -- enqueue --------------------------------------------------------------------------------


def test_enqueue_from_options(ws):
    result = cli(ws, "enqueue", "--id", "fix-1", "--title", "Fix it", "--prompt", "do it",
                 "--priority", "high", "--rig", "main-rig")
    assert result.exit_code == 0, result.output
    assert "1 added, 0 refused" in result.output
    item = Queue(ws.queue_dir).read("ids", "fix-1")
    assert (item.priority, item.rig, item.prompt) == (2, "main-rig", "do it")


def test_enqueue_accepts_the_legacy_queue_json(ws, tmp_path):
    legacy = tmp_path / "queue.json"
    legacy.write_text('[{"id": "test-001", "type": "test", "title": "Phase 2 validation",'
                      ' "priority": "high", "rig": "aardwolf_snd"},'
                      ' {"id": "test-002", "type": "task", "title": "Second", "priority": "low",'
                      ' "rig": "aardwolf_snd"}]')
    result = cli(ws, "enqueue", str(legacy))
    assert result.exit_code == 0, result.output
    assert ids_in(ws, "pending") == ["test-001", "test-002"]


def test_enqueue_jsonl_and_stdin_with_dependencies_in_any_order(ws, tmp_path):
    batch = tmp_path / "tasks.jsonl"
    batch.write_text('{"id": "after", "depends_on": ["before"]}\n{"id": "before"}\n')
    assert cli(ws, "enqueue", str(batch)).exit_code == 0
    assert ids_in(ws, "waiting") == ["after"] and ids_in(ws, "pending") == ["before"]
    result = cli(ws, "enqueue", "-", input='{"id": "from-stdin", "title": "x"}')
    assert result.exit_code == 0 and "from-stdin" in ids_in(ws, "pending")


def test_enqueue_reports_refusals_and_atomic_adds_nothing(ws, tmp_path):
    batch = tmp_path / "mixed.json"
    batch.write_text('[{"id": "good"}, {"id": "bad/id"}, {"id": "x", "priority": "urgent"},'
                     ' {"id": "good"}]')
    atomic = cli(ws, "enqueue", "--atomic", str(batch))
    assert atomic.exit_code == 1 and "nothing added" in atomic.output
    assert ids_in(ws, "pending") == []
    partial = cli(ws, "enqueue", "--json", str(batch))
    assert partial.exit_code == 1
    report = orjson.loads(partial.stdout)
    assert [a["id"] for a in report["added"]] == ["good"]
    reasons = " ".join(r["reason"] for r in report["refused"])
    assert "invalid id 'bad/id'" in reasons and "priority" in reasons
    assert "already in the queue" in reasons


def test_enqueue_errors_name_the_input(ws, tmp_path):
    junk = tmp_path / "junk.jsonl"
    junk.write_text('{"id": "a"}\nnot json\n')
    result = cli(ws, "enqueue", str(junk))
    assert result.exit_code == 2 and "junk.jsonl:2" in result.output
    assert cli(ws, "enqueue").exit_code == 2


def test_enqueue_refuses_a_nul_in_a_jsonl_line_naming_file_line_and_field(ws, tmp_path):
    """The NUL check screens the dumped bytes for \\u0000 before walking the fields: the
    refusal must still name the file, the line and the field; --atomic adds nothing,
    without it the other lines are added. A literal backslash-u0000 (no NUL) is no hit."""
    lines = ['{"id": "a", "title": "x"}', '{"id": "b", "meta": {"k\\u0000": 1}}',
             '{"id": "c", "title": "not a NUL: \\\\u0000"}']
    src = tmp_path / "nul.jsonl"
    src.write_text("\n".join(lines) + "\n")
    atomic = cli(ws, "enqueue", "--atomic", str(src))
    assert atomic.exit_code == 1 and "nothing added" in atomic.output
    assert f"{src}:2 (b)" in atomic.output and "field 'meta'" in atomic.output
    assert ids_in(ws, "pending") == [] and os.listdir(ws.queue_dir / "ids") == []
    partial = cli(ws, "enqueue", str(src))
    assert partial.exit_code == 1 and "field 'meta'" in partial.output
    assert sorted(ids_in(ws, "pending")) == ["a", "c"]
    doc = orjson.loads((ws.queue_dir / "ids" / "c").read_bytes())
    assert doc["title"] == "not a NUL: \\u0000"


def test_enqueue_checks_meta_keys_the_prompt_template_uses(ws):
    (ws.root / "prompts" / "bootstrap.md").write_text("Ticket {{meta.ticket}}: {{TITLE}}\n")
    missing = cli(ws, "enqueue", "--id", "a", "--title", "t")
    assert missing.exit_code == 1 and "{{meta.ticket}}" in missing.output
    ok = cli(ws, "enqueue", "-", input='{"id": "b", "meta": {"ticket": "T-1"}}')
    assert ok.exit_code == 0, ok.output


# -- ls, show, retry, cancel, pause, resume, scale ----------------------------------------------


def test_ls_and_show(ws):
    q = Queue(ws.queue_dir)
    q.enqueue({"id": "a", "title": "Alpha", "priority": "high"})
    q.enqueue({"id": "b"})
    result = cli(ws, "ls")
    assert result.exit_code == 0 and result.stdout.index("a ") < result.stdout.index("b ")
    rows = orjson.loads(cli(ws, "ls", "pending", "--json").stdout)
    assert [(r["id"], r["priority"], r["attempt"]) for r in rows] == [("a", 2, 1), ("b", 5, 1)]
    shown = cli(ws, "show", "a")
    assert shown.exit_code == 0 and "[pending]" in shown.output and "Alpha" in shown.output
    assert orjson.loads(cli(ws, "show", "a", "--json").stdout)["state"] == "pending"
    unknown = cli(ws, "show", "nope")
    assert unknown.exit_code == 2 and "'nope'" in unknown.output
    assert cli(ws, "ls", "sideways").exit_code == 2
    # Attempts without result.json: the one a heartbeat names is running, the other unfinished.
    for n in (1, 2):
        ws.attempt_dir("a", n).mkdir(parents=True)
    ws.heartbeats_dir.mkdir(parents=True, exist_ok=True)
    ws.heartbeat_file("w1").write_bytes(orjson.dumps({"item_id": "a", "attempt": 2}))

    def shown_attempts():
        lines = cli(ws, "show", "a").output.splitlines()
        return [line.split()[:3] for line in lines if line.startswith("  attempt")]

    # A heartbeat alone proves nothing: its worker may have died. Running = the worker
    # holds its slot lock too.
    assert shown_attempts() == [["attempt", "1", "unfinished"], ["attempt", "2", "unfinished"]]
    from harness.liveness.process import hold_lock

    fd = hold_lock(ws.worker_lock("w1"))
    try:
        assert shown_attempts() == [["attempt", "1", "unfinished"], ["attempt", "2", "running"]]
        listed = cli(ws, "sessions", "list").output
        assert re.search(r"^a\s+2\s+running", listed, re.M), listed
    finally:
        os.close(fd)


def test_retry_and_cancel_of_items_not_running(ws):
    q = Queue(ws.queue_dir, max_attempts=1)
    q.enqueue({"id": "dead"})
    q.enqueue({"id": "later"})
    q.claim().fail("boom")
    later = cli(ws, "retry", "later")
    assert later.exit_code == 2 and "cannot retry 'later': it is pending already" in later.output
    result = cli(ws, "retry", "dead")
    assert result.exit_code == 0 and re.search(r"^retried\s+dead: queue/pending/", result.output,
                                               re.M), result.output
    name = Queue(ws.queue_dir).find("dead")
    assert (name.attempt, name.counted) == (2, 1)
    cancel = cli(ws, "cancel", "later")
    assert cancel.exit_code == 0
    assert "cancelled" in Queue(ws.queue_dir).failure_reason("later")
    assert cli(ws, "cancel", "nope").exit_code == 2


def test_pause_resume_scale_write_the_operator_files(ws):
    assert cli(ws, "pause", "database", "migration").exit_code == 0
    assert ws.interrupt_file.read_text().strip() == "database migration"
    assert "PAUSED   database migration" in cli(ws, "status").output
    assert cli(ws, "resume").output.strip() == "resumed"
    assert not ws.interrupt_file.exists()
    assert cli(ws, "resume").output.strip() == "was not paused"
    # scale is for a running coordinator's pool: refused, saying so, when none runs.
    alone = cli(ws, "scale", "5")
    assert alone.exit_code == 2 and "no coordinator is running" in alone.output
    assert "run --agents 5" in alone.output and not ws.desired_workers_file.exists()
    from harness.liveness.process import hold_lock

    fd = hold_lock(ws.coordinator_lock)  # as a running coordinator holds it
    try:
        assert cli(ws, "scale", "5").exit_code == 0
    finally:
        os.close(fd)
    assert ws.desired_workers_file.read_text().strip() == "5"
    assert cli(ws, "scale", "-1").exit_code == 2
    Queue(ws.queue_dir).enqueue({"id": "unwanted"})
    assert cli(ws, "cancel", "unwanted").exit_code == 0
    assert cli(ws, "retry", "unwanted").exit_code == 0
    # Each action is in the event log (an audit trail that a running `run` prints);
    # refused ones and the no-op resume are not.
    from harness.cli.render import render_event

    logged = [e for e in events(ws) if e.get("source") == "operator"]
    assert [e["event"] for e in logged] == ["paused", "resumed", "scaled", "cancelled", "retried"]
    assert [render_event(e)[9:] for e in logged] == [
        "PAUSED by the operator: database migration", "resumed: parallel-harness resume",
        "operator: scale to 5 worker(s)", "operator: cancel unwanted",
        "operator: retry unwanted"]


# -- fsck ---------------------------------------------------------------------------------------


def test_fsck_reports_and_repairs(ws):
    q = Queue(ws.queue_dir)
    name = q.enqueue({"id": "a"})
    assert cli(ws, "fsck").exit_code == 0
    os.link(q.dir("pending") / str(name), q.dir("claimed") / str(name))  # a dead claimant
    (q.dir("pending") / "dropped.json").write_text("{broken")
    bad = cli(ws, "fsck", "--json")
    assert bad.exit_code == 1
    codes = {v["code"] for v in orjson.loads(bad.stdout)["violations"]}
    assert {"two-live-names", "foreign"} <= codes
    fixed = cli(ws, "fsck", "--repair")
    assert fixed.exit_code == 0, fixed.output
    assert "revoked claimed/" in fixed.output and "moved pending/dropped.json" in fixed.output


def test_fsck_repair_refuses_while_a_coordinator_runs(ws):
    coord = start_coordinator(ws, "--agents", "1", "--forever")
    try:
        wait_for(ws.coordinator_file.exists, 20, "the coordinator to start")
        result = cli(ws, "fsck", "--repair")
        assert result.exit_code == 2 and "coordinator is running" in result.output
    finally:
        coord.send_signal(signal.SIGTERM)
        coord.wait(30)
        kill_all(ws, coord)


# -- status during a live run -------------------------------------------------------------------


def scan(ws):
    return {s: len(names.entries(ws.queue_dir / s)) for s in names.STATES}


def test_status_json_agrees_with_a_directory_scan_and_cancel_stops_a_running_agent(ws):
    q = Queue(ws.queue_dir)
    for i in range(6):
        q.enqueue({"id": f"slow-{i}", "meta": {"sim": {"behavior": "slow", "seconds": 1.5}}})
    q.enqueue({"id": "forever", "priority": 0, "meta": {"sim": {"behavior": "slow",
                                                                 "seconds": 600}}})
    coord = start_coordinator(ws, "--agents", "3")
    try:
        wait_for(lambda: "forever" in ids_in(ws, "claimed") and all(
            ws.heartbeat_file(w).exists() for w in ("w1", "w2", "w3")), 20, "three workers")
        for _ in range(3):
            before = scan(ws)
            snapshot = orjson.loads(cli(ws, "status", "--json").stdout)
            after = scan(ws)
            for state in names.STATES:  # the snapshot lies between two scans
                lo, hi = sorted((before[state], after[state]))
                assert lo <= snapshot["counts"][state] <= hi, (state, before, snapshot, after)
            assert {w["worker"] for w in snapshot["workers"]} == {"w1", "w2", "w3"}
        result = cli(ws, "cancel", "forever")
        assert result.exit_code == 0 and "requested: its worker stops the agent" in result.output
        wait_for(lambda: "forever" in ids_in(ws, "failed"), 20, "the cancelled item in failed/")
        assert coord.wait(60) == 1
    finally:
        kill_all(ws, coord)
    assert "cancelled" in Queue(ws.queue_dir).failure_reason("forever")
    result = orjson.loads((ws.attempt_dir("forever", 1) / "result.json").read_bytes())
    assert result["reason"] == "cancelled"
    assert ids_in(ws, "done") == [f"slow-{i}" for i in range(6)]


def test_status_lists_the_latest_failures_by_when_they_failed_not_when_enqueued(ws):
    # The item files are never modified, so their mtime is the enqueue's: the order of
    # failure is the ctime the rename into failed/ sets (and status needs no path per item).
    q = Queue(ws.queue_dir)
    for i in range(4):
        q.enqueue({"id": f"f{i}"})
    for i in (2, 0, 3, 1):
        q.cancel_unclaimed(f"f{i}", f"cancelled {i}")
        time.sleep(0.05)  # ctimes come from a coarse clock: keep them apart
    snapshot = orjson.loads(cli(ws, "status", "--json").stdout)
    assert [f["item"] for f in snapshot["recent_failures"]] == ["f1", "f3", "f0", "f2"]
    assert snapshot["recent_failures"][0]["reason"] == "cancelled 1"
    assert snapshot["counts"]["failed"] == 4


def test_status_watch_draws_the_workers_in_a_terminal(ws):
    q = Queue(ws.queue_dir)
    for i in range(3):
        q.enqueue({"id": f"watched-{i}", "meta": {"sim": {"behavior": "slow", "seconds": 8}}})
    coord = start_coordinator(ws, "--agents", "2")
    master, slave = pty.openpty()
    watcher = None
    try:
        wait_for(lambda: len(ids_in(ws, "claimed")) == 2, 20, "two running items")
        watcher = subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "--root", str(ws.root), "status", "--watch",
             "--interval", "0.2", "--timeout", "20"],
            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
            env={**os.environ, "COLUMNS": "160", "LINES": "40", "TERM": "xterm"})
        os.close(slave)
        screen = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    screen += os.read(master, 65536)
                except OSError:
                    break
            text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode("utf-8", "replace"))
            if "w1" in text and "w2" in text and "watched-" in text:
                break
        assert "w1" in text and "w2" in text and "watched-" in text, text[-2000:]
        assert "\x1b[" in screen.decode("utf-8", "replace"), "drawn with terminal escapes"
    finally:
        if watcher is not None and watcher.poll() is None:
            os.killpg(watcher.pid, signal.SIGKILL)
            watcher.wait()
        os.close(master)
        coord.send_signal(signal.SIGTERM)
        coord.wait(30)
        kill_all(ws, coord)


def test_status_watch_without_a_terminal_prints_a_line_per_change(ws):
    q = Queue(ws.queue_dir, max_attempts=1)
    q.enqueue({"id": "broken"})
    q.enqueue({"id": "a"})
    q.claim().fail("boom")
    # Nothing changes during the watch: one progress line and the failure once, however
    # many times it polls.
    result = cli(ws, "status", "--watch", "--interval", "0.02", "--timeout", "0.3")
    assert result.exit_code == 0 and "\x1b[" not in result.output
    lines = result.output.splitlines()
    assert len(lines) == 2, result.output
    assert re.fullmatch(r"\d\d:\d\d:\d\d pending 1  claimed 0  waiting 0  done 0  failed 1",
                        lines[0])
    assert re.fullmatch(r"\d\d:\d\d:\d\d failed broken: boom", lines[1])


def test_render_event_shows_what_an_operator_follows_and_skips_the_rest():
    from harness.cli.render import render_event

    ts = time.mktime((2026, 11, 22, 6, 30, 5, 0, 0, -1))
    end = {"ts": ts, "event": "attempt-end", "worker": "w2", "item": "fix-a", "attempt": 3,
           "reason": "stalled", "queue": "retry", "detail": "no event for 300s"}
    assert render_event(end) == "06:30:05 w2 fix-a~3 stalled -> retry: no event for 300s"
    revoke = {"ts": ts, "event": "revoke", "item": "5.18ea4ca34480c2cd.t1~2", "why": "worker died",
              "outcome": "retry"}
    assert render_event(revoke) == "06:30:05 revoked t1~2 (worker died) -> retry"
    dead = {"ts": ts, "event": "host-dead", "host": "hostA-1f2e", "silent_s": 45.2}
    assert render_event(dead) == \
        "06:30:05 host hostA-1f2e declared dead (its lease silent 45.2s): its claims are taken back"
    wait = {"ts": ts, "event": "host-lease-wait", "hosts": ["twin"], "up_to_s": 300.0}
    assert render_event(wait).startswith("06:30:05 waiting up to 5m00s for the lease of twin")
    fenced = {"ts": ts, "event": "host-fenced", "host": "hostA-1f2e", "by": "hostB-9c0d"}
    assert "declared dead by hostB-9c0d: stopping" in render_event(fenced)
    shown = {"revoke": {"item": "x", "why": "orphaned", "outcome": "retry"},
             "worker-dead": {"worker": "w1", "why": "lock free"},
             "worker-adopted": {"worker": "w1", "pid": 7},
             "rate-limited": {"worker": "w1", "item": "x", "resume_at": "12:00"},
             "circuit-open": {"reason": "circuit breaker: 5 consecutive failed attempts"},
             "budget-reached": {"tokens": 10, "cost_usd": 1.5},
             "resumed": {"why": "rate-limit reset time reached"},
             "merged": {"item": "x", "status": "merged", "sha": "ab" * 20},
             "merge-conflict": {"item": "x", "paths": ["a.txt"]},
             "merge-failed": {"item": "x", "error": "boom"},
             "memory-floor": {"held": True, "free_mb": 100}}
    for kind, fields in shown.items():
        line = render_event({"ts": ts, "event": kind, **fields})
        assert line and line.startswith("06:30:05 ") and "None" not in line, (kind, line)
    budget = render_event({"ts": ts, "event": "budget-reached", "tokens": 10, "cost_usd": 1.5})
    assert budget == "06:30:05 PAUSED budget-reached: 10 tokens, $1.50"
    circuit = render_event({"ts": ts, "event": "circuit-open", "reason": "circuit breaker: 5"})
    assert circuit == "06:30:05 PAUSED circuit breaker: 5"
    for quiet in ("claim", "agent-start", "worker-spawn", "worker-start", "heartbeat", "new"):
        assert render_event({"ts": ts, "event": quiet, "item": "x"}) is None


def test_progress_line_names_each_workers_item_and_the_pause():
    from harness.cli.live import progress_line

    snapshot = {"counts": dict(pending=3, claimed=1, waiting=0, done=2, failed=0),
                "workers": [{"worker": "w1", "alive": True, "item": "fix-a", "attempt": 2},
                            {"worker": "w2", "alive": True, "item": None, "attempt": None},
                            {"worker": "w3", "alive": False, "item": "x", "attempt": 1}],
                "paused": "quota\nresets at 12:00", "recent_failures": []}
    assert progress_line(snapshot) == (
        "pending 3  claimed 1  waiting 0  done 2  failed 0  |  w1 fix-a~2  w2 -  w3 DEAD"
        "  |  PAUSED quota | resets at 12:00")


# -- demo -----------------------------------------------------------------------------------------


def test_demo_fast_summary_matches_the_disk(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "demo", "--agents", "3", "--fast",
                           "--dir", str(tmp_path / "demo")], capture_output=True, text=True,
                          timeout=110)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    root = re.search(r"^kept: (\S+)$", proc.stdout, re.M).group(1)
    assert root == str(tmp_path / "demo"), "--dir is where the demo is built, and kept"
    refused = CliRunner().invoke(main, ["demo", "--dir", root])
    assert refused.exit_code == 2 and "is not empty" in refused.output
    try:
        summary = re.search(r"^summary: (\d+) done, (\d+) failed", proc.stdout, re.M)
        on_disk = {s: len(names.entries(os.path.join(root, "queue", s))) for s in names.STATES}
        assert (int(summary.group(1)), int(summary.group(2))) == (on_disk["done"],
                                                                   on_disk["failed"])
        assert on_disk["pending"] == on_disk["claimed"] == on_disk["waiting"] == 0
        assert "as designed" in proc.stdout
        assert "queue/claimed" in proc.stdout and "state/heartbeats" in proc.stdout
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)
