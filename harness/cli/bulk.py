"""Commands that move items by hand: ``retry``, ``cancel``, ``mark-done``, ``purge``.

Each takes item ids or a selector (``retry --all-failed``, ``retry --reason
stalled``, ``cancel --pending``, ``purge done --older-than 7d``), prints a line
per item and a count, and with ``--dry-run`` only says what it would do. An
id that is not where the command needs it is named with where it is and what
to run instead; the others still go ahead, and the exit code is 2. An item a
selector chose that a running pool claimed or finished before the command reached
it is left alone and counted, not an error. The queue is listed once per command
(Queue.locate), not once per item: a bulk command over 100,000 items takes seconds.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from harness.cli.common import (EXIT_USAGE, echo_json, open_queue, operator_event, usage_error,
                                workspace)

dry_run_option = click.option("--dry-run", is_flag=True, help="Say what would change; change nothing.")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")


def where_is(queue: Any, item_id: str) -> tuple[str, Any] | None:
    """The (state, name) an item is under now, or None if the queue has no such item."""
    name = queue.find(item_id)
    if name is None:
        return None
    state = next((s for s in ("pending", "claimed", "waiting", "done", "failed")
                  if (queue.dir(s) / str(name)).exists()), None)
    return None if state is None else (state, name)


def misplaced(queue: Any, item_id: str, verb: str, wanted: str) -> str:
    """Why ``verb`` cannot act on ``item_id``, with the command that helps."""
    found = where_is(queue, item_id)
    state = found[0] if found else None
    if state is None:
        return (f"no item {item_id!r} in {queue.root}; `parallel-harness ls {wanted}` lists"
                f" the {wanted} ones")
    hint = {"done": f"it is done; `parallel-harness show {item_id}` shows its attempts",
            "failed": f"it failed; `parallel-harness retry {item_id}` runs it again",
            "claimed": f"it is running now; `parallel-harness cancel {item_id}` stops it",
            }.get(state, f"it is {state} already, waiting for a worker")
    return f"cannot {verb} {item_id!r}: {hint}"


PAST = {"retry": "retried", "cancel": "cancelled", "mark-done": "marked done", "purge": "purged"}


def report(rows: list[dict[str, Any]], refused: list[str], *, verb: str, dry_run: bool,
           as_json: bool, skipped: int = 0) -> None:
    """Print what was done (or would be), the refusals on stderr, a count; exit 2 if refused.

    ``skipped``: items a selector chose that moved on before the command reached them
    (a running pool claimed or finished them): left alone, and no error.
    """
    if as_json:
        echo_json({"dry_run": dry_run, "verb": verb, "items": rows, "count": len(rows),
                   "refused": refused, "skipped": skipped})
    else:
        did = f"would {verb}" if dry_run else PAST[verb]
        for row in rows:
            click.echo(f"{did:<13} {row['id']}" + (f": {row['detail']}" if row.get("detail")
                                                   else ""))
        for why in refused:
            click.echo(f"error: {why}", err=True)
        click.echo(f"{did} {len(rows)} item(s)"
                   + (f", {skipped} left alone (they started or ended meanwhile)" if skipped
                      else "")
                   + (f", {len(refused)} refused" if refused else ""))
    if refused:
        sys.exit(EXIT_USAGE)


class Selection:
    """The items a command acts on: ids the operator named, plus those a selector chose.

    ``located`` is one snapshot of where every item is (Queue.locate), so a bulk
    command lists the queue once, not once per item. A named item not where the
    command needs it is refused; a selected one that moved on since the snapshot
    (a running pool took or finished it) is skipped.
    """

    def __init__(self, queue: Any, named: tuple[str, ...], selector: list[str] | None = None,
                 located: dict[str, tuple[str, Any]] | None = None) -> None:
        self.queue, self.named, self.located = queue, list(named), located
        self.selected = {i for i in selector or () if i not in named}
        self.ids = self.named + [i for i in selector or () if i in self.selected]

    def seen(self, item_id: str) -> tuple[str, Any] | None:
        """(state, name) of the item: from the snapshot, or looked up now."""
        if self.located is not None and item_id in self.located:
            return self.located[item_id]
        return where_is(self.queue, item_id)


def apply(selection: Selection, states: tuple[str, ...], act: Any, *, verb: str, wanted: str,
          dry_run: bool) -> tuple[list[dict[str, Any]], list[str], int]:
    """Run ``act(item_id, state, name) -> row | None`` on each item in one of ``states``.

    Returns the rows, the refusals and how many were skipped. A named item elsewhere
    is refused with :func:`misplaced`, a QueueError from ``act`` (it moved meanwhile)
    too; for a selected item both count as skipped, as does ``act`` returning None.
    With ``dry_run``, ``act`` is not called.
    """
    from harness.queue.core import QueueError

    rows, refused, skipped = [], [], 0
    for item_id in selection.ids:
        chosen = item_id in selection.selected
        seen = selection.seen(item_id)
        if seen is None or seen[0] not in states:
            if chosen:
                skipped += 1
            else:
                refused.append(misplaced(selection.queue, item_id, verb, wanted))
            continue
        if dry_run:
            rows.append({"id": item_id, "detail": f"it is {seen[0]}"})
            continue
        try:
            row = act(item_id, *seen)
        except QueueError as exc:
            if not chosen:
                refused.append(str(exc))
            row = None
        if row is None:
            skipped += chosen
        else:
            rows.append(row)
    return rows, refused, skipped


def failed_ids(ws: Any, reason: str | None) -> list[str]:
    """Ids in failed/, in the order they failed; with ``reason``, those whose reason kind
    matches."""
    from harness.pool.runstats import reason_key
    from harness.views.status import failures

    return [f["item"] for f in failures(ws)
            if reason is None or reason_key(f["reason"]) == reason or reason in f["reason"]]


@click.command()
@click.argument("item_ids", nargs=-1)
@click.option("--all-failed", is_flag=True, help="Every item in failed/.")
@click.option("--reason", default=None, metavar="KIND",
              help="Items in failed/ whose reason is KIND (stalled, conflict, ...) or contains it.")
@dry_run_option
@json_option
@click.pass_context
def retry(ctx: click.Context, item_ids: tuple[str, ...], all_failed: bool, reason: str | None,
          dry_run: bool, as_json: bool) -> None:
    """Put failed items back in pending/, each with a fresh attempt budget.

    \b
    Examples:
      parallel-harness retry fix-flaky-test
      parallel-harness retry --reason stalled --dry-run
      parallel-harness retry --all-failed
    """
    if not item_ids and not all_failed and reason is None:
        usage_error("retry what? give item ids, --all-failed or --reason KIND"
                    " (`parallel-harness ls failed` lists them)")
    queue = open_queue(ctx)
    if all_failed or reason is not None:
        selection = Selection(queue, item_ids, failed_ids(workspace(ctx), reason),
                              queue.locate(("failed",)))
    else:
        selection = Selection(queue, item_ids)

    def act(item_id: str, state: str, name: Any) -> dict[str, Any]:
        new = queue.requeue_failed(item_id, name)
        operator_event(ctx, "retried", item=item_id)
        return {"id": item_id, "detail": f"queue/pending/{new}"}

    rows, refused, skipped = apply(selection, ("failed",), act, verb="retry", wanted="failed",
                                   dry_run=dry_run)
    report(rows, refused, verb="retry", dry_run=dry_run, as_json=as_json, skipped=skipped)


@click.command()
@click.argument("item_ids", nargs=-1)
@click.option("--pending", "all_pending", is_flag=True,
              help="Every item in pending/ and waiting/ (running ones are left alone).")
@dry_run_option
@json_option
@click.pass_context
def cancel(ctx: click.Context, item_ids: tuple[str, ...], all_pending: bool, dry_run: bool,
           as_json: bool) -> None:
    """Cancel items: a running agent is stopped; the item goes to failed/ (reason: cancelled).

    \b
    Examples:
      parallel-harness cancel fix-flaky-test
      parallel-harness cancel --pending --dry-run
    """
    if not item_ids and not all_pending:
        usage_error("cancel what? give item ids, or --pending for every pending and waiting"
                    " item")
    ws, queue = workspace(ctx), open_queue(ctx)
    if all_pending:
        located = queue.locate(("pending", "waiting"))
        # From the back of the queue: a running pool takes from the front, so the two
        # meet only at the end. Front to back, a cancel that lost the first item to a
        # worker trailed the workers item after item (each loss costs a fresh lookup).
        order = sorted(located, key=lambda i: str(located[i][1]), reverse=True)
        selection = Selection(queue, item_ids, order, located)
    else:
        selection = Selection(queue, item_ids)

    def act(item_id: str, state: str, name: Any) -> dict[str, Any] | None:
        return _cancel_one(ctx, ws, queue, item_id, (state, name),
                           stop_running=item_id not in selection.selected)

    rows, refused, skipped = apply(selection, ("pending", "waiting", "claimed"), act,
                                   verb="cancel", wanted="pending", dry_run=dry_run)
    report(rows, refused, verb="cancel", dry_run=dry_run, as_json=as_json, skipped=skipped)


def _cancel_one(ctx: click.Context, ws: Any, queue: Any, item_id: str, seen: tuple[str, Any],
                stop_running: bool) -> dict[str, Any] | None:
    """Cancel one item; a running one only with ``stop_running`` (named by the operator,
    not swept up by --pending): None when it is left alone."""
    reason = "cancelled by the operator (parallel-harness cancel)"
    if seen[0] != "claimed" and queue.cancel_unclaimed(item_id, reason, seen):
        operator_event(ctx, "cancelled", item=item_id, running=False)
        return {"id": item_id, "detail": "it was not running"}
    if not stop_running:
        return None
    ws.cancel_dir.mkdir(parents=True, exist_ok=True)
    (ws.cancel_dir / item_id).write_text("cancel\n")
    operator_event(ctx, "cancelled", item=item_id, running=True)
    return {"id": item_id, "detail": "requested: its worker stops the agent and dead-letters it"}


@click.command(name="mark-done")
@click.argument("item_ids", nargs=-1, required=True)
@dry_run_option
@json_option
@click.pass_context
def mark_done(ctx: click.Context, item_ids: tuple[str, ...], dry_run: bool, as_json: bool) -> None:
    """Move failed, pending or waiting items to done/ (you did the work by hand).

    Items waiting on them then run. Nothing is merged: with integrate = "merge",
    merge the work yourself.

    \b
    Example:
      git merge harness/greet-fr && parallel-harness mark-done greet-fr
    """
    queue = open_queue(ctx)

    def act(item_id: str, state: str, _name: Any) -> dict[str, Any]:
        name = queue.mark_done(item_id)
        operator_event(ctx, "marked-done", item=item_id, was=state)
        return {"id": item_id, "detail": f"from {state}/ to queue/done/{name}"}

    rows, refused, _ = apply(Selection(queue, item_ids), ("failed", "pending", "waiting"), act,
                             verb="mark-done", wanted="failed", dry_run=dry_run)
    report(rows, refused, verb="mark-done", dry_run=dry_run, as_json=as_json)


def parse_age(text: str) -> float:
    """Seconds in "7d", "12h", "30m", "90s" or a bare number of days."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    try:
        if text[-1:] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text) * 86400
    except ValueError:
        raise click.BadParameter(f"{text!r}: use a number and d, h, m or s (7d, 12h)") from None


