"""``status`` (counts, workers, throughput, failures; live with ``--watch``) and ``metrics``."""

from __future__ import annotations

import sys

import click

from harness.cli.common import echo_json, workspace


@click.command()
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
      parallel-harness status --watch --json | jq -c .counts    # a JSON line per change
    """
    from harness.cli.render import render_text
    from harness.views.status import collect

    ws = workspace(ctx)
    if watch:
        from harness.cli.live import watch as live

        live(ws, interval, timeout=timeout, as_json=as_json)
    elif as_json:
        echo_json(collect(ws))
    else:
        click.echo(render_text(collect(ws)))


@click.command()
@click.pass_context
def metrics(ctx: click.Context) -> None:
    """Print state/metrics.prom (Prometheus text format) written by the running coordinator.

    \b
    Example:
      parallel-harness metrics | grep harness_items
    """
    from harness.pool.metrics import METRICS_FILE

    path = workspace(ctx).state_dir / METRICS_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        click.echo(f"error: {path} does not exist; the coordinator writes it every tick while"
                   " `parallel-harness run` is running (start one: `parallel-harness run`)",
                   err=True)
        sys.exit(1)
    click.echo(text, nl=False)
