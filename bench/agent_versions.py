#!/usr/bin/env python3
"""The end-to-end agent tests (tests/test_real_agents.py) with every tested CLI version.

The default suite runs only the last tested version of each CLI; this runs the claude
tests once per version in harness/agents/tested_versions.toml (and the codex tests once
per codex version), each as its own pytest process with ``HARNESS_AGENT_<CLI>_VERSION``
set, and prints one line per version: passed, failed, skipped, seconds. A version that
is not installed is reported as skipped (tests/agentclis.py says where it looked; set
``HARNESS_REQUIRE_AGENT_CLIS=1`` to make that a failure).

    python3 bench/agent_versions.py [--cli claude|codex] [-- PYTEST ARGS]

Exit 1 if any version failed. Every process a test starts is ended by that test.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VERSIONS = tomllib.loads((REPO / "harness" / "agents" / "tested_versions.toml").read_text())
SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|error)")


def run_version(cli: str, version: str, extra: list[str]) -> tuple[dict[str, int], float, int]:
    env = {**os.environ, f"HARNESS_AGENT_{cli.upper()}_VERSION": version}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_real_agents.py", "-k", cli, *extra], cwd=REPO, env=env,
                          capture_output=True, text=True)
    seconds = time.monotonic() - start
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    counts = {kind: int(n) for n, kind in SUMMARY.findall(last)}
    if proc.returncode not in (0, 5):
        sys.stdout.write(proc.stdout[-4000:])
    return counts, seconds, proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cli", choices=sorted(VERSIONS), action="append")
    parser.add_argument("pytest_args", nargs="*")
    args = parser.parse_args()
    failed = False
    for cli in args.cli or sorted(VERSIONS):
        for version in VERSIONS[cli]["tested"]:
            counts, seconds, code = run_version(cli, version, args.pytest_args)
            failed |= code not in (0, 5)
            said = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "no tests"
            print(f"{cli} {version}: {said} in {seconds:.0f} s", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
