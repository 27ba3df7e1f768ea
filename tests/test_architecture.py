"""The layers of harness/ (docs/architecture.md), checked on the source of every module.

Imports are read from the syntax tree, lazy imports inside functions included,
so a rule cannot be dodged by importing late. A new package or module must be
placed in LAYERS before it can import anything.
"""

from __future__ import annotations

import ast
import os
import time
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "harness"

# What each unit may import from harness (besides itself). Lower layers first.
LAYERS: dict[str, set[str]] = {
    "queue": set(),
    "config": set(),
    "paths": set(),
    "workspace": {"queue", "paths"},
    "liveness": {"queue", "paths", "workspace"},
    "agents": {"queue", "config", "paths", "workspace"},
    "repo": {"queue", "config", "paths", "workspace"},
    "views": {"queue", "config", "paths", "workspace", "liveness", "agents"},
    "pool": {"queue", "config", "paths", "workspace", "liveness", "agents", "repo", "views"},
    "cli": {"queue", "config", "paths", "workspace", "liveness", "agents", "repo", "views",
            "pool"},
}
TERMINAL_LIBRARIES = {"click", "rich"}
# Programs of their own whose stderr is a log file, not an operator's terminal.
MAY_PRINT = {"agents/sim.py": "an agent program: its stdout is the stream, errors to stderr",
             "pool/worker.py": "a fatal start-up error goes to the worker's own log file"}
WRITES = {"write_text", "write_bytes", "write_atomic", "write_new", "rename", "replace",
          "unlink", "unlink_quiet", "link", "mkdir", "makedirs", "rmtree", "rmdir",
          "log_event", "append_event", "pause", "resume", "symlink", "truncate", "chmod"}


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def unit_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported(tree: ast.AST) -> set[str]:
    """Every module name imported anywhere in the tree (absolute imports only: the
    project uses no relative ones)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            out.add(node.module or "")
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def harness_units(names: set[str]) -> set[str]:
    """The units (packages or top modules) of harness that ``names`` reach."""
    units = set()
    for name in names:
        parts = name.split(".")
        if parts[0] == "harness" and len(parts) > 1 and parts[1] in LAYERS:
            units.add(parts[1])
    return units


def parsed() -> list[tuple[Path, ast.AST]]:
    return [(p, ast.parse(p.read_text(), str(p))) for p in modules()]


def test_every_unit_is_placed_in_a_layer():
    assert {unit_of(p) for p in modules()} - {"__init__"} <= set(LAYERS)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_follow_the_layers(path: Path):
    unit = unit_of(path)
    if unit == "__init__":
        return
    reached = harness_units(imported(ast.parse(path.read_text()))) - {unit}
    assert reached <= LAYERS[unit], (
        f"{path.relative_to(PACKAGE)} ({unit}) imports {sorted(reached - LAYERS[unit])};"
        f" {unit} may import only {sorted(LAYERS[unit]) or 'nothing'} from harness")


def test_the_queue_protocol_stands_alone():
    """harness.queue is usable as a library: nothing of git, agents, processes or the CLI."""
    for path, tree in parsed():
        if unit_of(path) == "queue":
            names = imported(tree)
            assert harness_units(names) <= {"queue"}, path
            assert not names & {"git", "psutil", "filelock", *TERMINAL_LIBRARIES}, path


def test_nothing_below_the_cli_renders_for_a_terminal():
    for path, tree in parsed():
        rel = str(path.relative_to(PACKAGE))
        if unit_of(path) == "cli":
            continue
        top = {name.split(".")[0] for name in imported(tree)}
        assert not top & TERMINAL_LIBRARIES, f"{rel} imports {top & TERMINAL_LIBRARIES}"
        prints = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Call)
                  and isinstance(n.func, ast.Name) and n.func.id == "print"]
        if rel not in MAY_PRINT:
            assert not prints, f"{rel} prints (lines {prints}); hand it to the CLI layer"


def test_views_never_call_a_writing_function():
    for path, tree in parsed():
        if unit_of(path) != "views":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = (node.func.attr if isinstance(node.func, ast.Attribute)
                        else getattr(node.func, "id", ""))
                assert name not in WRITES, f"{path.name}:{node.lineno} calls {name}()"
                if name == "open" and len(node.args) > 1:
                    mode = node.args[1]
                    assert isinstance(mode, ast.Constant) and set(mode.value) <= set("rb"), (
                        f"{path.name}:{node.lineno} opens for writing")


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            out[os.path.join(dirpath, name)] = (st.st_mtime_ns, st.st_size)
    return out


def test_views_leave_a_workspace_as_they_found_it(tmp_path: Path):
    """Run every read model over a workspace with items, heartbeats and logs: no file or
    directory appears, disappears or changes."""
    import orjson

    from harness.queue.core import Queue
    from harness.views import attempts, status
    from harness.workspace import Workspace

    ws = Workspace.at(tmp_path)
    ws.make_dirs()
    queue = Queue(ws.queue_dir)
    for n in range(3):
        queue.enqueue({"id": f"item-{n}", "title": f"item {n}"})
    claim = queue.claim()
    assert claim is not None
    d = ws.attempt_dir(claim.id, claim.attempt)
    d.mkdir(parents=True)
    (d / "item.json").write_bytes(claim.item.to_json())
    (d / "events.jsonl").write_bytes(b'{"type":"system","subtype":"init","session_id":"s"}\n')
    ws.heartbeat_file("w1").write_bytes(orjson.dumps(
        {"counter": 1, "worker": "w1", "item": str(claim.name), "item_id": claim.id,
         "attempt": claim.attempt, "written_at": time.time()}))
    before = _snapshot(tmp_path)
    status.collect(ws)
    for state in ("pending", "claimed", "done"):
        status.list_state(ws, state)
    status.item_report(ws, claim.id)
    running = attempts.running_attempts(ws)
    for item_id, n, adir in attempts.all_attempts(ws):
        attempts.attempt_info(item_id, n, adir, running=running)
    attempts.export(ws, claim.id, attempts.pick(ws, claim.id, None, every=True))
    assert _snapshot(tmp_path) == before
