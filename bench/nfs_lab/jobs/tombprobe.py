#!/usr/bin/env python3
"""Does a host that was frozen see a file another host created meanwhile? (the tombstone)

  tombprobe.py watch DIR OUTJSON SECS   every 0.25 s: open DIR/x.dead (r1), then rename a fresh
                                        file into DIR (as a lease beat does), then open again (r2)
  tombprobe.py create DIR               create DIR/x.dead (the burial, from another host)
"""
import json, os, sys, time

def try_open(p):
    try:
        with open(p, "rb") as f:
            f.read()
        return "found"
    except OSError as e:
        return os.strerror(e.errno)

cmd, d = sys.argv[1], sys.argv[2]
if cmd == "create":
    fd = os.open(f"{d}/x.dead", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, b"dead"); os.fsync(fd); os.close(fd)
    sys.exit(0)
os.makedirs(d, exist_ok=True)
out, secs, rows = sys.argv[3], float(sys.argv[4]), []
t_end = time.time() + secs
while time.time() < t_end:
    r1 = try_open(f"{d}/x.dead")
    with open(f"{d}/.lease.tmp", "w") as f:
        f.write(str(time.time()))
    os.rename(f"{d}/.lease.tmp", f"{d}/lease")
    r2 = try_open(f"{d}/x.dead")
    rows.append([round(time.time(), 3), round(time.monotonic(), 3), r1, r2])
    if r1 == "found" and r2 == "found":
        break
    time.sleep(0.25)
    if len(rows) == 8:
        open(f"{os.environ['OUT']}/probe.ready", "w").close()
json.dump(rows, open(out, "w"))
