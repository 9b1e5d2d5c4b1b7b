#!/usr/bin/env bash
# Run: bash scripts/bench_gpu.sh [--dry-run] [--out bench_gpu.json]
#
# peftx's GPU benchmark, prepared for a lent GPU machine: under 10 minutes, nothing installed or
# downloaded (HF_HUB_OFFLINE=1; the offline MiniLM and the shipped configs only). One JSON holds:
#   speed      scripts/bench_speed.py: peftx against Hugging Face Trainer + peft, both in bf16 (the
#              Trainer length-grouped, as a speed-minded user sets it): the ListOps `cpu` preset and the
#              512-token row (lra512, batches of 8), LoRA; and peftx with its body in 8 bits
#              (model.quantization=8bit; the Trainer script has no 8-bit variant)
#   memory     scripts/bench_memory.py: peak CUDA memory and step time of LoRA on the gpt2-medium shape
#              and MiniLM in fp32, bf16, 8-bit, 8-bit + gradient checkpointing
#   processes  with two GPUs or more: tests/support/distributed_worker.py in one process and in two
#              (torchrun, NCCL) at the same global batch; the largest loss difference and whether every
#              evaluation example was counted once
# Each part runs under its own time limit; a part that fails or runs out of time is recorded as such
# and the others still run.
#
# --dry-run runs the same parts on the CPU at tiny sizes (fp32; the process check on two gloo ranks):
# a check of the script itself, in a few minutes, on any machine.
set -euo pipefail

DRY_RUN=0
OUT=bench_gpu.json
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --out) OUT="$2"; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "bench_gpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
[[ -x "$PY" ]] || PY="$(command -v python3)"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
WORK="$(mktemp -d "${TMPDIR:-/tmp}/peftx-bench-gpu.XXXXXX")"
export PEFTX_CACHE="${PEFTX_CACHE:-$WORK/cache}"  # generated data is shared by every part
trap 'rm -rf "$WORK"' EXIT
STATUS="$WORK/status.tsv"  # part, exit code, seconds
: >"$STATUS"

# Everything the parts import must already be installed: say what is missing, install nothing.
"$PY" - <<'EOF'
import importlib.util, sys
missing = [m for m in ("torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes", "peftx")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"bench_gpu.sh: not installed: {', '.join(missing)} (this script installs nothing)")
EOF
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [[ $DRY_RUN == 0 && $GPUS == 0 ]]; then
  echo "bench_gpu.sh: no CUDA GPU here; --dry-run checks the script on the CPU" >&2
  exit 2
fi

# part NAME LIMIT_SECONDS COMMAND...: run a part under its time limit, record its exit code and time.
part() {
  local name=$1 limit=$2 start code
  shift 2
  start=$(date +%s)
  echo "== $name (limit ${limit}s): $*" >&2
  set +e
  timeout --kill-after=10 "$limit" "$@" >"$WORK/$name.log" 2>&1
  code=$?
  set -e
  printf '%s\t%s\t%s\n' "$name" "$code" "$(( $(date +%s) - start ))" >>"$STATUS"
  tail -n 3 "$WORK/$name.log" >&2
}

if [[ $DRY_RUN == 1 ]]; then
  # tiny sizes on the CPU, fp32 (bf16 is slow on most CPUs): the same code paths, a few seconds each
  SPEED_COMMON=(--repeats 1 --steps 2 --warmup 1 --eval-examples 16 --batch-size 4 --threads 1)
  SPEED_CPU=(--contenders peftx_fp32,trainer --task-set task.preset=tiny)
  SPEED_512=(--contenders peftx_fp32,trainer --task-set task.preset=tiny --task-set task.min_length=30)
  SPEED_8BIT=(--contenders peftx_fp32 --task-set task.preset=tiny --set model.quantization=8bit)
  MEMORY=(--models minilm --configs fp32,8bit --optimizers adamw --steps 1 --warmup 1 --batch 2 --seq 32)
  LIMITS=(240 240 240 240 240)
else
  SPEED_COMMON=(--repeats 2 --warmup 3)
  SPEED_CPU=(--contenders peftx_bf16,trainer_bf16_grouped --bf16 run --steps 30 --eval-examples 500)
  SPEED_512=(--contenders peftx_bf16,trainer_bf16_grouped --bf16 run --steps 20 --eval-examples 200
             --task-set task.preset=lra512 --task-set task.n_train=4000 --batch-size 8)
  SPEED_8BIT=(--contenders peftx_bf16 --steps 30 --eval-examples 500 --set model.quantization=8bit)
  MEMORY=(--models gpt2-medium,minilm --configs fp32,bf16,8bit,8bit_ckpt --optimizers adamw --steps 3)
  LIMITS=(150 150 75 150 60)  # speed cpu, speed 512, speed 8-bit, memory, processes: 585 s at most
