"""Runnable entry point for one worker (what the coordinator starts): ``python worker.py --id w1``."""

import sys

from harness.pool.worker import main

if __name__ == "__main__":
    sys.exit(main())
