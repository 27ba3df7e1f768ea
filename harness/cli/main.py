"""The ``parallel-harness`` command line.

Imports are lazy: ``status`` must answer fast on a queue of 100,000 items,
so heavy modules (pydantic, gitpython, rich) load only in the commands that
use them. Exit codes: 0 ok, 1 failures in the run or check, 2 usage or
configuration errors; an interrupted run exits 128 + the signal number.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from harness.cli.common import EXIT_FAILURES, echo_json, usage_error, workspace

STATE_NAMES = ("pending", "claimed", "waiting", "done", "failed")


def _config(ctx: click.Context):  # -> Config
    from harness import config

    try:
        return config.load(workspace(ctx).config_file)
    except config.ConfigError as exc:
        usage_error(str(exc))


def _queue(ctx: click.Context):  # -> Queue
    """The workspace's queue with harness.toml's settings (durable, max_attempts, backoff)."""
    from harness.config import queue_options
    from harness.queue.core import Queue

    return Queue(workspace(ctx).queue_dir, **queue_options(_config(ctx)))


def _operator_event(ctx: click.Context, kind: str, **fields: Any) -> None:
    """Record an operator action in state/events.jsonl: a running `run` prints it, and the
    log shows who paused or scaled the pool, and when."""
    ws = workspace(ctx)
    ws.state_dir.mkdir(parents=True, exist_ok=True)
    ws.log_event(kind, source="operator", **fields)


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
    Examples:
      parallel-harness init --agent claude      # in a git repository
      parallel-harness enqueue --title "Fix the flaky test" --priority high
      parallel-harness --agents 3               # same as: parallel-harness run --agents 3
      parallel-harness status --watch
    """
    ctx.ensure_object(dict)
    ctx.obj["root"] = root
    if ctx.invoked_subcommand is None:
        if agents is None and not forever:
            click.echo(ctx.get_help())
            return
        ctx.invoke(run, agents=agents, forever=forever)


