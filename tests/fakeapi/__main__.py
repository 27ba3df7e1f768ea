"""``python -m tests.fakeapi [--port N] [--log FILE] [--dump DIR]``: serve until SIGINT/TERM."""

from __future__ import annotations

import argparse
import signal
import threading

from .server import FakeModelAPI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fakeapi", description=__doc__)
    ap.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    ap.add_argument("--log", help="append one JSON line per request to this file")
    ap.add_argument("--dump", help="write each request's headers and body to this folder")
    ap.add_argument("--default", default="text", help="behaviour for requests without a marker")
    ap.add_argument(
        "--hang-seconds", type=float, default=600.0, help="how long hanging answers hold"
    )
    args = ap.parse_args(argv)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with FakeModelAPI(
        args.port,
        log_path=args.log,
        dump_dir=args.dump,
        default_behaviour=args.default,
        hang_seconds=args.hang_seconds,
    ) as api:
        print(f"fakeapi listening on {api.url}", flush=True)
        try:
            done.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
