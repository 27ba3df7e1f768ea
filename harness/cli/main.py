"""The ``parallel-harness`` command line.

Imports are lazy: ``status`` must answer fast on a queue of 100,000 items,
so heavy modules (pydantic, gitpython, rich) load only in the commands that
use them. Exit codes: 0 ok, 1 failures in the run or check, 2 usage or
configuration errors; an interrupted run exits 128 + the signal number.
"""

from __future__ import annotations

import click


@click.group(invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(file_okay=False), envvar="HARNESS_ROOT", default=".",
              show_default=True, help="Workspace directory (also HARNESS_ROOT).")
@click.option("--agents", type=click.IntRange(0, 256), default=None,
              help="With no subcommand: run with this many workers.")
@click.option("--forever", is_flag=True, help="With no subcommand: keep polling for new items.")
@click.version_option(package_name="parallel-harness", prog_name="parallel-harness",
                      message="%(prog)s %(version)s")
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
    if ctx.invoked_subcommand not in ("init", "demo"):
        # Queue items, state and logs hold prompts and agent output: 0600 / 0700. init
        # writes the user's own files (harness.toml, prompts/) with the user's umask.
        from harness.paths import private_files

        private_files()
    if ctx.invoked_subcommand is None:
        if agents is None and not forever:
            click.echo(ctx.get_help())
            return
        from harness.cli.run import run

        ctx.invoke(run, agents=agents, forever=forever)


def _register() -> None:
    """Add the commands; each module imports only click at load, so ``status`` stays fast."""
    from harness.cli import (bulk, control, doctor, fsck, gc, items, logs, run, sessions,
                             settings, setup, status)

    for command in (run.run, setup.init, setup.demo, items.enqueue, items.ls_cmd, items.show,
                    bulk.retry, bulk.cancel, bulk.mark_done, bulk.purge, control.pause,
                    control.resume, control.scale, status.status, fsck.fsck, doctor.doctor,
                    gc.gc, status.metrics, settings.config, sessions.sessions, logs.logs):
        main.add_command(command)


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
