"""What every command module shares: exit codes, the workspace of ``--root``, errors, JSON.

Kept free of heavy imports: ``status`` must answer fast (see bench/status_100k.py).
"""

from __future__ import annotations

import sys
from typing import Any, NoReturn

import click

EXIT_FAILURES = 1  # items failed, violations found, a follow timed out
EXIT_USAGE = 2     # bad arguments, configuration, or not a workspace
EXIT_HARNESS = 3   # the harness itself could not go on (an internal error); nothing is lost


def usage_error(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def workspace(ctx: click.Context, *, require: bool = True):  # -> Workspace
    """The workspace named by the global ``--root`` (default: the current directory).

    With ``require`` (every command but init, demo and doctor), a directory that
    is not a workspace is a usage error: an operator in the wrong directory must
    not be shown an empty queue, nor have state/ files written there.
    """
    from harness.workspace import Workspace

    obj = ctx.find_root().obj
    ws = Workspace.at((obj.get("root") or ".") if isinstance(obj, dict) else ".")
    if require and not ws.exists():
        usage_error(f"{ws.root} is not a parallel-harness workspace (no harness.toml, no queue/);"
                    " run `parallel-harness init` there, or pass --root DIR (or set HARNESS_ROOT)")
    return ws


def echo_json(data: Any) -> None:
    import orjson

    click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def load_config(ctx: click.Context):  # -> Config
    """harness.toml of the workspace; a ConfigError is a usage error (exit 2)."""
    from harness import config

    try:
        return config.load(workspace(ctx).config_file)
    except config.ConfigError as exc:
        usage_error(str(exc))


def open_queue(ctx: click.Context):  # -> Queue
    """The workspace's queue with harness.toml's settings (durable, max_attempts, backoff)."""
    from harness.config import queue_options
    from harness.queue.core import Queue

    return Queue(workspace(ctx).queue_dir, **queue_options(load_config(ctx)))


def operator_event(ctx: click.Context, kind: str, **fields: Any) -> None:
    """Record an operator action in state/events.jsonl: a running `run` prints it, and the
    log shows who paused or scaled the pool, and when."""
    ws = workspace(ctx)
    ws.state_dir.mkdir(parents=True, exist_ok=True)
    ws.log_event(kind, source="operator", **fields)
