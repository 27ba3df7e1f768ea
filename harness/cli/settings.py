"""``config show``: the effective settings and where each came from."""

from __future__ import annotations

import click

from harness.cli.common import echo_json, load_config, workspace


@click.group()
def config() -> None:
    """Inspect harness.toml as the harness reads it."""


@config.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def show(ctx: click.Context, as_json: bool) -> None:
    """Every setting's effective value and its origin: file, env, flag or default.

    \b
    Examples:
      parallel-harness config show
      HARNESS_RUN_AGENTS=6 parallel-harness config show --json
    """
    from harness.config import effective

    ws = workspace(ctx)
    rows = effective(load_config(ctx), ws.config_file)
    if as_json:
        echo_json(rows)
        return
    from harness.cli.render import render_settings

    click.echo(render_settings(rows))
