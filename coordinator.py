"""Runnable entry point: ``python coordinator.py --agents 3`` (same as ``parallel-harness run``)."""

import sys

from harness.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
