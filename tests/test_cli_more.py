"""The conveniences and honest states of the operator's CLI: prompt files, bulk moves,
config show, --version, pause --until, status --watch --json, corrupt heartbeats,
merges refused by a dirty target, the operator's checkout, one source of token counts."""

from __future__ import annotations

import os
import re
import subprocess
import time

import orjson
import pytest
from click.testing import CliRunner

from harness.cli.main import main
from harness.liveness.process import hold_lock
from harness.queue.core import Queue
from tests.wsutil import kill_all, make_workspace

from tests.test_cli import cli, ids_in, ws  # noqa: F401  (ws is a fixture)

pytestmark = pytest.mark.timeout(120)

SIM = '\n[agent]\npreset = "sim"\n'


def failed_with(ws, **reasons: str) -> None:
    """Items that ended in failed/ with the given queue reasons."""
    q = Queue(ws.queue_dir, max_attempts=1)
    for item_id in reasons:
        q.enqueue({"id": item_id, "title": item_id})
    for _ in reasons:
        claim = q.claim()
        claim.fail(reasons[claim.id])


# -- enqueue ----------------------------------------------------------------------------------


def test_enqueue_markdown_prompt_files_with_front_matter(ws, tmp_path):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "login-bug.md").write_text(
        '+++\npriority = "high"\ndepends_on = ["base"]\n[meta]\nteam = "web"\n+++\n'
        "# Fix the login bug\n\nThe form rejects valid emails.\n")
    (tasks / "base.md").write_text("---\npriority: low\nmeta: {\"team\": \"core\"}\n---\n"
                                   "Lay the base.\n")
    (tasks / "Odd Name!.md").write_text("## Tidy up\nTidy.\n")
    result = cli(ws, "enqueue", *sorted(str(p) for p in tasks.iterdir()))
    assert result.exit_code == 0, result.output
    q = Queue(ws.queue_dir)
    login = q.read("ids", "login-bug")
    assert (login.title, login.priority, login.depends_on, login.meta) == (
        "Fix the login bug", 2, ["base"], {"team": "web"})
    assert "The form rejects valid emails." in login.prompt and "+++" not in login.prompt
    base = q.read("ids", "base")
    assert (base.title, base.priority, base.meta) == ("", 8, {"team": "core"})
    assert q.read("ids", "odd-name").title == "Tidy up"
    assert ids_in(ws, "waiting") == ["login-bug"]
    # --prompt-file takes any file name; a bad front matter names the file and the line.
    notes = tmp_path / "notes.txt"
    notes.write_text("# Release notes\nWrite them.\n")
    assert cli(ws, "enqueue", "--prompt-file", str(notes)).exit_code == 0
    assert Queue(ws.queue_dir).read("ids", "notes").title == "Release notes"
    bad = tmp_path / "bad.md"
    bad.write_text("---\npriority high\n---\nx\n")
    refused = cli(ws, "enqueue", str(bad))
    assert refused.exit_code == 2 and f"{bad}:2: expected 'key: value'" in refused.output


def test_ids_are_slugs_of_titles_and_messages_name_the_input(ws, tmp_path):
    first = cli(ws, "enqueue", "--title", "Fix the Login Bug!")
    again = cli(ws, "enqueue", "--title", "Fix the Login Bug!", "--json")
    assert first.exit_code == again.exit_code == 0
    assert orjson.loads(again.stdout)["added"][0]["id"] == "fix-the-login-bug-2"
    assert "fix-the-login-bug" in ids_in(ws, "pending")
    blank = cli(ws, "enqueue", "--id", "blank")
    assert blank.exit_code == 2 and "needs something to do" in blank.output
    empty = tmp_path / "empty.json"
    empty.write_text("")
    nothing = cli(ws, "enqueue", str(empty))
    assert nothing.exit_code == 2 and f"{empty}: no item in it (the file is empty)" in nothing.output
    batch = tmp_path / "tasks.jsonl"
    batch.write_text('{"id": "fix-typo", "title": "a"}\n{"id": "fix-typo", "title": "b"}\n')
    dup = cli(ws, "enqueue", str(batch))
    line = next(x for x in dup.output.splitlines() if x.startswith("refused"))
    # Said once, where it came from, and what to run.
    assert line == (f"refused  {batch}:2 (fix-typo): id 'fix-typo' is already in the queue"
                    " (`parallel-harness show fix-typo`); give another id")


