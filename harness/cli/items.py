"""Commands on items: ``enqueue``, ``ls``, ``show`` (``retry``, ``cancel`` and the other
hand moves are in harness.cli.bulk)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import nullcontext
from itertools import chain
from pathlib import Path
from typing import Any

import click
import orjson

from harness.cli.common import (EXIT_FAILURES, echo_json, load_config, open_queue, usage_error,
                                workspace)
from harness.queue.names import STATES, ItemName


def _rows(files: tuple[str, ...], prompt_files: tuple[str, ...]) -> Iterator[tuple[str, Any]]:
    """(where, item) of the FILES and --prompt-file arguments, streamed (see intake.read).

    A Markdown file (``.md``) or a --prompt-file is one item; anything else is
    JSON / JSON Lines. A file that holds no item, or a line that is not JSON, is a
    usage error naming it, raised when it is reached.
    """
    from harness.cli import promptfile
    from harness.cli.intake import InputError, read

    for f in files + prompt_files:
        source = "stdin" if f == "-" else f
        found = 0
        try:
            if f in prompt_files or promptfile.is_prompt_file(f):
                text = sys.stdin.read() if f == "-" else Path(f).read_text(encoding="utf-8")
                found = 1
                yield source, promptfile.parse(text, source)
            else:
                with (nullcontext(sys.stdin.buffer) if f == "-" else open(f, "rb")) as stream:
                    for row in read(stream, source):
                        found += 1
                        yield row
        except UnicodeDecodeError as exc:
            usage_error(f"{source}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset"
                        f" {exc.start}); an item's prompt is text: save the file as UTF-8")
        except (OSError, InputError, promptfile.PromptFileError) as exc:
            usage_error(str(exc))
        if not found:
            usage_error(f"{source}: no item in it (the file is empty); give a JSON object, a"
                        " JSON list or JSON Lines, or a Markdown prompt file (.md)")


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
    from harness.cli.intake import stream

    fields = {"id": item_id, "title": title, "prompt": prompt, "command": command,
              "priority": priority, "rig": rig, "depends_on": list(depends_on) or None}
    options = None
    if any(v is not None for v in fields.values()):
        if not any((v or "").strip() for v in (title, prompt, command)):
            usage_error("an item needs something to do: give --title, --prompt or --command"
                        " (or FILES / --prompt-file)")
        options = {k: v for k, v in fields.items() if v is not None}
    elif not files and not prompt_files:
        usage_error("nothing to enqueue: give FILES (JSON, JSONL or .md prompt files),"
                    " --prompt-file, or --title/--prompt/--command")
    rows = chain(_rows(files, prompt_files), [("options", options)] if options else [])
    report = _Printer(as_json)
    refused = stream(open_queue(ctx), rows, atomic=atomic, template=_template(ctx),
                     on_added=report.added, on_refused=report.refused)
    report.close(atomic)
    sys.exit(EXIT_FAILURES if refused else 0)


class _Printer:
    """Prints each added item as it is published (a million of them are never held in
    memory); refusals, which are few, at the end. ``--json``: one JSON document.

    The per-item lines go to ``sys.stdout`` unflushed (line-buffered on a terminal,
    block-buffered into a pipe or file): ``click.echo`` flushed each one, a write(2)
    per item that cost a tenth of an enqueue. Everything is flushed before the
    refusals go to stderr and at the end, so the order on a terminal is unchanged.
    """

    def __init__(self, as_json: bool) -> None:
        self.as_json, self.count = as_json, 0
        self.refusals: list[tuple[str, str]] = []
        self._write = sys.stdout.write
        if as_json:
            self._write('{"added": [')

    def added(self, name: ItemName) -> None:
        if self.as_json:
            sep = "," if self.count else ""
            self._write(f'{sep}\n  {{"id": "{name.id}", "name": "{name}"}}')
        else:
            state = "waiting" if name.due else "pending"
            self._write(f"added    {name.id:<30} queue/{state}/{name}\n")
        self.count += 1

    def refused(self, where: str, why: str) -> None:
        self.refusals.append((where, why))

    def close(self, atomic: bool) -> None:
        if self.as_json:
            refused = orjson.dumps([{"item": w, "reason": r} for w, r in self.refusals]).decode()
            self._write(f'\n], "refused": {refused}}}\n')
            sys.stdout.flush()
            return
        sys.stdout.flush()
        for where, why in self.refusals:
            click.echo(f"refused  {where}: {why}", err=True)
        note = " (--atomic: nothing added)" if atomic and self.refusals else ""
        click.echo(f"{self.count} added, {len(self.refusals)} refused{note}")


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
