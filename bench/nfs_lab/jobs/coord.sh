# Coordinators of the project's multi-host mode on one workspace on NFS, one per guest.
# Adapted from shared/nfs-lab/lab/jobs/coord.sh. Sourced by a job the driver generates, which
# sets REPO (the checkout whose .venv the guests run), W (workspace, on NFS), O (output dir,
# hostfs) and STEP:
#   setup    git repo + `init --agent sim` + multi_host = true, host_stale_after = $STALE;
#            enqueue $NITEMS sim items of $SECS s each
#   host     at $T0 start `run --agents $AGENTS`; FAULT=kill: once $READY of this host's workers
#            are working (and not before T0+$MIN_AT), SIGKILL the coordinator, workers and
#            agents (pids from this host's own event log); FAULT=mark: write $O/ready.$H instead
#            (the driver then halts or freezes this guest from outside)
#   twin     try `run` $TRIES times (a second coordinator with this host id): each must exit 2
#   collect  fsck, status, the queue listing, every host's events and lease files -> $O
# HOST_ID, when set, becomes HARNESS_HOST_ID (default: hostname + boot id).
PH=$REPO/.venv/bin/parallel-harness
PY=$REPO/.venv/bin/python
export HARNESS_RUN_MEMORY_FLOOR_MB=0
[ -n "${HOST_ID:-}" ] && export HARNESS_HOST_ID=$HOST_ID
git config --global user.email lab@example.invalid; git config --global user.name lab
git config --global --add safe.directory '*'
H=$(hostname)
ME=$H-$GIP
mkdir -p $O
log() { echo "$(date +%s.%N) $ME $*" >> $O/$ME.timeline; }
until_t() { while [ "$(date +%s)" -lt "$1" ]; do sleep 0.1; done; }

setup_ws() {
    rm -rf $W; mkdir -p $W && cd $W && git init -q -b main && echo x > README && git add README && git commit -qm init
    $PH init --agent sim > $O/init.out 2>&1
    sed -i -e 's/^multi_host = false/multi_host = true/' \
        -e "s/^host_stale_after = .*/host_stale_after = $STALE/" harness.toml
    $PY - "$NITEMS" "$SECS" > items.jsonl <<'PYEOF'
import json, sys
for i in range(int(sys.argv[1])):
    print(json.dumps({"id": f"it-{i:02d}", "title": f"item {i}", "prompt": "do it",
                      "meta": {"sim": {"behavior": "slow", "seconds": float(sys.argv[2]),
                                       "file": f"f{i:02d}.txt"}}}))
PYEOF
    $PH enqueue items.jsonl > $O/enqueue.out 2>&1
    $PH doctor > $O/doctor.out 2>&1
    log "setup done: $(ls queue/pending | wc -l) pending"
}

case $STEP in
setup)
    setup_ws
    ;;
host)
    cd $W
    HID=$($PY -c 'from harness.liveness.hosts import host_id; print(host_id())')
    log "host id $HID"
    until_t $T0
    log "start coordinator"
    $PH run --agents ${AGENTS:-3} > $O/run-$ME.out 2>&1 &
    CP=$!
    if [ "${FAULT:-none}" != none ]; then
        # wait until READY of this host's workers hold an item with a running agent
        $PY - "$HID" "${READY:-2}" "$((T0 + ${MIN_AT:-0}))" <<'PYEOF'
import glob, json, sys, time
hid, ready, not_before = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
while True:
    n = 0
    for f in glob.glob(f"state/heartbeats/{hid}.w*.json"):
        try:
            hb = json.load(open(f))
        except (OSError, ValueError):
            continue
        n += bool(hb.get("item") and hb.get("agent_pid"))
    if n >= ready and time.time() >= not_before:
        break
    time.sleep(0.2)
PYEOF
        if [ "$FAULT" = mark ]; then
            log "ready for the fault"
            touch $O/ready.$H
        else
            PIDS=$($PY - "state/events/$HID.jsonl" <<'PYEOF'
import json, sys
for line in open(sys.argv[1], "rb"):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("event") == "worker-spawn":
        print(e["pid"])
    elif e.get("event") == "agent-start" and e.get("agent_pid"):
        print(e["agent_pid"])
PYEOF
)
            log "FAULT kill: SIGKILL coordinator $CP, then the groups of workers and agents" $PIDS
            kill -9 $CP
            for p in $PIDS; do kill -9 -- -$p 2>/dev/null; kill -9 $p 2>/dev/null; done
            log "killed"
            sleep 5
            exit 0
        fi
    fi
    wait $CP
    log "coordinator exit $?"
    ;;
twin)
    cd $W
    log "host id $($PY -c 'from harness.liveness.hosts import host_id; print(host_id())')"
    for n in $(seq ${TRIES:-3}); do
        log "twin run attempt $n"
        $PH run --agents 1 > $O/twin-$ME-$n.out 2>&1
        log "twin run attempt $n exit $?: $(grep -m1 -o 'error: .*' $O/twin-$ME-$n.out | cut -c1-300)"
        sleep 3
    done
    ;;
refuse)
    # a mount the harness must refuse for several hosts: `run` exits 2 before touching the queue
    grep " /tmp/nfs/uml/mnt/nfs " /proc/self/mountinfo > $O/mountinfo-$ME.txt
    setup_ws
    before=$(ls queue/pending | wc -l)
    $PH run --agents 1 > $O/refuse-$ME.out 2>&1
    rc=$?
    log "refuse run exit $rc: $(grep -m1 -o 'error: .*' $O/refuse-$ME.out | cut -c1-400)"
    log "queue after: pending $before -> $(ls queue/pending | wc -l), claimed $(ls queue/claimed | wc -l), leases $(ls state/hosts 2>/dev/null | wc -l)"
    ;;
collect)
    cd $W
    $PH fsck > $O/fsck.out 2>&1; echo "$?" > $O/fsck.rc
    $PH status > $O/status.out 2>&1
    for s in pending claimed waiting done failed; do ls queue/$s | sed "s/^/$s /"; done > $O/listing.txt
    mkdir -p $O/events $O/hosts $O/locks
    cp state/events/*.jsonl $O/events/ 2>/dev/null; cp state/hosts/* $O/hosts/ 2>/dev/null
    cp state/workers/*.log $O/locks/ 2>/dev/null
    $PY - "$REPO" > $O/invariants.json <<'PYEOF'
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from harness.queue.invariants import check
ids = [json.loads(l)["id"] for l in open("items.jsonl") if l.strip()]
print(json.dumps([str(v) for v in check(Path("queue"), enqueued=ids, expect_finished=True)]))
PYEOF
    log "collected"
    ;;
esac
