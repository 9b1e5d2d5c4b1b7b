#!/usr/bin/env bash
# The offline study of the paper's claims (docs/RESULTS.md): the sweeps in recipes/offline/, then
# `peftx report`. Each sweep tunes the learning rate (every rate on seed 0, the best on validation then on
# seeds 1 and 2) and stops each run when validation accuracy is flat. Resumable: rerun it after an
# interruption and finished runs are skipped, a half-done run resumes from its checkpoint. Runs into
# runs/offline/; the report and plots into docs/results/, replacing the committed ones (OUT=DIR writes
# them elsewhere).
#
#   scripts/reproduce_offline.sh                 # two workers of one thread each
#   WORKERS=1 scripts/reproduce_offline.sh       # one worker, every core per run
#   nohup scripts/reproduce_offline.sh > offline.log 2>&1 &   # in the background
set -euo pipefail
cd "$(dirname "$0")/.."
PEFTX="${PEFTX:-peftx}"
OUT="${OUT:-docs/results}"
# The C3 alignment study (c3_align*.yaml) is apart: `peftx sweep recipes/offline/c3_align.yaml` etc.
SWEEPS=(listops_peft listops_scratch listops_full listops_prefix listops_learned listops_aligned
        vision_full vision_lora protein_full protein_lora)

worker() {  # worker THREADS SWEEP...: one worker going through the sweeps in the order given
  local threads=$1; shift
  for sweep in "$@"; do
    "$PEFTX" sweep "recipes/offline/$sweep.yaml" --quiet --set "train.threads=$threads"
  done
}

start=$(date +%s)
mkdir -p runs/offline
if [[ "${WORKERS:-2}" == 1 ]]; then
  worker null "${SWEEPS[@]}"
else
  # Two workers share the grids through the run directories' locks: one goes through the sweeps from
  # the first, the other from the last, so that they meet once and each point runs once.
  reversed=()
  for (( i=${#SWEEPS[@]}-1; i>=0; i-- )); do reversed+=("${SWEEPS[i]}"); done
  worker 1 "${SWEEPS[@]}" > runs/offline/worker_a.log 2>&1 &
  a=$!
  worker 1 "${reversed[@]}" > runs/offline/worker_b.log 2>&1 &
  b=$!
  trap 'trap - INT TERM; kill -TERM 0; wait' INT TERM  # each run checkpoints, then stops
  status=0
  wait "$a" || status=$?
  wait "$b" || status=$?
  if (( status )); then
    echo "a sweep failed: see runs/offline/worker_a.log and worker_b.log" >&2
    exit "$status"
  fi
fi
echo "sweeps done in $(( ($(date +%s) - start) / 60 )) min"
"$PEFTX" report runs/offline --out "$OUT"
