"""``python -m harness.cli``: the same as the ``parallel-harness`` command."""

from harness.cli.main import main

main()
