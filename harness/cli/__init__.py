"""The ``parallel-harness`` command line: commands, rendering, operator input."""
