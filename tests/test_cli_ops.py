"""doctor, gc and metrics (harness/cli/doctor.py, gc.py, status.py) and the Prometheus rendering
(harness/pool/metrics.py)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from harness.cli.main import main
from harness.cli import doctor as cli_doctor
from harness.repo import worktrees
from harness.liveness.process import hold_lock
from harness.pool.metrics import METRICS_FILE, render_prometheus, write_prometheus
from harness.agents.prompts import DEFAULT_BOOTSTRAP
from harness.queue.core import Queue
from harness.workspace import Workspace

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}

CONFIG = """\
[run]
agents = {agents}
memory_floor_mb = 0

[agent]
preset = "{preset}"
"""


cli = main  # the real command group: every command reads ctx.obj['root']


def invoke(ws_root: Path, *args: str):
    return CliRunner().invoke(cli, ["--root", str(ws_root), *args], catch_exceptions=False)


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, env={**os.environ, **GIT_ENV}, check=True,
                          capture_output=True, text=True).stdout


def make_ws(root: Path, *, preset: str = "sim", agents: int = 2, git_repo: bool = True,
            config: str | None = None) -> Workspace:
    root.mkdir(parents=True, exist_ok=True)
    if git_repo:
        (root / "README.md").write_text("# test\n")
        git(root, "init", "-q", "-b", "main")
        git(root, "add", "README.md")
        git(root, "commit", "-q", "-m", "initial")
        with (root / ".git" / "info" / "exclude").open("a") as f:
            f.write("/harness.toml\n/prompts/\n/queue/\n/state/\n/worktrees/\n/logs/\n")
    (root / "harness.toml").write_text(
        config if config is not None else CONFIG.format(agents=agents, preset=preset))
    (root / "prompts").mkdir(exist_ok=True)
    (root / "prompts" / "bootstrap.md").write_text(DEFAULT_BOOTSTRAP)
    ws = Workspace.at(root)
    ws.make_dirs()
    Queue(ws.queue_dir)
    return ws


@pytest.fixture(autouse=True)
def _quiet_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith(("HARNESS_", "CLAUDE_CODE_")) or k == "CLAUDECODE":
            monkeypatch.delenv(k)


@pytest.fixture
def roomy(monkeypatch):
    """Make the disk thresholds independent of the test machine."""
    monkeypatch.setattr(cli_doctor, "DISK_WARN_BYTES", 0)
    monkeypatch.setattr(cli_doctor, "DISK_FAIL_BYTES", 0)


def doctor_lines(out: str) -> dict[str, tuple[str, str]]:
    lines = {}
    for line in out.splitlines():
        m = re.match(r"(PASS|WARN|FAIL)  (\S+)\s+(.*)", line)
        if m:
            lines[m[2]] = (m[1], m[3])
    return lines


# -- doctor -----------------------------------------------------------------------------


def test_doctor_all_pass_on_good_workspace(tmp_path, roomy):
    ws = make_ws(tmp_path / "ws")
    res = invoke(ws.root, "doctor")
    assert res.exit_code == 0, res.output
    checks = doctor_lines(res.output)
    assert set(checks) == {"workspace", "config", "git", "worktrees", "target-branch", "agent",
                           "agent-env", "queue-fs", "disk", "memory", "open-files", "prompt",
                           "private", "remote"}
    not_pass = {k: v for k, v in checks.items() if v[0] != "PASS"}
    if not_pass.keys() <= {"git", "open-files"}:  # depend on the host's git and ulimit
        assert all(v[0] == "WARN" for v in not_pass.values()), not_pass
    else:
        pytest.fail(f"unexpected non-PASS checks: {not_pass}")
    assert "preset sim" in checks["agent"][1]
    assert res.output.rstrip().endswith("0 failed")


def test_doctor_warns_about_logs_others_can_read(tmp_path, roomy):
    ws = make_ws(tmp_path / "ws")
    ws.logs_dir.chmod(0o755)
    checks = doctor_lines(invoke(ws.root, "doctor").output)
    assert checks["private"][0] == "WARN" and "chmod 700" in checks["private"][1]


def test_doctor_json(tmp_path, roomy):
    ws = make_ws(tmp_path / "ws")
    res = invoke(ws.root, "doctor", "--json")
    assert res.exit_code == 0, res.output
    data = orjson.loads(res.output)
    assert data["ok"] is True and data["counts"]["fail"] == 0
    assert {c["name"] for c in data["checks"]} >= {"config", "worktrees", "queue-fs"}
    assert all(c["status"] in ("PASS", "WARN", "FAIL") for c in data["checks"])


def test_doctor_bad_config_key_fails(tmp_path, roomy):
    ws = make_ws(tmp_path / "ws", config="[run]\nagents = 2\nbogus_key = 1\n")
    res = invoke(ws.root, "doctor")
    assert res.exit_code == 1, res.output
    status, detail = doctor_lines(res.output)["config"]
    assert status == "FAIL" and "run.bogus_key" in detail and "unknown key" in detail


def test_doctor_non_git_directory_fails(tmp_path, roomy):
    ws = make_ws(tmp_path / "plain", git_repo=False)
    res = invoke(ws.root, "doctor")
    assert res.exit_code == 1, res.output
    status, detail = doctor_lines(res.output)["worktrees"]
    assert status == "FAIL" and "not a git repository" in detail


def test_doctor_creates_queue_dirs_and_probes(tmp_path, roomy):
    ws = make_ws(tmp_path / "ws")
    for d in ws.queue_dir.iterdir():
        d.rmdir()
    ws.queue_dir.rmdir()
    res = invoke(ws.root, "doctor")
    assert doctor_lines(res.output)["queue-fs"][0] == "PASS"
    assert (ws.queue_dir / "pending").is_dir() and (ws.queue_dir / "ids").is_dir()


def test_doctor_outside_a_workspace_warns_and_leaves_nothing(tmp_path, roomy):
    plain = tmp_path / "plain"
    plain.mkdir()
    res = invoke(plain, "doctor")
    lines = doctor_lines(res.output)
    assert lines["workspace"][0] == "WARN" and "parallel-harness init" in lines["workspace"][1]
    assert lines["queue-fs"][0] == "PASS"
    assert list(plain.iterdir()) == []


def test_doctor_reports_stripped_session_env(tmp_path, roomy, monkeypatch):
    ws = make_ws(tmp_path / "ws")
    monkeypatch.setenv("CLAUDECODE", "1")
    monkeypatch.setenv("CLAUDE_CODE_ENTRYPOINT", "cli")
    res = invoke(ws.root, "doctor")
    status, detail = doctor_lines(res.output)["agent-env"]
    assert status == "PASS"
    assert "stripped" in detail and "CLAUDECODE" in detail and "CLAUDE_CODE_ENTRYPOINT" in detail


def test_doctor_agent_binary(tmp_path, roomy, monkeypatch):
    ws = make_ws(tmp_path / "ws", preset="claude")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    git_dir = os.path.dirname(subprocess.run(["sh", "-c", "command -v git"], capture_output=True,
                                             text=True).stdout.strip())
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{git_dir}")
    missing = doctor_lines(invoke(ws.root, "doctor").output)["agent"]
    assert missing[0] == "FAIL" and "not on PATH" in missing[1]  # run refuses: exit 2
    assert "install it with `npm install -g @anthropic-ai/claude-code`" in missing[1]
    fake = bindir / "claude"
    fake.write_text("#!/bin/sh\necho '9.9.9 (Claude Code)'\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    found = doctor_lines(invoke(ws.root, "doctor").output)["agent"]
    assert found[0] == "WARN" and "claude 9.9.9 is not a tested version" in found[1]
    assert "@anthropic-ai/claude-code@2.1.332" in found[1]
    fake.write_text("#!/bin/sh\necho '2.1.332 (Claude Code)'\n")
    found = doctor_lines(invoke(ws.root, "doctor").output)["agent"]
    assert found == ("PASS", f"{fake}: claude 2.1.332 (a tested version)")


def test_doctor_bad_prompt_variable_fails(tmp_path, roomy):
    ws = make_ws(tmp_path / "ws")
    (ws.root / "prompts" / "bootstrap.md").write_text("Do {{TITEL}}\n")
    res = invoke(ws.root, "doctor")
    assert res.exit_code == 1
    status, detail = doctor_lines(res.output)["prompt"]
    assert status == "FAIL" and "TITEL" in detail


def test_doctor_disk_thresholds(tmp_path, monkeypatch):
    ws = make_ws(tmp_path / "ws")
    monkeypatch.setattr(cli_doctor, "DISK_WARN_BYTES", 2**62)
    monkeypatch.setattr(cli_doctor, "DISK_FAIL_BYTES", 0)
    assert doctor_lines(invoke(ws.root, "doctor").output)["disk"][0] == "WARN"
    monkeypatch.setattr(cli_doctor, "DISK_FAIL_BYTES", 2**62)
    res = invoke(ws.root, "doctor")
    assert doctor_lines(res.output)["disk"][0] == "FAIL" and res.exit_code == 1


# -- gc ---------------------------------------------------------------------------------


def _attempt_log(ws: Workspace, item_id: str, attempt: int, age_days: float) -> Path:
    d = ws.attempt_dir(item_id, attempt)
    d.mkdir(parents=True)
    ended = time.time() - age_days * 86400
    (d / "result.json").write_text(f'{{"reason": "succeeded", "ended_at": {ended}}}')
    (d / "events.jsonl").write_text("x" * 1000)
    return d


def _snapshot(root: Path) -> list[tuple[str, int]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out.append((str(p.relative_to(root)), p.lstat().st_mtime_ns))
    return sorted(out)


def gc_workspace(tmp_path: Path) -> tuple[Workspace, dict[str, Path]]:
    """agents=2; stale clean worktree w9, dirty w8, in-pool w1; logs of an old and a new done
    item and of a pending one."""
    ws = make_ws(tmp_path / "ws", agents=2)
    paths = {}
    for w in ("w1", "w8", "w9"):
        paths[w] = worktrees.ensure_worktree(ws.root, ws.worktree(w), "main")
    (paths["w8"] / "notes.txt").write_text("uncommitted work\n")
    queue = Queue(ws.queue_dir)
    for item_id in ("old-done", "new-done", "old-pending"):
        queue.enqueue({"id": item_id, "command": "true"})
    for _ in range(2):
        claim = queue.claim()
        assert claim is not None and claim.id.endswith("-done")
        claim.complete()
    paths["done_old"] = _attempt_log(ws, "old-done", 1, age_days=40)
    paths["done_new"] = _attempt_log(ws, "new-done", 1, age_days=1)
    paths["pending_old"] = _attempt_log(ws, "old-pending", 1, age_days=40)
    ws.heartbeat_file("w7").write_text('{"counter": 3, "item": null}')
    return ws, paths


def test_gc_removes_stale_keeps_work_and_live(tmp_path):
    ws, p = gc_workspace(tmp_path)
    res = invoke(ws.root, "gc")
    assert res.exit_code == 0, res.output
    assert not p["w9"].exists()
    assert "w9" not in git(ws.root, "worktree", "list")
    assert p["w8"].exists() and (p["w8"] / "notes.txt").exists()
    assert "worktrees/w8: unsaved work" in res.output
    assert p["w1"].exists()
    assert not p["done_old"].exists() and p["done_new"].exists()
    assert p["pending_old"].exists()
    assert not ws.heartbeat_file("w7").exists()
    m = re.search(r"freed (\d+) entries, (\d+) bytes", res.output)
    assert m and int(m[1]) == 3 and int(m[2]) > 1000


def test_gc_dry_run_changes_nothing(tmp_path):
    ws, p = gc_workspace(tmp_path)
    before = _snapshot(ws.root)
    wt_before = git(ws.root, "worktree", "list")
    res = invoke(ws.root, "gc", "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    assert _snapshot(ws.root) == before
    assert git(ws.root, "worktree", "list") == wt_before
    data = orjson.loads(res.output)
    assert data["dry_run"] is True
    actions = {e["path"]: e["action"] for e in data["entries"]}
    assert actions["worktrees/w9"] == "would remove"
    assert actions["worktrees/w8"] == "kept"
    assert actions["logs/old-done"] == "would remove"
    assert "logs/new-done" not in actions and "logs/old-pending" not in actions
    assert data["freed"]["count"] == 3


def test_gc_respects_desired_workers_and_locks(tmp_path):
    ws, p = gc_workspace(tmp_path)
    ws.desired_workers_file.write_text("9\n")  # w9 is in the running coordinator's pool
    fd = hold_lock(ws.worker_lock("w7"))  # w7 is alive: its heartbeat stays
    coordinator = hold_lock(ws.coordinator_lock)
    try:
        res = invoke(ws.root, "gc", "--logs-older-than", "100", "--json")
    finally:
        os.close(fd)
        os.close(coordinator)
    data = orjson.loads(res.output)
    rows = {e["path"]: e for e in data["entries"]}
    assert rows["worktrees/w9"]["action"] == "kept" and p["w9"].exists()
    assert rows["state/heartbeats/w7.json"]["reason"] == "worker alive (lock held)"
    assert ws.heartbeat_file("w7").exists() and p["done_old"].exists()
    assert data["freed"] == {"count": 0, "bytes": 0}


def test_gc_ignores_a_pool_size_left_by_a_coordinator_that_is_gone(tmp_path):
    ws, p = gc_workspace(tmp_path)
    ws.desired_workers_file.write_text("9\n")  # left by `scale 9` of a run that has ended
    res = invoke(ws.root, "gc", "--logs-older-than", "100", "--dry-run", "--json")
    rows = {e["path"]: e for e in orjson.loads(res.output)["entries"]}
    assert rows["worktrees/w9"]["action"] == "would remove"


def test_gc_keeps_heartbeat_naming_a_live_claim(tmp_path):
    ws = make_ws(tmp_path / "ws")
    queue = Queue(ws.queue_dir)
    queue.enqueue({"id": "busy", "command": "true"})
    claim = queue.claim()
    assert claim is not None
    ws.heartbeat_file("w1").write_bytes(orjson.dumps({"counter": 1, "item": str(claim.name)}))
    res = invoke(ws.root, "gc")
    assert ws.heartbeat_file("w1").exists()
    assert "names claim" in res.output


# -- metrics ----------------------------------------------------------------------------

SAMPLE = {
    "items": {"pending": 3, "claimed": 2, "waiting": 0, "done": 10, "failed": 1},
    "attempts": {"succeeded": 10, "verify_failed": 2, 'we"ird\\reason\n': 1},
    "workers_alive": 2, "workers_desired": 3,
    "claims_total": 13, "completions_total": 10, "reclaims_total": 1, "restarts_total": 0,
    "tokens_total": {"input": 1200, "output": 340, "cache_creation": 0, "cache_read": 9000},
    "cost_usd_total": 0.1234, "paused": 1,
}

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_VALUE = r'"(?:[^"\\\n]|\\\\|\\"|\\n)*"'
_LABELS = rf"\{{(?:[a-zA-Z_][a-zA-Z0-9_]*={_LABEL_VALUE})(?:,[a-zA-Z_][a-zA-Z0-9_]*={_LABEL_VALUE})*,?\}}"
_VALUE = r"(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?Inf|NaN)"
SAMPLE_LINE = re.compile(rf"({_NAME})(?:{_LABELS})? {_VALUE}(?: -?\d+)?")
HELP_LINE = re.compile(rf"# HELP ({_NAME}) (?:[^\\\n]|\\\\|\\n)*")
TYPE_LINE = re.compile(rf"# TYPE ({_NAME}) (counter|gauge|histogram|summary|untyped)")


def test_render_follows_the_text_format():
    text = render_prometheus(SAMPLE)
    assert text.endswith("\n")
    typed: dict[str, str] = {}
    helped: set[str] = set()
    seen_families: list[str] = []
    for line in text.splitlines():
        if m := HELP_LINE.fullmatch(line):
            assert m[1] not in helped
            helped.add(m[1])
        elif m := TYPE_LINE.fullmatch(line):
            assert m[1] not in typed, f"TYPE twice for {m[1]}"
            typed[m[1]] = m[2]
            seen_families.append(m[1])
        else:
            m = SAMPLE_LINE.fullmatch(line)
            assert m, f"not a valid sample line: {line!r}"
            assert m[1] == seen_families[-1], "samples must follow their own TYPE line"
    assert all(n.startswith("harness_") for n in typed)
    assert all(n.endswith("_total") for n, t in typed.items() if t == "counter")
    assert helped == set(typed)
    assert typed["harness_items"] == "gauge"
    assert typed["harness_attempts_total"] == "counter"
    assert typed["harness_tokens_total"] == "counter"
    assert 'harness_items{state="pending"} 3' in text
    assert 'harness_attempts_total{reason="succeeded"} 10' in text
    assert 'harness_attempts_total{reason="we\\"ird\\\\reason\\n"} 1' in text
    assert 'harness_tokens_total{kind="cache_read"} 9000' in text
    assert "harness_cost_usd_total 0.1234" in text
    assert "harness_paused 1" in text
    assert "harness_workers_desired 3" in text


def test_render_defaults_missing_keys_to_zero():
    text = render_prometheus({})
    for state in ("pending", "claimed", "waiting", "done", "failed"):
        assert f'harness_items{{state="{state}"}} 0' in text
    assert 'harness_tokens_total{kind="input"} 0' in text
    assert "harness_cost_usd_total 0\n" in text
    assert all(SAMPLE_LINE.fullmatch(line) or line.startswith("# ")
               for line in text.splitlines())


def test_render_parses_with_prometheus_client():
    # The reference parser (a test dependency only) judges the hand-written format.
    from prometheus_client import parser
    families = {f.name: f for f in parser.text_string_to_metric_families(
        render_prometheus(SAMPLE))}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("harness_items", (("state", "done"),))] == 10
    assert samples[("harness_attempts_total", (("reason", 'we"ird\\reason\n'),))] == 1
    assert samples[("harness_cost_usd_total", ())] == pytest.approx(0.1234)


def test_write_prometheus_is_atomic_and_metrics_prints_it(tmp_path):
    ws = make_ws(tmp_path / "ws")
    path = ws.state_dir / METRICS_FILE
    write_prometheus(path, SAMPLE)
    write_prometheus(path, {**SAMPLE, "claims_total": 14})
    assert [n for n in os.listdir(ws.state_dir) if "metrics" in n] == [METRICS_FILE]
    res = invoke(ws.root, "metrics")
    assert res.exit_code == 0
    assert res.output == path.read_text()
    assert "harness_claims_total 14" in res.output


def test_metrics_absent_exits_1(tmp_path):
    ws = make_ws(tmp_path / "ws")
    res = invoke(ws.root, "metrics")
    assert res.exit_code == 1
    assert "coordinator writes it" in res.output  # stderr is part of output in click >= 8.2


def test_the_configuration_reference_in_the_docs_is_the_generated_one():
    from harness import config

    docs = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()
    assert config.reference_markdown().strip() in docs, (
        "docs/configuration.md's key tables are out of date: regenerate them with"
        " python -c 'from harness import config; print(config.reference_markdown())'")
