#!/usr/bin/env bash
# The `real` model card's evaluations: liif eval --degrade on Set14 and B100 (paired MATLAB LR,
# benchmark protocol, x2 and x4), one JSON report per (model, set, degradation) in OUT.
# Usage: scripts/card_real.sh MODEL OUT [SPEC ...]    (default specs: none jpeg=75 noise=5,jpeg=75)
# In fp32, as the cards are (PRECISION=bf16: quicker on a CPU with native bf16, means ~0.01 dB off)
# e.g.   scripts/card_real.sh real runs/evals
#        SETS=Set14 scripts/card_real.sh default runs/evals jpeg=50 noise=10,jpeg=60 blur=1
set -euo pipefail
model=$1; out=$2; shift 2
specs=("$@"); [ ${#specs[@]} -gt 0 ] || specs=(none jpeg=75 noise=5,jpeg=75)
data=${DATA:-../shared/data/val}
mkdir -p "$out"
for set in ${SETS:-Set14 B100}; do
  for spec in "${specs[@]}"; do
    tag=$(echo "$spec" | tr ',=' '_-')
    json="$out/${model##*/}_${set}_${tag}.json"
    [ -e "$json" ] && { echo "have $json"; continue; }
    liif eval --data "$data/$set/HR" --lr-dir "$data/$set/LR_bicubic" --scales 2,4 \
      --protocol benchmark --precision "${PRECISION:-fp32}" --model "$model" \
      --degrade "$spec" --json "$json" --quiet
  done
done
