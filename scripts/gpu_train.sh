#!/usr/bin/env bash
# Train the next model on a lent GPU, within its time budget; bring the weights back (maintainers).
#
# On this machine, once:   echo /.gpu_data/ >> .git/info/exclude
#                          python scripts/pack_gpu_data.py   # ../shared -> .gpu_data/train
# then one device `run`, carry [".gpu_data"] (the current weights travel in the tree: bundled/,
# docs/weights/; or put a run's last.pth under .gpu_data/resume/ to continue it):
#     BUDGET_S=600 bash scripts/gpu_train.sh
# What it does, all under $OUT (what the device tool brings back):
#   1. scripts/device_check.py (CHECK=1, at most CHECK_S seconds): $OUT/check/device_check.txt
#   2. `liif train` in bf16 at a large batch from INIT (default: the bundled default model), for
#      the rest of BUDGET_S; repeat 1, so every epoch (seconds on a GPU) rewrites
#      $OUT/run/last.pth (atomically): a cut-off loses under a minute. SIGTERM before the end
#      saves mid-epoch too. .gpu_data/resume/last.pth, if present, is resumed instead.
#   3. $OUT/summary.txt: steps, the last losses and validation, the command to continue here.
# Environment (defaults): OUT (gpu-out) DATA (.gpu_data/train) INIT (default) BUDGET_S (600)
# CHECK (1) CHECK_S (300) CHECK_ARGS () BATCH (64) PRECISION (bf16) DEVICE (cuda)
# WORKERS (cores - 2) EPOCHS (1000000) LR (1e-4) MILESTONES (100000)
# EXTRA (more `liif train` options).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT=${OUT:-gpu-out}
DATA=${DATA:-.gpu_data/train}
INIT=${INIT:-default}
BUDGET_S=${BUDGET_S:-600}
CHECK=${CHECK:-1}
CHECK_S=${CHECK_S:-300}
CHECK_ARGS=${CHECK_ARGS:-}
BATCH=${BATCH:-64}
PRECISION=${PRECISION:-bf16}
DEVICE=${DEVICE:-cuda}
WORKERS=${WORKERS:-$(( $(nproc) > 3 ? $(nproc) - 2 : 0 ))}
EPOCHS=${EPOCHS:-1000000}
LR=${LR:-1e-4}
MILESTONES=${MILESTONES:-100000}  # epochs: with repeat 1 an epoch is a few steps; no decay here
EXTRA=${EXTRA:-}
START=$(date +%s)
mkdir -p "$OUT"
if [ ! -d "$DATA" ]; then
  echo "no training data at $DATA (scripts/pack_gpu_data.py, carry .gpu_data)" >&2
  exit 2
fi

if [ "$CHECK" = 1 ]; then
  # shellcheck disable=SC2086
  timeout -k 10 "$CHECK_S" python3 scripts/device_check.py --out "$OUT/check" --device "$DEVICE" \
    $CHECK_ARGS || echo "device check: failures or cut off at ${CHECK_S}s (see $OUT/check)"
fi

LEFT=$(( BUDGET_S - ($(date +%s) - START) - 20 ))  # 20 s to write the summary
if [ "$LEFT" -lt 30 ]; then
  echo "no time left to train (${LEFT}s)" >&2
  exit 1
fi
RUN="$OUT/run"
if [ -f .gpu_data/resume/last.pth ] && [ ! -f "$RUN/last.pth" ]; then
  mkdir -p "$RUN"
  cp .gpu_data/resume/* "$RUN"/
fi
if [ -f "$RUN/last.pth" ]; then
  ARGS=(--resume --out "$RUN" --device "$DEVICE" --workers "$WORKERS")
else
  ARGS=(--data "$DATA" --out "$RUN" --init "$INIT" --precision "$PRECISION" --device "$DEVICE"
        --batch-size "$BATCH" --workers "$WORKERS" --repeat 1 --epochs "$EPOCHS" --lr "$LR"
        --warmup 100 --save-every 0 --lr-milestones "$MILESTONES")
fi
echo "training for ${LEFT}s: liif train ${ARGS[*]} $EXTRA"
set +e
# SIGTERM at the budget: the trainer saves last.pth and exits 143 (timeout's own status: 124)
# shellcheck disable=SC2086
timeout -s TERM -k 30 "$LEFT" python3 -m liif_cli train "${ARGS[@]}" $EXTRA -q
RC=$?
set -e
case $RC in 0|124|143) ;; *) echo "liif train failed (exit $RC)" >&2 ;; esac

python3 - "$RUN" "$OUT/summary.txt" "$RC" <<'PY'
import json, sys
from pathlib import Path
import torch
run, dst, rc = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
lines = [f"liif train exit {rc}"]
if (run / "last.pth").exists():
    ck = torch.load(run / "last.pth", map_location="cpu", weights_only=True)
    meta = ck.get("liif_cli", {})
    lines.append(f"last.pth: epoch {ck.get('epoch')}, iteration {meta.get('iteration')}, "
                 f"steps {meta.get('steps')}")
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    steps = [r for r in recs if r["kind"] == "step"]
    vals = [r for r in recs if r["kind"] == "val"]
    if steps:
        lines.append(f"loss: first {steps[0]['loss']:.4f}, last {steps[-1]['loss']:.4f} "
                     f"({steps[-1]['its']:.2f} it/s)")
    if vals:
        lines.append(f"validation: {vals[-1]['psnr']}")
    lines.append(f"continue here: liif train --resume --out {run.name} (after copying {run})")
else:
    lines.append("no checkpoint written")
dst.write_text("\n".join(lines) + "\n")
print("\n".join(lines))
PY
[ "$RC" = 0 ] || [ "$RC" = 124 ] || [ "$RC" = 143 ]