# -- bulk moves -------------------------------------------------------------------------------


def test_retry_by_selector_with_dry_run_and_counts(ws):
    failed_with(ws, a="stalled: no output for stall_after", b="stalled: no output",
                c="failed: exit 1")
    dry = cli(ws, "retry", "--reason", "stalled", "--dry-run")
    assert dry.exit_code == 0 and dry.output.splitlines()[-1] == "would retry 2 item(s)"
    assert ids_in(ws, "failed") == ["a", "b", "c"]
    done = cli(ws, "retry", "--reason", "stalled", "--json")
    assert orjson.loads(done.stdout)["count"] == 2 and ids_in(ws, "failed") == ["c"]
    assert cli(ws, "retry", "--all-failed").output.splitlines()[-1] == "retried 1 item(s)"
    assert ids_in(ws, "pending") == ["a", "b", "c"]
    assert cli(ws, "retry").exit_code == 2


def test_retry_of_a_done_item_says_it_is_done(ws):
    q = Queue(ws.queue_dir)
    q.enqueue({"id": "shipped"})
    q.claim().complete()
    result = cli(ws, "retry", "shipped")
    assert result.exit_code == 2
    assert "cannot retry 'shipped': it is done; `parallel-harness show shipped`" in result.output
    unknown = cli(ws, "retry", "ghost")
    assert unknown.exit_code == 2 and "no item 'ghost'" in unknown.output
    assert "`parallel-harness ls failed`" in unknown.output


def test_cancel_pending_leaves_alone_what_a_running_pool_took_meanwhile(ws, monkeypatch):
    """Found with a 100,000-item backlog under a live pool: `cancel --pending` refused
    (exit 2) every item a worker had claimed or finished since it listed the queue, and
    would have stopped running ones. Those are left alone now, counted, and no error."""
    q = Queue(ws.queue_dir)
    for i in range(4):
        q.enqueue({"id": f"p{i}"})
    real_locate = Queue.locate

    def locate_then_a_worker_claims(self, states=None):
        seen = real_locate(self, states) if states else real_locate(self)
        if states == ("pending", "waiting"):
            taken.append(q.claim())  # p0, right after the listing
        return seen

    taken: list = []
    monkeypatch.setattr(Queue, "locate", locate_then_a_worker_claims)
    result = cli(ws, "cancel", "--pending")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == \
        "cancelled 3 item(s), 1 left alone (they started or ended meanwhile)"
    assert taken[0].name.id == "p0" and ids_in(ws, "claimed") == ["p0"]
    assert ids_in(ws, "failed") == ["p1", "p2", "p3"]
    assert not ws.cancel_dir.exists() or not list(ws.cancel_dir.iterdir())


def test_bulk_cancel_and_retry_list_the_queue_once_not_once_per_item(ws, monkeypatch):
    """A per-item lookup listed every state directory per item: 30 ms an item at 5,000
    pending, hours at 100,000."""
    from harness.queue import names

    q = Queue(ws.queue_dir)
    for i in range(300):
        q.enqueue({"id": f"n{i:03d}"})
    listings = []
    real_entries = names.entries
    monkeypatch.setattr(names, "entries", lambda d: listings.append(d) or real_entries(d))
    assert cli(ws, "cancel", "--pending").output.splitlines()[-1] == "cancelled 300 item(s)"
    assert len(listings) < 20, f"{len(listings)} directory listings for 300 items"
    listings.clear()
    assert cli(ws, "retry", "--all-failed").output.splitlines()[-1] == "retried 300 item(s)"
    assert len(listings) < 20, f"{len(listings)} directory listings for 300 items"


