"""Commands on items: ``enqueue``, ``ls``, ``show`` (``retry``, ``cancel`` and the other
hand moves are in harness.cli.bulk)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from harness.cli.common import (EXIT_FAILURES, echo_json, load_config, open_queue, usage_error,
                                workspace)
from harness.queue.names import STATES


def _read_inputs(files: tuple[str, ...], prompt_files: tuple[str, ...]
                 ) -> tuple[list[Any], list[str]]:
    """(items, where each came from) of the FILES and --prompt-file arguments.

    A Markdown file (``.md``) or a --prompt-file is one item; anything else is
    JSON / JSON Lines. A file that holds no item is an error naming it.
    """
    from harness.cli import promptfile
    from harness.cli.intake import InputError, parse

    items: list[Any] = []
    sources: list[str] = []
    for f in files + prompt_files:
        source = "stdin" if f == "-" else f
        try:
            text = sys.stdin.read() if f == "-" else Path(f).read_text(encoding="utf-8")
            if f in prompt_files or promptfile.is_prompt_file(f):
                found = [promptfile.parse(text, source)]
            else:
                found = parse(text, source)
        except UnicodeDecodeError as exc:
            usage_error(f"{source}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset"
                        f" {exc.start}); an item's prompt is text: save the file as UTF-8")
        except (OSError, InputError, promptfile.PromptFileError) as exc:
            usage_error(str(exc))
        if not found:
            usage_error(f"{source}: no item in it (the file is empty); give a JSON object, a"
                        " JSON list or JSON Lines, or a Markdown prompt file (.md)")
        items += found
        sources += [source if len(found) == 1 else f"{source}:{i + 1}"
                    for i in range(len(found))]
    return items, sources


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
@click.option("--prompt-file", "prompt_files", multiple=True,
              type=click.Path(dir_okay=False, exists=True),
              help="A Markdown prompt file as one item, whatever its name (repeatable).")
@click.option("--priority", default=None, help="high, medium, low or 0-9 (0 first).")
@click.option("--rig", default=None, help="Rig label ({{RIG}} in the prompt).")
@click.option("--depends-on", multiple=True, help="Id that must be done first (repeatable).")
@click.option("--atomic", is_flag=True, help="Add nothing unless every item is valid.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.pass_context
def enqueue(ctx: click.Context, files: tuple[str, ...], item_id: str | None, title: str | None,
            prompt: str | None, command: str | None, prompt_files: tuple[str, ...],
            priority: str | None, rig: str | None, depends_on: tuple[str, ...], atomic: bool,
            as_json: bool) -> None:
    """Add items from options, from Markdown prompt files (one item each), or from
    JSON / JSON list / JSONL files ('-' = stdin).

    A Markdown file's id is its file name, its title its first heading, its
    prompt its text; optional front matter (TOML between +++ lines, or simple
    key: value lines between ---) sets priority, depends_on, meta and the other
    fields. Without an id, an item's id is made from its title (fix-the-login-bug).
    The old harness's state/queue.json ([{"id","type","title","priority","rig"}])
    is accepted as is. Exit 1 if anything was refused.

    \b
    Examples:
      parallel-harness enqueue --title "Fix flaky test" --prompt "..." --priority high
      parallel-harness enqueue tasks/*.md
      parallel-harness enqueue tasks.jsonl
      parallel-harness enqueue --atomic state/queue.json
    """
    from harness.cli.intake import submit

    items, sources = _read_inputs(files, prompt_files)
    fields = {"id": item_id, "title": title, "prompt": prompt, "command": command,
              "priority": priority, "rig": rig, "depends_on": list(depends_on) or None}
    if any(v is not None for v in fields.values()):
        if not any((v or "").strip() for v in (title, prompt, command)):
            usage_error("an item needs something to do: give --title, --prompt or --command"
                        " (or FILES / --prompt-file)")
        items.append({k: v for k, v in fields.items() if v is not None})
        sources.append("options")
    if not items:
        usage_error("nothing to enqueue: give FILES (JSON, JSONL or .md prompt files),"
                    " --prompt-file, or --title/--prompt/--command")
    report = submit(open_queue(ctx), items, atomic=atomic, template=_template(ctx),
                    sources=sources)
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

    Tokens and cost per attempt are those of ``sessions list`` (one reader:
    metrics.json, else the agent's stream so far).

    \b
    Example:
      parallel-harness show fix-flaky-test
    """
    from harness.cli.render import render_item
    from harness.views import attempts
    from harness.views.status import item_report

    ws = workspace(ctx)
    report = item_report(ws, item_id)
    if report is None:
        usage_error(f"no item {item_id!r} in {ws.queue_dir}; `parallel-harness ls STATE`"
                    " lists the ids (ls pending, ls failed, ...)")
    running = attempts.running_attempts(ws)
    for a in report["attempts"]:
        info = attempts.attempt_info(item_id, a["attempt"], ws.attempt_dir(item_id, a["attempt"]),
                                     running=running, parse=False)
        a.update({k: info[k] for k in ("reason", "detail", "tokens", "cost_usd", "turns",
                                       "pushed", "pr_url")})
    if as_json:
        echo_json(report)
    else:
        click.echo(render_item(report))