# -- running -------------------------------------------------------------------


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
    failed/ (or the run budget stopped it), 2 for usage or configuration
    errors, 128+N when stopped by signal N.

    \b
    Example:
      parallel-harness run --agents 4
    """
    from harness.pool.coordinator import run_coordinator

    overrides = {"run": {"agents": agents, "stale_after": stale_after, "tick": tick}}
    sys.exit(run_coordinator(workspace(ctx), overrides, forever=forever))


@main.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--agent", "preset", type=click.Choice(["claude", "codex", "shell", "sim"]),
              default="claude", show_default=True, help="Agent preset for harness.toml.")
def init(directory: str, preset: str) -> None:
    """Scaffold harness.toml, prompts/bootstrap.md, queue/, state/, worktrees/ in a git repo.

    \b
    Example:
      cd my-repo && parallel-harness init --agent claude
    """
    from harness.cli.scaffold import ScaffoldError, init as scaffold

    try:
        created = scaffold(Path(directory), preset)
    except ScaffoldError as exc:
        usage_error(str(exc))
    for path in created:
        click.echo(f"created  {path}")
    click.echo("next: edit harness.toml, then `parallel-harness enqueue ...` and"
               " `parallel-harness --agents 3`")


@main.command()
@click.option("--agents", type=click.IntRange(1, 64), default=3, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the demo workspace and print its path.")
@click.option("--fast", is_flag=True, help="Shorter items (used by the tests).")
def demo(agents: int, keep: bool, fast: bool) -> None:
    """Run a self-contained demo with the sim agent in a temporary git workspace.

    \b
    Example:
      parallel-harness demo --agents 3 --keep
    """
    from harness.cli.demo import run_demo

    sys.exit(run_demo(agents=agents, keep=keep, fast=fast))


# -- the queue -----------------------------------------------------------------


def _read_inputs(files: tuple[str, ...]) -> list[Any]:
    from harness.cli.intake import InputError, parse

    items: list[Any] = []
    for f in files:
        try:
            text = sys.stdin.read() if f == "-" else Path(f).read_text()
            items.extend(parse(text, "stdin" if f == "-" else f))
        except (OSError, InputError) as exc:
            usage_error(str(exc))
    return items


def _template(ctx: click.Context) -> tuple[str, str] | None:
    """The prompt template to check items against, if the workspace uses one."""
    from harness.agents import prompts

    ws = workspace(ctx)
    cfg = _config(ctx)
    if cfg.agent.preset == "shell":
        return None
    path = ws.root / cfg.paths.bootstrap
    try:
        return prompts.load_template(path), str(path)
    except prompts.PromptError as exc:
        usage_error(str(exc))


@main.command()
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--id", "item_id", help="Item id (default: generated, sortable).")
@click.option("--title", help="Short title.")
@click.option("--prompt", help="Prompt for the agent.")
@click.option("--command", "command", help="Command for the shell agent (run by /bin/sh -c).")
@click.option("--priority", default=None, help="high, medium, low or 0-9 (0 first).")
@click.option("--rig", default=None, help="Rig label ({{RIG}} in the prompt).")
@click.option("--depends-on", multiple=True, help="Id that must be done first (repeatable).")
@click.option("--atomic", is_flag=True, help="Add nothing unless every item is valid.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.pass_context
def enqueue(ctx: click.Context, files: tuple[str, ...], item_id: str | None, title: str | None,
            prompt: str | None, command: str | None, priority: str | None, rig: str | None,
            depends_on: tuple[str, ...], atomic: bool, as_json: bool) -> None:
    """Add items from options, or from JSON / JSON list / JSONL files ('-' = stdin).

    The old harness's state/queue.json ([{"id","type","title","priority","rig"}])
    is accepted as is. Exit 1 if anything was refused.

    \b
    Examples:
      parallel-harness enqueue --title "Fix flaky test" --prompt "..." --priority high
      parallel-harness enqueue tasks.jsonl
      parallel-harness enqueue --atomic state/queue.json
    """
    from harness.cli.intake import submit

    items = _read_inputs(files)
    fields = {"id": item_id, "title": title, "prompt": prompt, "command": command,
              "priority": priority, "rig": rig, "depends_on": list(depends_on) or None}
    if any(v is not None for v in fields.values()):
        items.append({k: v for k, v in fields.items() if v is not None})
    if not items:
        usage_error("nothing to enqueue: give FILES or --title/--prompt/--command")
    report = submit(_queue(ctx), items, atomic=atomic, template=_template(ctx))
    if as_json:
        echo_json({"added": [{"id": n.id, "name": str(n)} for n in report.added],
                   "refused": [{"item": w, "reason": r} for w, r in report.refused]})
    else:
        for name in report.added:
            click.echo(f"added    {name.id:<30} queue/{'waiting' if name.due else 'pending'}/{name}")
        for where, why in report.refused:
            click.echo(f"refused  {where}: {why}", err=True)
        note = " (--atomic: nothing added)" if atomic and report.refused else ""
        click.echo(f"{len(report.added)} added, {len(report.refused)} refused{note}")
    sys.exit(EXIT_FAILURES if report.refused else 0)


@main.command(name="ls")
@click.argument("state", type=click.Choice(STATE_NAMES), default="pending")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def ls_cmd(ctx: click.Context, state: str, as_json: bool) -> None:
    """List the items in one state (names only; no file is opened).

    \b
    Example:
      parallel-harness ls failed
    """
    from harness.views.status import list_state

    rows = list_state(workspace(ctx), state)
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        if r.get("foreign"):
            click.echo(f"{r['name']}  (not a queue name; fsck --repair handles it)")
        else:
            extra = f"  due {r['due']}" if r["due"] else ""
            click.echo(f"{r['id']:<40} prio {r['priority']}  attempt {r['attempt']}{extra}")
    click.echo(f"{len(rows)} {state}", err=True)


@main.command()
@click.argument("item_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def show(ctx: click.Context, item_id: str, as_json: bool) -> None:
    """Show one item: state, document, every attempt with reason, metrics, branch, logs.

    \b
    Example:
      parallel-harness show fix-flaky-test
    """
    from harness.views.status import item_report

    ws = workspace(ctx)
    report = item_report(ws, item_id)
    if report is None:
        usage_error(f"no item {item_id!r} in {ws.queue_dir}")
    if as_json:
        echo_json(report)
        return
    doc = report["item"]
    click.echo(f"{item_id}  [{report['state']}]  {doc.get('title', '')}")
    click.echo(f"  queue name  {report['name']}")
    if report.get("reason"):
        click.echo(f"  reason      {report['reason']}")
    click.echo(f"  branch      {report['branch']}")
    from harness.views.attempts import running_attempts

    running = running_attempts(ws)
    for a in report["attempts"]:
        r, m = a.get("result") or {}, a.get("metrics") or {}
        tokens = sum(m.get(k, 0) for k in ("input_tokens", "output_tokens",
                                           "cache_creation_tokens", "cache_read_tokens"))
        reason = r.get("reason") or ("running" if (item_id, a["attempt"]) in running
                                     else "unfinished")
        click.echo(f"  attempt {a['attempt']:<3} {reason:<16}"
                   f" {tokens:>8} tok  ${m.get('cost_usd', 0):.4f}  {r.get('detail', '')[:70]}")
        click.echo(f"              {a['log_dir']}")


@main.command()
@click.argument("item_id")
@click.pass_context
def retry(ctx: click.Context, item_id: str) -> None:
    """Put a failed item back in pending/ with a fresh attempt budget.

    \b
    Example:
      parallel-harness retry fix-flaky-test
    """
    from harness.queue.core import QueueError

    try:
        name = _queue(ctx).requeue_failed(item_id)
    except QueueError as exc:
        usage_error(str(exc))
    _operator_event(ctx, "retried", item=item_id)
    click.echo(f"retrying {item_id} as queue/pending/{name}")


@main.command()
@click.argument("item_id")
@click.pass_context
def cancel(ctx: click.Context, item_id: str) -> None:
    """Cancel an item: a running agent is stopped; the item goes to failed/ (reason: cancelled).

    \b
    Example:
      parallel-harness cancel fix-flaky-test
    """
    queue = _queue(ctx)
    ws = workspace(ctx)
    if queue.cancel_unclaimed(item_id, "cancelled by the operator (parallel-harness cancel)"):
        _operator_event(ctx, "cancelled", item=item_id, running=False)
        click.echo(f"cancelled {item_id} (it was not running)")
        return
    if queue.find(item_id, ("claimed",)) is None:
        usage_error(f"item {item_id!r} is not pending, waiting or claimed")
    ws.cancel_dir.mkdir(parents=True, exist_ok=True)
    (ws.cancel_dir / item_id).write_text("cancel\n")
    _operator_event(ctx, "cancelled", item=item_id, running=True)
    click.echo(f"cancel requested for {item_id}: its worker stops the agent and dead-letters it")


# -- the pool ------------------------------------------------------------------


@main.command()
@click.argument("reason", nargs=-1)
@click.pass_context
def pause(ctx: click.Context, reason: tuple[str, ...]) -> None:
    """Stop new claims (running items finish): writes state/interrupt-request.txt.

    \b
    Example:
      parallel-harness pause deploying the database migration
    """
    text = " ".join(reason) or "paused by the operator"
    workspace(ctx).pause(text)
    _operator_event(ctx, "paused", reason=text)
    click.echo(f"paused: {text}")


@main.command()
@click.pass_context
def resume(ctx: click.Context) -> None:
    """Allow claims again (removes state/interrupt-request.txt).

    \b
    Example:
      parallel-harness resume
    """
    if not workspace(ctx).resume():
        click.echo("was not paused")
        return
    _operator_event(ctx, "resumed", why="parallel-harness resume")
    click.echo("resumed")


@main.command()
@click.argument("workers", type=click.IntRange(0, 256))
@click.pass_context
def scale(ctx: click.Context, workers: int) -> None:
    """Change the pool size of the running coordinator (writes state/desired-workers).

    \b
    Example:
      parallel-harness scale 6
    """
    ws = workspace(ctx)
    ws.state_dir.mkdir(parents=True, exist_ok=True)
    ws.desired_workers_file.write_text(f"{workers}\n")
    _operator_event(ctx, "scaled", workers=workers)
    click.echo(f"desired workers: {workers}")


# -- looking -------------------------------------------------------------------


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--watch", is_flag=True,
              help="Redraw live on a terminal; elsewhere (pipe, log) print a line per change.")
@click.option("--interval", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              metavar="SECONDS", help="With --watch: seconds between looks.")
@click.option("--timeout", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="Stop watching after this many seconds.")
@click.pass_context
def status(ctx: click.Context, as_json: bool, watch: bool, interval: float,
           timeout: float | None) -> None:
    """Counts per state, throughput, each worker, pause state, recent failures.

    Computed from directory names and heartbeats only (fast on big queues).

    \b
    Examples:
      parallel-harness status
      parallel-harness status --watch
    """
    from harness.views.status import collect, render_text

    ws = workspace(ctx)
    if watch:
        from harness.cli.live import watch as live

        live(ws, interval, timeout=timeout)
    elif as_json:
        echo_json(collect(ws))
    else:
        click.echo(render_text(collect(ws)))


@main.command()
@click.option("--repair", is_flag=True, help="Run recovery first and report what it changed.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def fsck(ctx: click.Context, repair: bool, as_json: bool) -> None:
    """Check the queue invariants; exit 1 if any is violated.

    --repair runs recovery (refused while a coordinator runs) and returns
    every claim to pending/.

    \b
    Example:
      parallel-harness fsck --repair
    """
    from filelock import FileLock, Timeout

    from harness.queue.invariants import check
    from harness.queue.recovery import recover

    ws = workspace(ctx)
    queue = _queue(ctx)
    repaired: list[str] = []
    if repair:
        ws.state_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(ws.coordinator_lock))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            usage_error("a coordinator is running; stop it before `fsck --repair`")
        try:
            _refuse_live_workers(ws)
            repaired = recover(queue, revoke_claims=True)
        finally:
            lock.release()
    violations = check(ws.queue_dir)
    if as_json:
        echo_json({"repaired": repaired, "violations": [vars(v) for v in violations]})
    else:
        for line in repaired:
            click.echo(f"repaired   {line}")
        for v in violations:
            click.echo(f"VIOLATION  {v}")
        click.echo(f"{len(violations)} violation(s)")
    sys.exit(EXIT_FAILURES if violations else 0)


def _refuse_live_workers(ws: Any) -> None:
    from harness.liveness.process import lock_is_held

    live = sorted(p.stem for p in ws.locks_dir.glob("*.lock") if lock_is_held(p))
    if live:
        usage_error(f"worker(s) {', '.join(live)} still running (their coordinator is gone,"
                    " they finish their items); wait or stop them before `fsck --repair`")


def _register_optional() -> None:
    """Commands that live in their own modules (each imports only click at load)."""
    from harness.cli import ops as cli_ops, sessions as cli_sessions

    cli_ops.register(main)
    main.add_command(cli_sessions.sessions)
    main.add_command(cli_sessions.logs)


_register_optional()

if __name__ == "__main__":  # pragma: no cover
    main()
