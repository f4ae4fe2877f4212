#!/usr/bin/env bash
# Train the next model on a lent GPU within one device `run`; bring the weights back (maintainers).
#
# The device tool's limits, which this keeps: one command at most 600 s (this plans BUDGET_S=540
# in all); at most 8 files come back from $OUT, each at most 16 MiB; at most 64 MiB of working
# tree travels (tracked files + the carried .gpu_data). Once, on this machine:
#     echo /.gpu_data/ >> "$(git rev-parse --git-path info/exclude)"
#     python scripts/pack_gpu_data.py     # train photos + 10 B100 images, measured against 64 MiB
# then one device `run` (docs/gpu-run.md: the call, what comes back, how to go on or resume):
#     {"command": "INIT=docs/weights/default-wip.pth bash scripts/gpu_train.sh",
#      "carry": [".gpu_data"], "timeout_s": 600}
# What it does, everything under $OUT (at most 5 files, see scripts/gpu_out.py):
#   1. scripts/device_check.py $CHECK_ARGS, at most CHECK_S seconds (into log.txt)
#   2. the starting weights' PSNR on VAL (the first 10 B100 images), at most VAL_S seconds
#   3. `liif train` in the run folder WORK/run (not under $OUT: its last.pth is ~24 MiB) until
#      RESERVE_S before the budget, then SIGTERM: the trainer saves mid-epoch and stops. Each
#      epoch (REPEAT passes, ~160 steps at batch 64) rewrites last.pth; every SAVE_S seconds
#      scripts/gpu_out.py exports a new one as $OUT/model.pth (fp16 weights, ~3 MiB) and
#      $OUT/last.pth (compact resume state, ~12 MiB), with $OUT/metrics.jsonl: a cut-off
#      loses about a minute.
#   4. the last export, $OUT/summary.txt (steps, steps/s, losses, PSNR before and after), and
#      a check of $OUT against the limits; $OUT/log.txt holds everything printed.
# RESUME (.gpu_data/resume/last.pth), if present, is a returned last.pth: the run continues it
# (same data, Adam's moments and EMA kept) instead of starting from INIT.
# Environment (defaults): OUT (gpu-out) DATA (.gpu_data/train) VAL (.gpu_data/val)
# INIT (default) RESUME (.gpu_data/resume/last.pth) WORK (a new temporary folder)
# DEVICE (cuda) PRECISION (bf16) BATCH (64) BUDGET_S (540) CHECK (1) CHECK_S (60)
# CHECK_ARGS (--only env) VAL_S (60) RESERVE_S (60) GRACE_S (20) SAVE_S (60) WORKERS (cores - 2)
# REPEAT (40) EPOCHS (1000000) LR (1e-4) MILESTONES (100000: epochs, no decay) EMA (0.999)
# VAL_EVERY (4 epochs; 0: no validation while training) EXTRA (more `liif train` options).
# On a CPU: DEVICE=cpu PRECISION=fp32 (or bf16 where native) runs the same command.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-gpu-out}
DATA=${DATA:-.gpu_data/train}
VAL=${VAL:-.gpu_data/val}
INIT=${INIT:-default}
RESUME=${RESUME:-.gpu_data/resume/last.pth}
WORK=${WORK:-$(mktemp -d)}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-bf16}
BATCH=${BATCH:-64}
BUDGET_S=${BUDGET_S:-540}
CHECK=${CHECK:-1}
CHECK_S=${CHECK_S:-60}
CHECK_ARGS=${CHECK_ARGS:---only env}
VAL_S=${VAL_S:-60}
RESERVE_S=${RESERVE_S:-60}  # after the trainer's SIGTERM: its save (GRACE_S at most) + finish
GRACE_S=${GRACE_S:-20}
SAVE_S=${SAVE_S:-60}
WORKERS=${WORKERS:-$(( $(nproc) > 3 ? $(nproc) - 2 : 0 ))}
REPEAT=${REPEAT:-40}
EPOCHS=${EPOCHS:-1000000}
LR=${LR:-1e-4}
MILESTONES=${MILESTONES:-100000}
EMA=${EMA:-0.999}
VAL_EVERY=${VAL_EVERY:-4}
EXTRA=${EXTRA:-}
END=$(( START + BUDGET_S ))
left() { echo $(( END - $(date +%s) )); }
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/log.txt") 2>&1
echo "gpu_train: budget ${BUDGET_S}s, device $DEVICE, $PRECISION, batch $BATCH, work $WORK"
if [ ! -d "$DATA" ]; then
  echo "no training data at $DATA (scripts/pack_gpu_data.py, carry .gpu_data)" >&2
  exit 2
