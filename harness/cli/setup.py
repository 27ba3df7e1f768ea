"""``init`` (lay out a workspace in a git repository) and ``demo`` (try the harness
in a throw-away one)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from harness.cli.common import echo_json, usage_error


@click.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@click.option("--agent", "preset", type=click.Choice(["claude", "codex", "shell", "sim"]),
              default="claude", show_default=True, help="Agent preset for harness.toml.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
def init(directory: str, preset: str, as_json: bool) -> None:
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
    if as_json:
        echo_json({"created": [str(p) for p in created]})
        return
    for path in created:
        click.echo(f"created  {path}")
    click.echo("next: edit harness.toml, then `parallel-harness enqueue ...` and"
               " `parallel-harness --agents 3`")


@click.command()
@click.option("--agents", type=click.IntRange(1, 64), default=3, show_default=True)
@click.option("--keep", is_flag=True, help="Keep the demo workspace and print its path.")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None,
              help="Build the demo workspace here (a new or empty directory) and keep it.")
@click.option("--fast", is_flag=True, help="Shorter items (used by the tests).")
def demo(agents: int, keep: bool, directory: str | None, fast: bool) -> None:
    """Run a self-contained demo with the sim agent in a temporary git workspace.

    \b
    Examples:
      parallel-harness demo --agents 3 --keep
      parallel-harness demo --dir ./harness-demo
    """
    from harness.cli.demo import run_demo

    where = None
    if directory is not None:
        where = Path(directory)
        if where.exists() and any(where.iterdir()):
            usage_error(f"{where} is not empty; give a new or empty directory to --dir"
                        " (or leave --dir out for a temporary one)")
    sys.exit(run_demo(agents=agents, keep=keep or where is not None, fast=fast, root=where))