def test_cancel_pending_mark_done_and_purge(ws):
    q = Queue(ws.queue_dir)
    for i in range(3):
        q.enqueue({"id": f"p{i}"})
    q.enqueue({"id": "later", "depends_on": ["p0"]})
    assert cli(ws, "cancel", "--pending", "--dry-run").output.splitlines()[-1] == \
        "would cancel 4 item(s)"
    assert ids_in(ws, "failed") == []
    assert cli(ws, "cancel", "--pending").output.splitlines()[-1] == "cancelled 4 item(s)"
    assert ids_in(ws, "failed") == ["later", "p0", "p1", "p2"]
    marked = cli(ws, "mark-done", "p0", "p1")
    assert marked.exit_code == 0 and marked.output.splitlines()[-1] == "marked done 2 item(s)"
    assert ids_in(ws, "done") == ["p0", "p1"]
    assert not list((ws.queue_dir / "failed").glob("*p0*.reason"))
    again = cli(ws, "mark-done", "p0")
    assert again.exit_code == 2 and "it is done" in again.output
    # purge: by age in done/ (ctime = when it got there); --dry-run changes nothing.
    ws.attempt_dir("p0", 1).mkdir(parents=True)
    assert cli(ws, "purge", "done", "--older-than", "7d").output.splitlines()[-1] == \
        "purged 0 item(s)"
    dry = cli(ws, "purge", "done", "--older-than", "0s", "--dry-run")
    assert dry.output.splitlines()[-1] == "would purge 2 item(s)" and ids_in(ws, "done")
    gone = cli(ws, "purge", "done", "--older-than", "0s", "--json")
    assert orjson.loads(gone.stdout)["count"] == 2
    assert ids_in(ws, "done") == [] and not (ws.queue_dir / "ids" / "p0").exists()
    assert not (ws.logs_dir / "p0").exists()
    assert cli(ws, "fsck").exit_code == 0
    assert cli(ws, "purge", "done", "--older-than", "soon").exit_code == 2


# -- config show, --version, completion ---------------------------------------------------------


def test_config_show_names_where_each_setting_came_from(ws):
    result = cli(ws, "config", "show", "--json", env={"HARNESS_RUN_AGENTS": "6"})
    assert result.exit_code == 0, result.output
    rows = {r["key"]: r for r in orjson.loads(result.stdout)}
    assert rows["run.agents"] == {"key": "run.agents", "value": 6,
                                  "origin": "env HARNESS_RUN_AGENTS"}
    assert rows["run.tick"]["origin"] == f"file {ws.config_file}"
    assert rows["git.verify"] == {"key": "git.verify", "value": "", "origin": "default"}
    text = cli(ws, "config", "show").output
    assert re.search(r"^agent\.preset = \"sim\"\s+# file ", text, re.M), text


def test_version_and_completion_script():
    from importlib.metadata import version

    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output == f"parallel-harness {version('parallel-harness')}\n"
    script = CliRunner().invoke(main, [], prog_name="parallel-harness",
                                env={"_PARALLEL_HARNESS_COMPLETE": "bash_source"})
    assert "complete -o nosort -F" in script.output


# -- pause --until, status --watch --json ------------------------------------------------------


def test_pause_until_prints_a_readable_time_and_status_too(ws):
    result = cli(ws, "pause", "--until", "30m", "CI", "fix")
    assert result.exit_code == 0
    assert re.fullmatch(r"paused until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \S+ \(in (29|30)m\d\ds\): CI fix\n",
                        result.output), result.output
    assert ws.resume_at() and abs(ws.resume_at() - (time.time() + 1800)) < 60
    status = cli(ws, "status").output
    assert re.search(r"^PAUSED   CI fix \(resumes by itself at \d{4}-", status, re.M), status
    assert not re.search(r"\d{10}", status), "no raw epoch"
    assert cli(ws, "pause", "--until", "yesterday-ish").exit_code == 2
    as_json = orjson.loads(cli(ws, "resume", "--json").stdout)
    assert as_json["resumed"] is True


