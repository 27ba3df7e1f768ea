"""Results reach a git remote (issue 13): push, merge-push and pr against real remotes on this
machine: bare repositories over file paths and `git daemon` on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from harness.queue import names
from harness.queue.core import Queue
from tests.remotes import Daemon, bare_remote, clone_workspace, contains, git, start_human
from tests.wsutil import (FAST_CONFIG, events, kill_all, make_workspace, start_coordinator,
                          wait_for)

pytestmark = pytest.mark.timeout(180)


def remote_workspace(root: Path, remote: str, integrate: str, extra: str = "",
                     clone: bool = True) -> object:
    """A workspace in its own clone of ``remote`` (a repo of its own with ``clone=False``,
    for a remote that cannot be reached)."""
    config = (FAST_CONFIG.format(stale_after=2.0, stale_kill_grace=30.0, shutdown_grace=2.0,
                                 coordinator_gone_after=30.0, max_attempts=3)
              + f'\n[agent]\npreset = "shell"\n\n[git]\nremote = "{remote}"\n'
              f'integrate = "{integrate}"\nfetch_interval = 0\n{extra}')
    if not clone:
        ws = make_workspace(root)
        (root / "harness.toml").write_text(config)
        return ws
    return clone_workspace(root, remote, config)


def add_items(ws, ids, command="echo {id} > {id}.txt"):
    queue = Queue(ws.queue_dir)
    for item_id in ids:
        queue.enqueue({"id": item_id, "command": command.format(id=item_id)})


def run(ws, *args, timeout=150, env=None) -> int:
    log = open(ws.root / "coordinator.out", "ab")
    with log:
        proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "--root", str(ws.root),
                                 "run", *args], stdout=log, stderr=log, start_new_session=True,
                                env=env)
    try:
        return proc.wait(timeout=timeout)
    finally:
        kill_all(ws, proc)


def result_of(ws, item_id):
    name = names.parse(next(e for e in names.entries(ws.queue_dir / "done")
                            if f".{item_id}~" in e))
    return orjson.loads((ws.attempt_dir(item_id, name.attempt) / "result.json").read_bytes())


def in_state(ws, state):
    return sorted(names.parse(e).id for e in names.entries(ws.queue_dir / state))


@pytest.fixture
def remote(tmp_path):
    seed = tmp_path / "seed"
    make_workspace(seed)  # a repo with one commit on main
    return bare_remote(tmp_path / "remote.git", seed)


# -- push ------------------------------------------------------------------------------------


def test_push_delivers_each_branch_and_confirms_it(tmp_path, remote):
    ws = remote_workspace(tmp_path / "ws", str(remote), "push")
    add_items(ws, ["a", "b", "c"])
    assert run(ws, "--agents", "2") == 0, (ws.root / "coordinator.out").read_text()
    for item_id in "abc":
        local = git(ws.root, "rev-parse", f"harness/{item_id}").stdout.strip()
        assert git(remote, "rev-parse", f"harness/{item_id}").stdout.strip() == local
        assert result_of(ws, item_id)["pushed"]["sha"] == local
    assert len([e for e in events(ws) if e["event"] == "pushed"]) == 3


def test_push_never_overwrites_a_human_commit_on_the_branch(tmp_path, remote):
    human = tmp_path / "human"
    git(tmp_path, "clone", "-q", str(remote), str(human))
    (human / "mine.txt").write_text("a human's work\n")
    git(human, "add", "mine.txt")
    git(human, "commit", "-q", "-m", "human work on the branch")
    git(human, "push", "-q", "origin", "HEAD:refs/heads/harness/taken")
    theirs = git(human, "rev-parse", "HEAD").stdout.strip()
    ws = remote_workspace(tmp_path / "ws", str(remote), "push")
    add_items(ws, ["taken"])
    assert run(ws, "--agents", "1") == 1
    assert git(remote, "rev-parse", "harness/taken").stdout.strip() == theirs
    reason = next((ws.queue_dir / "failed").glob("*.reason")).read_text()
    assert reason.startswith("push_rejected:") and "did not push" in reason


# -- merge-push ------------------------------------------------------------------------------


def test_merge_push_lands_every_item_on_the_remote_target_and_attempts_start_fresh(
        tmp_path, remote):
    human = tmp_path / "human"
    git(tmp_path, "clone", "-q", str(remote), str(human))
    (human / "base.txt").write_text("moved by a human before the run\n")
    git(human, "add", "base.txt")
    git(human, "commit", "-q", "-m", "human")
    git(human, "push", "-q", "origin", "HEAD:main")
    tip = git(human, "rev-parse", "HEAD").stdout.strip()
    ws = remote_workspace(tmp_path / "ws", str(remote), "merge-push")
    add_items(ws, ["one", "two", "three"])
    assert run(ws, "--agents", "2") == 0, (ws.root / "coordinator.out").read_text()
    for item_id in ("one", "two", "three"):
        base = result_of(ws, item_id)["base"]  # started from the remote, not local main
        assert git(ws.root, "merge-base", "--is-ancestor", tip, base, check=False).returncode == 0
        assert contains(remote, git(ws.root, "rev-parse", f"harness/{item_id}").stdout.strip())
    assert contains(remote, tip)
    assert [e["event"] for e in events(ws)].count("merged-pushed") == 3


def test_merge_push_conflict_fails_the_item_and_pushes_its_branch(tmp_path, remote):
    ws = remote_workspace(tmp_path / "ws", str(remote), "merge-push")
    # Both attempts start from the same commit (no fetch before them), so whichever is
    # delivered second conflicts with the first.
    text = (ws.root / "harness.toml").read_text()
    (ws.root / "harness.toml").write_text(text.replace("fetch_interval = 0", "fetch_interval = 3600"))
    (ws.root / ".git" / "harness-fetch.stamp").touch()
    add_items(ws, ["left", "right"], command="echo {id} > shared.txt")
    assert run(ws, "--agents", "2") == 1
    failed = in_state(ws, "failed")
    assert len(failed) == 1
    reason = next((ws.queue_dir / "failed").glob("*.reason")).read_text()
    assert reason.startswith("conflict:") and "shared.txt" in reason
    assert git(remote, "rev-parse", "--verify", f"harness/{failed[0]}", check=False).returncode == 0


def test_a_pre_receive_hook_refusal_is_push_rejected_with_gits_message(tmp_path, remote):
    hook = remote / "hooks" / "pre-receive"
    hook.write_text("#!/bin/sh\nwhile read old new ref; do\n"
                    "  if git diff --name-only $old $new 2>/dev/null | grep -q forbidden; then\n"
                    "    echo 'policy: no forbidden files' >&2; exit 1; fi\ndone\n")
    hook.chmod(0o755)
    ws = remote_workspace(tmp_path / "ws", str(remote), "merge-push")
    add_items(ws, ["fine", "forbidden"])
    assert run(ws, "--agents", "1") == 1
    assert in_state(ws, "done") == ["fine"] and in_state(ws, "failed") == ["forbidden"]
    reason = next((ws.queue_dir / "failed").glob("*.reason")).read_text()
    assert reason.startswith("push_rejected:") and "policy: no forbidden files" in reason


def test_contention_two_pools_and_a_human_push_to_one_remote_and_nothing_is_lost(tmp_path):
    """Two workspaces (two pools) and a person push to one remote over git daemon at once,
    56 items: every done item's commit and every human commit is on the remote's main
    (bench/remote_contention.py races up to 8 pools)."""
    seed = tmp_path / "seed"
    make_workspace(seed)
    base = tmp_path / "served"
    base.mkdir()
    remote = bare_remote(base / "team.git", seed)
    daemon = Daemon(base)
    try:
        url = daemon.url("team.git")
        pools = []
        for n in (1, 2):
            ws = remote_workspace(tmp_path / f"pool{n}", url, "merge-push", "push_retries = 50\n")
            add_items(ws, [f"p{n}-{i:02d}" for i in range(28)])
            pools.append((ws, start_coordinator(ws, "--agents", "2")))
        human = start_human(url, tmp_path / "human", 8)
        codes = [proc.wait(timeout=170) for _, proc in pools]
        out, err = human.communicate(timeout=60)
        assert human.returncode == 0, err
    finally:
        for ws, proc in pools:
            kill_all(ws, proc)
        daemon.stop()
    assert codes == [0, 0], [(ws.root / "coordinator.out").read_text()[-2000:] for ws, _ in pools]
    for ws, _ in pools:
        assert len(in_state(ws, "done")) == 28
        for item_id in in_state(ws, "done"):
            sha = git(ws.root, "rev-parse", f"harness/{item_id}").stdout.strip()
            assert contains(remote, sha), f"{item_id} ({sha}) is not on the remote's main"
    for sha in out.split():
        assert contains(remote, sha), f"the human's {sha} was lost"
    retries = sum(e.get("retries") or 0 for ws, _ in pools for e in events(ws)
                  if e["event"] == "merged-pushed")
    assert retries > 0, "no push ever raced: the test did not contend"


def test_an_unreachable_remote_pauses_delivery_and_it_resumes_when_the_remote_is_back(
        tmp_path, remote):
    ws = remote_workspace(tmp_path / "ws", str(remote), "merge-push")
    add_items(ws, ["before"])
    hidden = remote.with_name("remote-away.git")
    proc = start_coordinator(ws, "--agents", "1", "--forever")
    try:
        wait_for(lambda: "merged-pushed" in [e["event"] for e in events(ws)], 60, "a delivery")
        remote.rename(hidden)
        add_items(ws, ["during"])
        wait_for(lambda: "remote-unreachable" in [e["event"] for e in events(ws)], 60,
                 "the pause")
        assert "integration paused" in (ws.interrupt_reason() or "")
        assert in_state(ws, "done") == ["before", "during"]
        wait_for(lambda: "harness_integration_lag 1" in ws.metrics_file.read_text(), 30,
                 "metrics.prom to show the item not yet on the remote")
        status = subprocess.run([sys.executable, "-m", "harness.cli", "--root", str(ws.root),
                                 "status"], capture_output=True, text=True).stdout
        assert "1 done item(s) not yet integrated" in status, status
        hidden.rename(remote)
        wait_for(lambda: "remote-reachable" in [e["event"] for e in events(ws)], 60,
                 "the remote to be seen again")
        wait_for(lambda: [e["event"] for e in events(ws)].count("merged-pushed") == 2, 60,
                 "the second delivery")
        assert ws.interrupt_reason() is None
        proc.terminate()
        proc.wait(timeout=30)
    finally:
        kill_all(ws, proc)
    assert contains(remote, git(ws.root, "rev-parse", "harness/during").stdout.strip())


@pytest.mark.parametrize("point", ["fetch.after", "push.before", "push.after"])
def test_a_coordinator_killed_mid_push_delivers_each_item_exactly_once_after_restart(
        tmp_path, remote, point):
    ws = remote_workspace(tmp_path / "ws", str(remote), "merge-push")
    # The workers inherit the failpoint: a fresh fetch stamp keeps them from fetching, so
    # only the coordinator's integration reaches fetch.after.
    text = (ws.root / "harness.toml").read_text().replace("fetch_interval = 0", "fetch_interval = 3600")
    (ws.root / "harness.toml").write_text(text)
    (ws.root / ".git" / "harness-fetch.stamp").touch()
    add_items(ws, ["k1", "k2", "k3"])
    killed = run(ws, "--agents", "1", env={**os.environ, "HARNESS_FAILPOINTS": f"{point}=kill"})
    assert killed != 0
    assert run(ws, "--agents", "1") == 0, (ws.root / "coordinator.out").read_text()
    assert in_state(ws, "done") == ["k1", "k2", "k3"]
    for item_id in ("k1", "k2", "k3"):
        assert contains(remote, git(ws.root, "rev-parse", f"harness/{item_id}").stdout.strip())
    merges = git(remote, "log", "--merges", "--format=%s", "main").stdout.split("\n")
    for item_id in ("k1", "k2", "k3"):
        assert sum(1 for m in merges if m == f"harness: merge {item_id}") <= 1


def test_a_password_in_the_remote_url_is_never_logged(tmp_path):
    ws = remote_workspace(tmp_path / "ws", "http://alice:s3cr3t-token@127.0.0.1:9/x.git",
                          "push", "remote_wait = 1\n", clone=False)
    add_items(ws, ["secret-keeper"])
    assert run(ws, "--agents", "1") == 1
    assert "remote-unreachable" in [e["event"] for e in events(ws)]
    for path in [ws.events_file, ws.root / "coordinator.out", *ws.logs_dir.rglob("*")]:
        if path.is_file():
            assert "s3cr3t-token" not in path.read_text(errors="replace"), path


# -- pr --------------------------------------------------------------------------------------


def test_pr_pushes_then_records_the_url_the_command_prints_and_show_shows_it(tmp_path, remote):
    ws = remote_workspace(tmp_path / "ws", str(remote), "pr",
                          'pr_command = ["/bin/sh", "-c", "test -s \\"$1\\" && echo opened'
                          ' https://forge.invalid/pull/$0", "{{BRANCH}}", "{{SUMMARY}}"]\n')
    add_items(ws, ["reviewed"])
    assert run(ws, "--agents", "1") == 0, (ws.root / "coordinator.out").read_text()
    url = "https://forge.invalid/pull/harness/reviewed"
    assert result_of(ws, "reviewed")["pr_url"] == url
    assert git(remote, "rev-parse", "--verify", "harness/reviewed", check=False).returncode == 0
    shown = subprocess.run([sys.executable, "-m", "harness.cli", "--root", str(ws.root), "show",
                            "reviewed"], capture_output=True, text=True)
    assert f"pull request {url}" in shown.stdout and "pushed" in shown.stdout


def test_a_failing_pr_command_is_pr_failed_with_its_message(tmp_path, remote):
    ws = remote_workspace(tmp_path / "ws", str(remote), "pr",
                          'pr_command = ["/bin/sh", "-c", "echo no forge here >&2; exit 4"]\n')
    add_items(ws, ["unreviewed"])
    assert run(ws, "--agents", "1") == 1
    reason = next((ws.queue_dir / "failed").glob("*.reason")).read_text()
    assert reason.startswith("pr_failed:") and "no forge here" in reason and "exited 4" in reason


def test_doctor_checks_the_remote_answers(tmp_path, remote):
    ws = remote_workspace(tmp_path / "ws", str(remote), "merge-push")
    ok = subprocess.run([sys.executable, "-m", "harness.cli", "--root", str(ws.root), "doctor"],
                        capture_output=True, text=True).stdout
    assert any(line.startswith("PASS") and "remote" in line and "answers" in line
               for line in ok.splitlines()), ok
    gone = remote_workspace(tmp_path / "ws2", str(tmp_path / "no-such.git"), "push", clone=False)
    bad = subprocess.run([sys.executable, "-m", "harness.cli", "--root", str(gone.root),
                          "doctor"], capture_output=True, text=True)
    assert bad.returncode == 1
    assert any(line.startswith("FAIL") and "remote" in line and "unreachable" in line
               for line in bad.stdout.splitlines()), bad.stdout