fi

if [ "$CHECK" = 1 ]; then
  # shellcheck disable=SC2086
  timeout -k 5 "$CHECK_S" python3 scripts/device_check.py --out "$WORK/check" \
    --device "$DEVICE" $CHECK_ARGS || echo "device check: failures or cut off at ${CHECK_S}s"
  cat "$WORK"/check/failures.txt 2>/dev/null || true  # the failed checks' tracebacks
fi

RUN="$WORK/run"
if [ -f "$RESUME" ]; then
  mkdir -p "$RUN"
  cp "$RESUME" "$RUN/last.pth"
  if [ -f "$(dirname "$RESUME")/metrics.jsonl" ]; then cp "$(dirname "$RESUME")/metrics.jsonl" "$RUN/"; fi
  FROM=$RESUME
  ARGS=(--resume --out "$RUN" --device "$DEVICE" --precision "$PRECISION" --workers "$WORKERS")
else
  FROM=$INIT
  ARGS=(--data "$DATA" --out "$RUN" --init "$INIT" --precision "$PRECISION" --device "$DEVICE"
        --batch-size "$BATCH" --workers "$WORKERS" --repeat "$REPEAT" --epochs "$EPOCHS"
        --lr "$LR" --warmup 100 --save-every 0 --lr-milestones "$MILESTONES" --ema "$EMA")
fi
BEFORE=()
if [ -d "$VAL" ]; then
  timeout -k 5 "$VAL_S" python3 scripts/gpu_out.py val "$FROM" "$VAL" --device "$DEVICE" \
    --json "$WORK/before.json" || echo "PSNR before: failed or cut off at ${VAL_S}s"
  BEFORE=(--before "$WORK/before.json" --val "$VAL")
  if [ "$VAL_EVERY" != 0 ]; then ARGS+=(--val-data "$VAL" --val-every "$VAL_EVERY"); fi
fi

LEFT=$(( $(left) - RESERVE_S ))
if [ "$LEFT" -lt 10 ]; then
  echo "no time left to train (${LEFT}s)" >&2
  exit 1
fi
python3 scripts/gpu_out.py watch "$RUN" "$OUT" --every "$SAVE_S" &
WATCH=$!
echo "training for ${LEFT}s: liif train ${ARGS[*]} $EXTRA"
set +e
# SIGTERM at the end: the trainer saves last.pth and exits 143 (timeout's own status: 124)
# shellcheck disable=SC2086
timeout -s TERM -k "$GRACE_S" "$LEFT" python3 -m liif_cli train "${ARGS[@]}" $EXTRA -q
RC=$?
kill -TERM "$WATCH" 2>/dev/null
wait "$WATCH"
set -e
case $RC in 0|124|143) ;; *) echo "liif train failed (exit $RC)" >&2 ;; esac

# TERM 3 s before the end, KILL 2 s later: within the budget even when cut off
timeout -k 2 "$(( $(left) > 4 ? $(left) - 3 : 1 ))" python3 scripts/gpu_out.py finish "$RUN" "$OUT" \
  --rc "$RC" "${BEFORE[@]}" --device "$DEVICE" --since "$START" --deadline "$END" || echo "finish: cut off"
echo "gpu_train: done in $(( $(date +%s) - START ))s of ${BUDGET_S}s"
[ "$RC" = 0 ] || [ "$RC" = 124 ] || [ "$RC" = 143 ]