def test_status_watch_json_prints_json_lines(ws):
    Queue(ws.queue_dir).enqueue({"id": "a"})
    result = cli(ws, "status", "--watch", "--json", "--interval", "0.02", "--timeout", "0.2")
    lines = result.output.splitlines()
    assert result.exit_code == 0 and len(lines) == 1, result.output
    assert orjson.loads(lines[0])["counts"]["pending"] == 1


# -- honest states -------------------------------------------------------------------------------


def test_a_corrupt_heartbeat_is_reported(ws):
    ws.heartbeat_file("w2").write_text('{"counter": 3, "wor')
    fd = hold_lock(ws.worker_lock("w2"))
    try:
        snap = orjson.loads(cli(ws, "status", "--json").stdout)
        text = cli(ws, "status").output
    finally:
        os.close(fd)
    assert snap["corrupt_heartbeats"][0]["worker"] == "w2"
    assert snap["corrupt_heartbeats"][0]["alive"] is True
    assert "CORRUPT  state/heartbeats/w2.json: not JSON" in text


def test_show_and_sessions_list_give_the_same_tokens(ws):
    q = Queue(ws.queue_dir)
    q.enqueue({"id": "a", "meta": {"sim": {"seconds": 0.1}}})
    assert cli(ws, "run", "--agents", "1", "--quiet").exit_code == 0
    listed = orjson.loads(cli(ws, "sessions", "list", "--json").stdout)[0]
    shown = orjson.loads(cli(ws, "show", "a", "--json").stdout)["attempts"][0]
    assert listed["tokens"] == shown["tokens"] > 0
    assert listed["cost_usd"] == shown["cost_usd"]
    assert re.search(rf"attempt 1\s+succeeded\s+{listed['tokens']} tok", cli(ws, "show", "a").output)


def git(root, *args):
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                          check=True).stdout


def test_merges_keep_a_clean_checkout_current_and_a_dirty_one_agrees(tmp_path):
    ws = make_workspace(tmp_path / "ws", extra=SIM + '\n[git]\nintegrate = "merge"\n')
    try:
        Queue(ws.queue_dir).enqueue({"id": "one", "meta": {"sim": {"seconds": 0.1}}})
        first = cli(ws, "run", "--agents", "1")
        assert first.exit_code == 0, first.output
        assert "note: main is checked out in" in first.output  # said before the run
        assert re.search(r"checkout \S+ fast-forwarded to [0-9a-f]{12}", first.output)
        assert git(ws.root, "status", "--porcelain", "--untracked-files=no") == ""
        assert git(ws.root, "ls-files", "--error-unmatch", *git(
            ws.root, "diff", "--name-only", "HEAD~1", "HEAD").split())
        # A dirty checkout: the merge is refused, and result.json agrees with the queue.
        (ws.root / "README.md").write_text("local edit\n")
        Queue(ws.queue_dir).enqueue({"id": "two", "meta": {"sim": {"seconds": 0.1}}})
        second = cli(ws, "run", "--agents", "1")
    finally:
        kill_all(ws)
    assert second.exit_code == 1, second.output
    assert "merge of two refused (target_dirty)" in second.output
    reason = Queue(ws.queue_dir).failure_reason("two")
    assert reason.startswith("target_dirty: main is checked out in")
    result = orjson.loads((ws.attempt_dir("two", 1) / "result.json").read_bytes())
    assert (result["reason"], result["queue"]) == ("target_dirty", "failed")
    assert (ws.root / "README.md").read_text() == "local edit\n"
