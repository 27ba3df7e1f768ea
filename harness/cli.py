"""The ``parallel-harness`` command line.

Imports are lazy: ``status`` must answer fast on a queue of 100,000 items,
so heavy modules (pydantic, gitpython, rich) load only in the commands that
use them. Exit codes: 0 ok, 1 failures in the run or check, 2 usage or
configuration errors.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

EXIT_FAILURES = 1
EXIT_USAGE = 2


def _workspace(ctx: click.Context):  # -> Workspace
    from harness.workspace import Workspace

    return Workspace.at(ctx.obj["root"])


def _fail_usage(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


@click.group(invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(file_okay=False), envvar="HARNESS_ROOT", default=".",
              show_default=True, help="Workspace directory (also HARNESS_ROOT).")
@click.option("--agents", type=click.IntRange(0, 256), default=None,
              help="With no subcommand: run with this many workers.")
@click.option("--forever", is_flag=True, help="With no subcommand: keep polling for new items.")
@click.pass_context
def main(ctx: click.Context, root: str, agents: int | None, forever: bool) -> None:
    """Run many AI coding agents in parallel over a filesystem work queue.

    \b
    Example:
      parallel-harness --agents 3          # same as: parallel-harness run --agents 3
      parallel-harness status
    """
    ctx.ensure_object(dict)
    ctx.obj["root"] = root
    if ctx.invoked_subcommand is None:
        if agents is None and not forever:
            click.echo(ctx.get_help())
            return
        ctx.invoke(run, agents=agents, forever=forever)


@main.command()
@click.option("--agents", type=click.IntRange(0, 256), default=None,
              help="Number of workers (default: [run] agents in harness.toml).")
@click.option("--forever", is_flag=True, help="Keep polling for new items instead of exiting.")
@click.option("--stale-after", type=float, default=None, help="Override [run] stale_after.")
@click.option("--tick", type=float, default=None, help="Override [run] tick.")
@click.pass_context
def run(ctx: click.Context, agents: int | None, forever: bool, stale_after: float | None = None,
        tick: float | None = None) -> None:
    """Run the coordinator and N workers until the queue is drained.

    Exit code 0 if every item of the run ended in done/, 1 if any ended in
    failed/, 2 for usage or configuration errors.

    \b
    Example:
      parallel-harness run --agents 4
    """
    from harness.coordinator import run_coordinator

    overrides = {"run": {"agents": agents, "stale_after": stale_after, "tick": tick}}
    sys.exit(run_coordinator(_workspace(ctx), overrides, forever=forever))


def _parse_items(text: str, source: str) -> list[Any]:
    import orjson

    text = text.strip()
    if not text:
        return []
    try:
        data = orjson.loads(text)
        return data if isinstance(data, list) else [data]
    except orjson.JSONDecodeError:
        pass
    items = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                items.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                _fail_usage(f"{source}:{lineno}: not JSON or JSONL: {exc}")
    return items


@main.command()
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--id", "item_id", help="Item id (default: generated, sortable).")
@click.option("--title", help="Short title.")
@click.option("--prompt", help="Prompt for an agent.")
@click.option("--command", "command", help="Command for the shell agent (run with /bin/sh -c).")
@click.option("--priority", default=None, help="high, medium, low or 0-9 (0 first).")
@click.option("--rig", default=None, help="Rig label passed to the prompt.")
@click.option("--depends-on", multiple=True, help="Id that must be done first (repeatable).")
@click.pass_context
def enqueue(ctx: click.Context, files: tuple[str, ...], item_id: str | None, title: str | None,
            prompt: str | None, command: str | None, priority: str | None, rig: str | None,
            depends_on: tuple[str, ...]) -> None:
    """Add items: from options, or from JSON / JSON list / JSONL files ('-' = stdin).

    \b
    Examples:
      parallel-harness enqueue --title "Fix flaky test" --command "make test" --priority high
      parallel-harness enqueue tasks.jsonl
    """
    from harness.queue import Queue, enqueue_many

    items: list[Any] = []
    for f in files:
        text = sys.stdin.read() if f == "-" else Path(f).read_text()
        items.extend(_parse_items(text, f))
    fields = {"id": item_id, "title": title, "prompt": prompt, "command": command,
              "priority": priority, "rig": rig, "depends_on": list(depends_on) or None}
    if any(v is not None for v in fields.values()):
        items.append({k: v for k, v in fields.items() if v is not None})
    if not items:
        _fail_usage("nothing to enqueue: give FILES or --title/--prompt/--command")
    ws = _workspace(ctx)
    added, refused = enqueue_many(Queue(ws.queue_dir), items)
    for name in added:
        click.echo(f"added    {name.id}  (queue/{'waiting' if name.due else 'pending'}/{name})")
    for _, exc in refused:
        click.echo(f"refused  {exc}", err=True)
    click.echo(f"{len(added)} added, {len(refused)} refused")
    if refused:
        sys.exit(EXIT_FAILURES)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Counts per state and each worker, from directory names and heartbeats only.

    \b
    Example:
      parallel-harness status --json
    """
    from harness.status import collect, render_text

    snapshot = collect(_workspace(ctx))
    if as_json:
        import orjson

        click.echo(orjson.dumps(snapshot, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(render_text(snapshot))


@main.command()
@click.option("--repair", is_flag=True, help="Run recovery first and report what it changed.")
@click.pass_context
def fsck(ctx: click.Context, repair: bool) -> None:
    """Check the queue invariants; exit 1 if any is violated.

    \b
    Example:
      parallel-harness fsck --repair
    """
    from filelock import FileLock, Timeout

    from harness.invariants import check
    from harness.queue import Queue
    from harness.recovery import recover

    ws = _workspace(ctx)
    if not ws.queue_dir.is_dir():
        _fail_usage(f"{ws.queue_dir}: no queue here (use --root or `parallel-harness init`)")
    queue = Queue(ws.queue_dir)
    if repair:
        ws.state_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(ws.coordinator_lock))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            _fail_usage("a coordinator is running; stop it before `fsck --repair`")
        try:
            for line in recover(queue, revoke_claims=True):
                click.echo(f"repaired: {line}")
        finally:
            lock.release()
    violations = check(ws.queue_dir)
    for v in violations:
        click.echo(f"VIOLATION {v}")
    click.echo(f"{len(violations)} violation(s)")
    sys.exit(EXIT_FAILURES if violations else 0)


@main.command()
@click.option("--agents", type=click.IntRange(1, 64), default=3, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the demo workspace and print its path.")
@click.option("--fast", is_flag=True, help="Shorter items (used by the tests).")
def demo(agents: int, keep: bool, fast: bool) -> None:
    """Run a small self-contained demo in a temporary git workspace.

    \b
    Example:
      parallel-harness demo --agents 3 --keep
    """
    from harness.demo import run_demo

    sys.exit(run_demo(agents=agents, keep=keep, fast=fast))


if __name__ == "__main__":  # pragma: no cover
    main()