fi

part speed_cpu "${LIMITS[0]}" "$PY" scripts/bench_speed.py "${SPEED_COMMON[@]}" "${SPEED_CPU[@]}" \
  --out "$WORK/speed_cpu.json"
part speed_512 "${LIMITS[1]}" "$PY" scripts/bench_speed.py "${SPEED_COMMON[@]}" "${SPEED_512[@]}" \
  --out "$WORK/speed_512.json"
part speed_8bit "${LIMITS[2]}" "$PY" scripts/bench_speed.py "${SPEED_COMMON[@]}" "${SPEED_8BIT[@]}" \
  --out "$WORK/speed_8bit.json"
part memory "${LIMITS[3]}" "$PY" scripts/bench_memory.py "${MEMORY[@]}" --out "$WORK/memory.md"

if [[ $DRY_RUN == 1 || $GPUS -ge 2 ]]; then
  ENV_PREFIX=""
  [[ $DRY_RUN == 1 ]] && ENV_PREFIX="ACCELERATE_USE_CPU=true OMP_NUM_THREADS=1"
  WORKER="-m tests.support.distributed_worker --scenario uneven --scenario accum"
  TORCHRUN="-m torch.distributed.run --nproc_per_node=2 --master_addr=127.0.0.1 --master_port=$(( 20000 + RANDOM % 20000 ))"
  part processes "${LIMITS[4]}" bash -c "env $ENV_PREFIX '$PY' $WORKER --out '$WORK/one.json' &&
    env $ENV_PREFIX '$PY' $TORCHRUN $WORKER --out '$WORK/two.json'"
fi

# One JSON: the machine, each part's exit code and time, and what each part wrote.
"$PY" - "$WORK" "$OUT" "$DRY_RUN" <<'EOF'
import json, platform, sys
from pathlib import Path

import torch

work, out, dry = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] == "1"


def read(name):
    path = work / name
    return json.loads(path.read_text()) if path.is_file() else None


def same_run(one, two):
    """The two-process check: per scenario, the largest differences against one process."""
    if one is None or two is None:
        return None
    report = {}
    for name, a in one.items():
        b = two[name]
        losses = [abs(b["loss"][k] - v) for k, v in a["loss"].items()]
        evals = [(x, y) for x, y in zip([*b["history"], b["val"], b["test"]], [*a["history"], a["val"], a["test"]])]
        report[name] = {
            "world_size": b["world_size"],
            "distributed_type": b["distributed_type"],
            "max_train_loss_diff": max(losses),
            "max_eval_loss_diff": max(abs(x.get("val_loss", x.get("loss", 0)) - y.get("val_loss", y.get("loss", 0)))
                                      for x, y in evals),
            "same_lr_schedule": b["lr"] == a["lr"],
            "each_eval_example_once": sorted(b["val_ids"]) == list(range(len(a["val_ids"])))
            and sorted(b["test_ids"]) == list(range(len(a["test_ids"]))),
        }
    return report


parts = {}
for line in (work / "status.tsv").read_text().splitlines():
    name, code, seconds = line.split("\t")
    parts[name] = {"exit_code": int(code), "seconds": int(seconds),
                   "state": {"0": "done", "124": "timed out", "137": "killed at its time limit"}.get(code, "failed"),
                   "log_tail": (work / f"{name}.log").read_text()[-1500:] if code != "0" else None}
memory_md = work / "memory.md"
result = {
    "dry_run": dry,
    "machine": {
        "platform": platform.platform(),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
    },
    "parts": parts,
    "speed": {k: read(f"speed_{k}.json") for k in ("cpu", "512", "8bit")},
    "memory": {"table": memory_md.read_text() if memory_md.is_file() else None, "rows": read("memory.json")},
    "processes": same_run(read("one.json"), read("two.json")),
}
out.write_text(json.dumps(result, indent=1))
failed = [n for n, p in parts.items() if p["exit_code"]]
print(f"wrote {out}: " + (f"{len(failed)} part(s) failed or timed out: {', '.join(failed)}" if failed else "every part done"))
EOF
