#!/usr/bin/env bash
# The offline reproduction of the paper's claims (docs/RESULTS.md): the sweeps in recipes/offline/,
# then `peftx report`. About 80 minutes on a 2-core CPU; resumable (rerun it after an interruption and
# finished runs are skipped). Runs into runs/offline/; report and plots into docs/results/, replacing
# the committed ones (OUT=DIR writes them elsewhere).
#
#   scripts/reproduce_offline.sh                 # two lanes of one thread each
#   EXTRA=1 scripts/reproduce_offline.sh         # also the from-scratch twin at a second learning rate
#                                                # (c1_listops_scratch_lr.yaml; about 90 minutes in all)
#   LANES=1 scripts/reproduce_offline.sh         # one lane, every core per run
#   nohup scripts/reproduce_offline.sh > offline.log 2>&1 &   # in the background
set -euo pipefail
cd "$(dirname "$0")/.."
PEFTX="${PEFTX:-peftx}"
OUT="${OUT:-docs/results}"
# Two lanes of about equal work; each sweep is run in the order written.
LANE_A=(c2_listops c2_prefix c3_listops c1_vision)
LANE_B=(c1_protein c1_listops c3_align c3_align_fpt c3_align_vision)
if [[ "${EXTRA:-0}" == 1 ]]; then
  LANE_A+=(c1_listops_scratch_lr)  # lane A finishes first
fi

lane() {  # lane THREADS SWEEP...
  local threads=$1; shift
  for sweep in "$@"; do
    "$PEFTX" sweep "recipes/offline/$sweep.yaml" --quiet --set "train.threads=$threads"
  done
}

start=$(date +%s)
mkdir -p runs/offline
if [[ "${LANES:-2}" == 1 ]]; then
  lane null "${LANE_A[@]}" "${LANE_B[@]}"
else
  lane 1 "${LANE_A[@]}" > runs/offline/lane_a.log 2>&1 &
  a=$!
  lane 1 "${LANE_B[@]}" > runs/offline/lane_b.log 2>&1 &
  b=$!
  status=0
  wait "$a" || status=$?
  wait "$b" || status=$?
  if (( status )); then
    echo "a sweep failed: see runs/offline/lane_a.log and lane_b.log" >&2
    exit "$status"
  fi
fi
echo "sweeps done in $(( ($(date +%s) - start) / 60 )) min"
"$PEFTX" report runs/offline --out "$OUT"
