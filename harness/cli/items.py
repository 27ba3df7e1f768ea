"""Commands on items: ``enqueue``, ``ls``, ``show``, ``retry``, ``cancel``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from harness.cli.common import (EXIT_FAILURES, echo_json, load_config, open_queue, operator_event,
                                usage_error, workspace)
from harness.queue.names import STATES


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
    cfg = load_config(ctx)
    if cfg.agent.preset == "shell":
        return None
    path = ws.root / cfg.paths.bootstrap
    try:
        return prompts.load_template(path), str(path)
    except prompts.PromptError as exc:
        usage_error(str(exc))


@click.command()
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
    report = submit(open_queue(ctx), items, atomic=atomic, template=_template(ctx))
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


@click.command(name="ls")
@click.argument("state", type=click.Choice(STATES), default="pending")
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


@click.command()
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


@click.command()
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
        name = open_queue(ctx).requeue_failed(item_id)
    except QueueError as exc:
        usage_error(str(exc))
    operator_event(ctx, "retried", item=item_id)
    click.echo(f"retrying {item_id} as queue/pending/{name}")


@click.command()
@click.argument("item_id")
@click.pass_context
def cancel(ctx: click.Context, item_id: str) -> None:
    """Cancel an item: a running agent is stopped; the item goes to failed/ (reason: cancelled).

    \b
    Example:
      parallel-harness cancel fix-flaky-test
    """
    queue = open_queue(ctx)
    ws = workspace(ctx)
    if queue.cancel_unclaimed(item_id, "cancelled by the operator (parallel-harness cancel)"):
        operator_event(ctx, "cancelled", item=item_id, running=False)
        click.echo(f"cancelled {item_id} (it was not running)")
        return
    if queue.find(item_id, ("claimed",)) is None:
        usage_error(f"item {item_id!r} is not pending, waiting or claimed")
    ws.cancel_dir.mkdir(parents=True, exist_ok=True)
    (ws.cancel_dir / item_id).write_text("cancel\n")
    operator_event(ctx, "cancelled", item=item_id, running=True)
    click.echo(f"cancel requested for {item_id}: its worker stops the agent and dead-letters it")