@click.command()
@click.argument("state", type=click.Choice(["done", "failed"]))
@click.option("--older-than", "older_than", required=True, metavar="AGE",
              help="Only items that entered STATE this long ago: 7d, 12h, 30m.")
@click.option("--keep-logs", is_flag=True, help="Leave logs/<id>/ in place.")
@dry_run_option
@json_option
@click.pass_context
def purge(ctx: click.Context, state: str, older_than: str, keep_logs: bool, dry_run: bool,
          as_json: bool) -> None:
    """Remove old items from done/ or failed/ (and their logs), freeing their ids.

    Branches (harness/<id>) are left in git.

    \b
    Example:
      parallel-harness purge done --older-than 7d --dry-run
    """
    import shutil
    import time

    ws, queue = workspace(ctx), open_queue(ctx)
    cutoff = time.time() - parse_age(older_than)
    rows = []
    for name, entered in queue.terminal_ages(state):
        if entered >= cutoff:
            continue
        age = f"entered {state}/ {time.strftime('%Y-%m-%d %H:%M', time.localtime(entered))}"
        if not dry_run:
            if not queue.purge(state, name):
                continue
            if not keep_logs:
                shutil.rmtree(ws.logs_dir / name.id, ignore_errors=True)
        rows.append({"id": name.id, "detail": age})
    if rows and not dry_run:
        operator_event(ctx, "purged", state=state, items=[r["id"] for r in rows])
    report(rows, [], verb="purge", dry_run=dry_run, as_json=as_json)
