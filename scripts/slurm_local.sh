#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, to check `liif batch --shard auto` under a real job
# array. Not part of CI: it installs packages and starts daemons. Run it as root from the repo,
# with the environment where liif is installed active:
#
#   . .venv/bin/activate && sudo -E env PATH="$PATH" scripts/slurm_local.sh
#
# It installs Slurm and MUNGE from the distribution's packages (Debian/Ubuntu: apt-get), writes
# a private slurm.conf for this one node, starts munged, slurmctld and slurmd (niced, so the
# jobs are too), submits docs/cluster.md's liif-array.sbatch, exactly as written there, as a
# 3-task array with ids 4-6 over a folder of small images, and checks that
#   - each task's log starts with the shard it found (k/3 from Slurm array task 4+k-1),
#   - the tasks' JSONL reports hold every image done exactly once, and nothing else,
#   - the outputs are byte-identical to one plain `liif batch` run over the same folder.
# Leaves the cluster running with KEEP=1; WORK (default /tmp/liif-slurm) holds everything.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${WORK:-/tmp/liif-slurm}
N_IMAGES=${N_IMAGES:-6}
ARRAY=${ARRAY:-4-6}
SCALE=${SCALE:-2}
TIMEOUT_S=${TIMEOUT_S:-900}
LIIF=$(command -v liif) || { echo "liif is not on PATH: activate its environment" >&2; exit 2; }
PY=$(dirname "$LIIF")/python
[ "$(id -u)" = 0 ] || { echo "run as root (it installs packages and starts daemons)" >&2; exit 2; }

say() { printf '\n== %s\n' "$*"; }

say "install Slurm and MUNGE from the distribution's packages"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
        || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends slurmd slurmctld slurm-client munge
fi
slurmctld -V

say "configure a one-node cluster in $WORK"
stop_daemons() {
    for pidfile in "$WORK/slurmd.pid" "$WORK/slurmctld.pid"; do
        [ -s "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null || true
    done
    [ -s "$WORK/munged.pid" ] && kill "$(cat "$WORK/munged.pid")" 2>/dev/null || true
    sleep 1
}
stop_daemons
rm -rf "$WORK"
mkdir -p "$WORK"/{state,spool,jobs,in} /run/munge
HOST=$(hostname -s)
NODE=$(slurmd -C | head -1)  # "NodeName=<host> CPUs=... RealMemory=..." as slurmd sees it
export SLURM_CONF="$WORK/slurm.conf"
cat > "$SLURM_CONF" <<EOF
ClusterName=liif-local
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
MinJobAge=3600
$NODE State=UNKNOWN
PartitionName=local Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF

say "start munged, slurmctld, slurmd (nice 19)"
chown munge:munge /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then  # not running yet: ours to stop
    runuser -u munge -- munged
    sleep 1
    cp /run/munge/munged.pid "$WORK/munged.pid"
fi
munge -n | unmunge | grep -q 'STATUS: *Success'
nice -n 19 slurmctld -f "$SLURM_CONF"
nice -n 19 slurmd -f "$SLURM_CONF"
[ "${KEEP:-0}" = 1 ] || trap stop_daemons EXIT
for _ in $(seq 60); do
    sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && break
    sleep 1
done
sinfo

say "a folder of $N_IMAGES small images"
"$PY" - "$WORK/in" "$N_IMAGES" <<'EOF'
import sys
from pathlib import Path

import numpy as np
from PIL import Image

folder, n = Path(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
y, x = np.mgrid[0:24, 0:32].astype(np.float32)
for k in range(n):
    img = np.stack([np.sin(x / (3 + c + k) + c) * np.cos(y / (4 + c)) for c in range(3)], -1)
    img = (np.clip(img * 0.4 + 0.5 + rng.normal(0, 0.02, img.shape), 0, 1) * 255).round()
    (folder / f"sub{k % 2}").mkdir(exist_ok=True)
    Image.fromarray(img.astype(np.uint8)).save(folder / f"sub{k % 2}" / f"img{k}.png")
EOF

say "liif-array.sbatch, as docs/cluster.md has it"
awk '/<!-- liif-array.sbatch/ {grab=1; next} grab && /^```bash$/ {on=1; next}
     on && /^```$/ {exit} on {print}' "$REPO/docs/cluster.md" > "$WORK/jobs/liif-array.sbatch"
[ -s "$WORK/jobs/liif-array.sbatch" ] || { echo "no sbatch script in docs/cluster.md" >&2; exit 1; }
cat "$WORK/jobs/liif-array.sbatch"

say "submit a 3-task array (ids $ARRAY)"
cd "$WORK/jobs"
export IN="$WORK/in" OUT="$WORK/out" SCALE OMP_NUM_THREADS=1
JOB=$(sbatch --parsable --array="$ARRAY" --cpus-per-task=1 liif-array.sbatch --recursive)
echo "job $JOB"
t0=$(date +%s)
while squeue -h -j "$JOB" 2>/dev/null | grep -q .; do
    if [ $(( $(date +%s) - t0 )) -gt "$TIMEOUT_S" ]; then
        echo "the array did not finish in ${TIMEOUT_S}s" >&2; squeue; exit 1
    fi
    sleep 2
done
echo "finished in $(( $(date +%s) - t0 ))s"
scontrol show job "$JOB" | grep -E 'JobId=|JobState=|ExitCode=' | paste - - - || true
for log in liif-"$JOB"_*.log; do echo "--- $log"; cat "$log"; done

say "one plain run over the same folder, for comparison"
nice -n 19 liif batch "$IN" "$WORK/one" --scale "$SCALE" --recursive --quiet

say "check: each image done exactly once, outputs identical to the plain run"
"$PY" - "$WORK" "$JOB" "$ARRAY" <<'EOF'
import json
import sys
from collections import Counter
from pathlib import Path

work, job, array = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
lo, hi = map(int, array.split("-"))
ids = list(range(lo, hi + 1))
inputs = sorted(str(p) for p in (work / "in").rglob("*.png"))
problems = []
for k, tid in enumerate(ids):
    log = (work / "jobs" / f"liif-{job}_{tid}.log").read_text().splitlines()
    want = f"shard {k + 1}/{len(ids)} from Slurm array task {tid} of ids {lo}-{hi}"
    if not log or log[0] != want:
        problems.append(f"task {tid}: first line {log[:1]}, want {want!r}")
lines = [json.loads(ln) for tid in ids
         for ln in (work / "jobs" / f"liif-{job}_{tid}.jsonl").read_text().splitlines()]
done = Counter(r["input"] for r in lines if r["status"] == "done")
other = [r for r in lines if r["status"] != "done"]
shards = Counter(r["shard"] for r in lines)
if sorted(done) != inputs or set(done.values()) != {1}:
    problems.append(f"done counts {dict(done)} for inputs {inputs}")
if other:
    problems.append(f"not done: {other}")
for rec in lines:
    out = Path(rec["output"])
    one = work / "one" / out.relative_to(work / "out")
    if out.read_bytes() != one.read_bytes():
        problems.append(f"{out} differs from the plain run's {one}")
print(f"{len(inputs)} images, {len(lines)} report lines, done once each: "
      f"{sorted(done.values()) == [1] * len(inputs)}, per shard: {dict(sorted(shards.items()))}")
if problems:
    print("FAILED:\n  " + "\n  ".join(problems))
    sys.exit(1)
print("OK: every image done exactly once by the 3 array tasks, byte-identical to one run")
EOF
liif batch --summary "$WORK"/jobs/liif-"$JOB"_*.jsonl
