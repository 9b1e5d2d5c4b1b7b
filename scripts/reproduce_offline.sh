#!/usr/bin/env bash
# The offline study of the paper's claims (docs/results.md): the sweeps in recipes/offline/, then
# `peftx report`. Each sweep tunes the learning rate (every rate on seed 0, the best on validation then on
# seeds 1 and 2) and stops each run when validation accuracy is flat. Resumable: rerun it after an
# interruption and finished runs are skipped, a half-done run resumes from its checkpoint. Runs into
# runs/offline/; their result files, the report, the claims' intervals (scripts/study_claims.py) and the
# plots into docs/results/, replacing the committed ones (OUT=DIR writes them elsewhere).
#
#   scripts/reproduce_offline.sh                 # two workers of one thread each
#   WORKERS=1 scripts/reproduce_offline.sh       # one worker, every core per run
#   WORKERS=4 scripts/reproduce_offline.sh       # on four cores (or four GPUs: one each)
#   nohup scripts/reproduce_offline.sh > offline.log 2>&1 &   # in the background
set -euo pipefail
cd "$(dirname "$0")/.."
PEFTX="${PEFTX:-peftx}"
OUT="${OUT:-docs/results}"
# In order of priority: the ListOps claims first (C1, then C2), then C1 on images, C3 (the input layer),
# the other domains' LoRA and protein, so that a study cut short has answered the most claims. One
# queue: a worker whose sweep waits on its tuning stage (the other worker runs its last rate) takes the
# next sweep's points meanwhile.
SWEEPS=(listops_full listops_scratch listops_peft vision_full listops_learned vision_lora protein_full
        listops_prefix listops_aligned protein_lora)
files=()
for sweep in "${SWEEPS[@]}"; do files+=("recipes/offline/$sweep.yaml"); done

start=$(date +%s)
mkdir -p runs/offline
# --workers N: N processes sharing the queue through the run directories' locks, each with an equal
# share of the cores (one thread each on two cores: faster in all than one run on both)
"$PEFTX" sweep "${files[@]}" --quiet --workers "${WORKERS:-2}"
echo "sweeps done in $(( ($(date +%s) - start) / 60 )) min"
# The result files (not the weights) go beside the report, which is computed from them alone: commit
# them, and anyone can recompute every table without rerunning (peftx report docs/results/runs).
mkdir -p "$OUT/runs"
(cd runs/offline && find . -name result.json -not -path "*/checkpoints/*") | while read -r f; do
  mkdir -p "$OUT/runs/$(dirname "$f")"
  cp "runs/offline/$f" "$OUT/runs/$f"
done
"$PEFTX" report "$OUT/runs" --out "$OUT"
"${PYTHON:-python}" scripts/study_claims.py "$OUT/runs" > "$OUT/claims.md"
