#!/usr/bin/env bash
# Reproduction v3 (docs/results.md): the claims run to convergence and against every control, on a
# budget. The sweeps in recipes/v3/ (in priority order: C1 and its controls on MiniLM, the full and
# body-less bounds, C1 on the SmolLM2 decoder) each tune the learning rate with ASHA pruning on seed 0
# and run the chosen rate on the other seeds until validation accuracy is flat. Resumable across days:
# rerun it and finished runs are skipped, pruned ones stay pruned, a half-done run resumes from its
# checkpoint. After each sweep its result files are copied into $OUT/runs (and committed with
# COMMIT=1), so an interrupted study loses nothing; the report, the claims' intervals and the plots are
# regenerated from the copied files alone (peftx report $OUT/runs reproduces them without training).
#
#   scripts/reproduce_v3.sh                     # two workers of one thread each
#   WORKERS=4 scripts/reproduce_v3.sh           # four cores (or four GPUs, one each)
#   ONLY=listops_controls scripts/reproduce_v3.sh   # one sweep
#   COMMIT=1 nohup scripts/reproduce_v3.sh > v3.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
PEFTX="${PEFTX:-peftx}"
OUT="${OUT:-docs/results/v3}"
SWEEPS=(${ONLY:-listops_controls listops_full_and_body_none listops_smollm2})

copy_results() {  # every result.json of runs/v3 (not the weights) into $OUT/runs
  mkdir -p "$OUT/runs"
  (cd runs/v3 && find . -name result.json -not -path "*/checkpoints/*") | while read -r f; do
    mkdir -p "$OUT/runs/$(dirname "$f")"
    cp "runs/v3/$f" "$OUT/runs/$f"
  done
  if [ "${COMMIT:-0}" = 1 ]; then
    git add "$OUT/runs" && git commit -q -m "v3 study: result files after $1" -- "$OUT/runs" || true
  fi
}

start=$(date +%s)
mkdir -p runs/v3
for sweep in "${SWEEPS[@]}"; do
  "$PEFTX" sweep "recipes/v3/$sweep.yaml" --quiet --workers "${WORKERS:-2}"
  copy_results "$sweep"
  echo "$sweep done at $(( ($(date +%s) - start) / 60 )) min"
done
"$PEFTX" report "$OUT/runs" --out "$OUT"
"${PYTHON:-python}" scripts/study_claims.py "$OUT/runs" --study v3 > "$OUT/claims.md"
echo "study done in $(( ($(date +%s) - start) / 60 )) min (this invocation)"
