"""Training and evaluation throughput of peftx against Hugging Face `Trainer` + peft, same recipe.

Contenders (each a fresh process per measurement, run in alternating order, repeated):
- `peftx`: the recipe as shipped (`peftx run`'s training loop and defaults; `precision: auto`).
- `peftx_fp32`, `peftx_bf16`: the same in one precision (bf16: autocast, frozen weights stored in bf16).
- `peftx_plain`: the same with the speed options off (peft's LoRA forward, torch dropout, padding to
  multiples of 8, evaluation in batches of 128 examples): what the speed options buy.
- `trainer`: `scripts/hf_trainer_baseline.py`, a `Trainer` script as a user writes it (fp32, random
  batches padded to their longest member).
- `trainer_grouped`: the same with `train_sampling_strategy="group_by_length"` (fp32).
- `trainer_bf16_grouped`: the same with `bf16=True` too. It runs only where this machine's bf16 matrix
  product is faster than its fp32 one (measured here); on CPUs without AVX512-BF16/AMX bf16 runs ~500x
  slower, and the table says it was skipped (`--bf16 run` forces it).

Each process trains `--warmup` steps, then times `--steps` steps (same data, batch size and sequence
lengths: the recipe's ListOps, tokenised to the same ids), then times evaluation of `--eval-examples`
validation examples (each framework's default evaluation batch size). Reported per contender (medians
over repeats):
- model FLOPs/s: the training FLOPs the timed examples need (matrix products of forward and backward,
  counted on the unpadded sequences, the same count for every contender) per second;
- examples/s: model FLOPs/s ÷ the mean FLOPs of a training example. A short window's batches may be
  longer or shorter than average (the Trainer's length-grouped sampler starts with its longest batch),
  so raw examples/s of different windows are not comparable; the raw figure is in the JSON;
- real (non-padding) tokens/s, padded ÷ real tokens;
- MFU: model FLOPs/s ÷ this machine's matrix-product peak for the contender's precision, measured in
  the same run (2048x2048 products, best of several, before and after);
- peftx ÷ contender: the median of the per-repeat ratios of model FLOPs/s;
- evaluation examples/s on the same validation examples, and its ratio.

Windows of at least 50 steps are the fair ones for the grouped Trainer: its sampler sorts megabatches
of 50 batches longest first, so a shorter window sees longer-than-average batches.

Repeats disagree (other jobs, clock changes, memory placement): each contender's spread, (max - min) /
median of its repeats, is printed beside its median, and a ratio is printed only where both sides'
spreads are within `--max-spread` (default 15%); otherwise the table says so instead of a number.

    python scripts/bench_speed.py --contenders peftx,trainer --repeats 2 --steps 12   # a quick look
    python scripts/bench_speed.py --contenders peftx,trainer_grouped --out bench.json   # 50 steps x 5 repeats
    # the 512-token row: LRA's depth at lengths 201-509 (mean 354 tokens), batches of 8
    python scripts/bench_speed.py --contenders peftx,trainer_grouped --task-set task.preset=lra512 \
        --task-set task.n_train=4000 --batch-size 8 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from peftx.util.huge_pages import enable_huge_pages  # noqa: E402

# Before torch allocates, as the `peftx` command does (every worker, the Trainer's too: it can only help them)
enable_huge_pages()

import numpy as np  # noqa: E402  (after the path set-up above)
import torch  # noqa: E402

RECIPE = ROOT / "recipes" / "listops_lora.yaml"
# peftx before the speed options: peft's LoRA forward, torch dropout, widths rounded to 8, evaluation in
# batches of 128 examples
PLAIN = [
    "train.fused_lora=false",
    "train.fast_dropout=false",
    "train.pad_to_multiple=8",
    "train.eval_batch_size=128",
    "train.eval_batch_tokens=null",
]
CONTENDERS = (
    "peftx",
    "peftx_fp32",
    "peftx_bf16",
    "peftx_plain",
    "trainer",
    "trainer_grouped",
    "trainer_bf16_grouped",
)


# ------------------------------------------------------------------------------------------ workers


def _peftx_worker(a, overrides: list[str]) -> dict:
    from peftx.recipe import load_recipe
    from peftx.training.job import TrainJob
    from peftx.training.loop import train
    from peftx.training.points import TrainPoint
    from peftx.training.session import open_session

    total = a.warmup + a.steps
    sizes = [f"train.batch_size={a.batch_size}", *a.task_set]
    recipe = load_recipe(
        a.recipe, [f"train.steps={total}", "train.eval_every=1000000", "train.log_every=1", *sizes, *overrides]
    )
    session = open_session(recipe)
    model, accelerator, precision, task = session.model, session.accelerator, session.precision, session.task
    val = task.splits["validation"].select(range(min(a.eval_examples, len(task.splits["validation"]))))
    train_split = session.splits(["train"])["train"]
    val_split = session.split(val)
    lengths, padded = [], []
    collate = train_split.collate

    def recording_collate(indices):
        batch = collate(indices)
        lengths.append(batch["attention_mask"].sum(1).tolist())
        padded.append(batch["attention_mask"].numel())
        return batch

    train_split.collate = recording_collate
    times: list[float] = []
    outcome = train(
        TrainJob(model, train_split, val_split, recipe.train, recipe.seed, accelerator),
        lambda point: times.append(time.perf_counter()) if isinstance(point, TrainPoint) else None,
    )
    window = slice(a.warmup, total)
    return {
        "precision": precision,
        "seconds": times[total - 1] - times[a.warmup - 1],
        "lengths": [n for b in lengths[window] for n in b],
        "padded_tokens": sum(padded[window]),
        "eval_examples": len(val_split),
        "eval_seconds": outcome.eval_seconds,
        "final_val_loss": outcome.history[-1].val_loss,
    }


def _trainer_worker(a, bf16: bool, grouped: bool) -> dict:
    from hf_trainer_baseline import build_trainer

    total = a.warmup + a.steps
    trainer, times, collator, data = build_trainer(
        total, bf16=bf16, group_by_length=grouped, batch_size=a.batch_size, task_overrides=a.task_set
    )
    trainer.train()
    window = slice(a.warmup, total)
    val = data["validation"].select(range(min(a.eval_examples, len(data["validation"]))))
    t0 = time.perf_counter()
    metrics = trainer.evaluate(val)
    eval_seconds = time.perf_counter() - t0
    return {
        "precision": "bf16" if bf16 else "fp32",
        "seconds": times.times[total - 1] - times.times[a.warmup - 1],
        "lengths": [n for b in collator.lengths[window] for n in b],
        "padded_tokens": sum(collator.padded[window]),
        "eval_examples": len(val),
        "eval_seconds": eval_seconds,
        "final_val_loss": metrics["eval_loss"],
    }


def worker(a) -> None:
    if a.threads:
        torch.set_num_threads(a.threads)
    jobs = {
        "peftx": lambda: _peftx_worker(a, a.set),
        "peftx_fp32": lambda: _peftx_worker(a, ["train.precision=fp32", *a.set]),
        "peftx_bf16": lambda: _peftx_worker(a, ["train.precision=bf16", *a.set]),
        "peftx_plain": lambda: _peftx_worker(a, PLAIN + a.set),
        "trainer": lambda: _trainer_worker(a, bf16=False, grouped=False),
        "trainer_grouped": lambda: _trainer_worker(a, bf16=False, grouped=True),
        "trainer_bf16_grouped": lambda: _trainer_worker(a, bf16=True, grouped=True),
    }
    Path(a.out).write_text(json.dumps(jobs[a.worker]()))


# ------------------------------------------------------------------------------------ measurements


def gemm_peak(dtype: torch.dtype, size: int = 2048, seconds: float = 2.0) -> float:
    """Best GFLOPS of size x size matrix products in `dtype` over about `seconds` (a bf16 product that
    turns out slow is measured at 256 only, where it still takes well under a second)."""
    probe = 256
    x = torch.randn(probe, probe, dtype=dtype)
    t0 = time.perf_counter()
    x @ x
    if dtype != torch.float32 and 2 * probe**3 / (time.perf_counter() - t0) < 20e9:
        size = probe  # a slow kernel: measure it small rather than wait minutes
    x = torch.randn(size, size, dtype=dtype)
    x @ x
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        x @ x
        best = max(best, 2 * size**3 / (time.perf_counter() - t0))
    return best / 1e9


def flops_per_length(recipe: str, overrides: list[str]) -> tuple[float, float, float]:
    """(a, b, mean) with training FLOPs of one example of length L = a·L + b·L², counted by torch's
    FlopCounterMode over a forward and backward of the recipe's model in training mode (peft's own
    LoRA layers, so the count is the model's, not this project's kernels'), and their mean over the
    training split."""
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from peftx.recipe import load_recipe
    from peftx.training.session import open_session

    session = open_session(load_recipe(recipe, ["train.steps=1", "train.precision=fp32", *overrides]))
    model = session.model
    lengths = session.splits(["train"])["train"].lengths
    model.train()
    counts = []
    for length in (32, 128):
        batch = {"input_ids": torch.full((1, length), 5), "attention_mask": torch.ones(1, length, dtype=torch.long)}
        with FlopCounterMode(display=False) as counter:
            F.cross_entropy(model(**batch), torch.zeros(1, dtype=torch.long)).backward()
        counts.append(counter.get_total_flops())
    (l1, l2), (f1, f2) = (32, 128), counts
    b = (f2 / l2 - f1 / l1) / (l2 - l1)
    a = f1 / l1 - b * l1
    return a, b, float(np.mean(a * lengths + b * lengths.astype(np.float64) ** 2))


def run_one(name: str, a, repeat: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, __file__, "--worker", name, "--out", out, "--steps", str(a.steps)]
    cmd += ["--warmup", str(a.warmup), "--eval-examples", str(a.eval_examples), "--recipe", str(a.recipe)]
    cmd += ["--threads", str(a.threads or 0), "--batch-size", str(a.batch_size)] + [f"--set={s}" for s in a.set]
    cmd += [f"--task-set={s}" for s in a.task_set]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} (repeat {repeat}) failed:\n{proc.stderr[-3000:]}")
    result = json.loads(Path(out).read_text())
    os.unlink(out)
    print(
        f"  repeat {repeat} {name:22s} {len(result['lengths']) / result['seconds']:7.1f} examples/s "
        f"(process {time.perf_counter() - t0:.0f}s)",
        flush=True,
    )
    return result


def model_flops_per_s(run: dict, ab: tuple[float, float, float]) -> float:
    a, b, _ = ab
    return sum(a * n + b * n * n for n in run["lengths"]) / run["seconds"]


def summarise(name: str, runs: list[dict], ab: tuple[float, float, float], peaks: dict[str, float]) -> dict:
    ex = [len(r["lengths"]) / r["seconds"] for r in runs]
    tok = [sum(r["lengths"]) / r["seconds"] for r in runs]
    flops = [model_flops_per_s(r, ab) for r in runs]
    precision = runs[0]["precision"]
    return {
        # a short window's examples may be longer or shorter than average (the Trainer's length-grouped
        # sampler starts with its longest batch): throughput at the training split's mean work per
        # example is what the contenders are compared on
        "examples_per_s": statistics.median(flops) / ab[2],
        "window_examples_per_s": statistics.median(ex),
        "tokens_per_s": statistics.median(tok),
        "padding": statistics.median(r["padded_tokens"] / sum(r["lengths"]) for r in runs),
        "model_gflops": statistics.median(flops) / 1e9,
        "precision": precision,
        "mfu": statistics.median(flops) / 1e9 / peaks[precision],
        "eval_examples_per_s": statistics.median(r["eval_examples"] / r["eval_seconds"] for r in runs),
        "final_val_loss": statistics.median(r["final_val_loss"] for r in runs),
        "per_repeat_examples_per_s": ex,
        # (max - min) / median of the per-repeat model FLOPs/s: how far the repeats disagree
        "spread": (max(flops) - min(flops)) / statistics.median(flops),
        "examples_per_s_range": (min(flops) / ab[2], max(flops) / ab[2]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=50, help="timed optimizer steps per measurement")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32, help="examples per step, every contender")
    p.add_argument(
        "--task-set",
        action="append",
        default=[],
        help="task override for every contender's data (task.preset=lra512, lengths 201-509: the 512-token row)",
    )
    p.add_argument(
        "--max-spread",
        type=float,
        default=0.15,
        help="print no ratio for a contender whose repeats (or peftx's) spread wider than this ((max-min)/median)",
    )
    p.add_argument("--eval-examples", type=int, default=300)
    p.add_argument("--contenders", default="peftx,peftx_plain,trainer,trainer_grouped,trainer_bf16_grouped")
    p.add_argument("--bf16", choices=("auto", "run", "skip"), default="auto", help="the bf16 Trainer contender")
    p.add_argument("--threads", type=int, default=0, help="torch threads in every process (0: default)")
    p.add_argument("--recipe", default=str(RECIPE))
    p.add_argument("--set", action="append", default=[], help="recipe override for the peftx contenders")
    p.add_argument("--out", help="write the results as JSON here")
    p.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a)
    if a.threads:
        torch.set_num_threads(a.threads)
    names = [n.strip() for n in a.contenders.split(",") if n.strip()]
    unknown = set(names) - set(CONTENDERS)
    if unknown:
        raise SystemExit(f"unknown contender(s) {sorted(unknown)}; choose from {', '.join(CONTENDERS)}")
    peaks = {"fp32": gemm_peak(torch.float32), "bf16": gemm_peak(torch.bfloat16)}
    notes = []
    if "trainer_bf16_grouped" in names and a.bf16 != "run" and (a.bf16 == "skip" or peaks["bf16"] < peaks["fp32"]):
        names.remove("trainer_bf16_grouped")
        notes.append(
            f"trainer_bf16_grouped skipped: bf16 matrix products run at {peaks['bf16']:.1f} GFLOPS here against "
            f"{peaks['fp32']:.0f} in fp32 (no AVX512-BF16/AMX); `--bf16 run` forces it"
        )
    ab = flops_per_length(a.recipe, [f"train.batch_size={a.batch_size}", *a.task_set])
    print(f"threads {torch.get_num_threads()}; GEMM peak fp32 {peaks['fp32']:.0f} GFLOPS, bf16 {peaks['bf16']:.1f}")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(a.repeats):
        for name in names if r % 2 == 0 else names[::-1]:  # alternate the order: load drifts hit all alike
            runs[name].append(run_one(name, a, r))
    peaks_end = {"fp32": gemm_peak(torch.float32), "bf16": gemm_peak(torch.bfloat16)}
    peaks = {k: max(v, peaks_end[k]) for k, v in peaks.items()}
    table = {n: summarise(n, rs, ab, peaks) for n, rs in runs.items()}
    # ratios against `peftx`, or the first peftx contender asked for (e.g. peftx_fp32)
    ref_name = next((n for n in names if n == "peftx"), next((n for n in names if n.startswith("peftx")), None))
    ref = runs.get(ref_name)
    for n, rs in runs.items():
        if ref is not None:
            per_repeat = [model_flops_per_s(x, ab) / model_flops_per_s(y, ab) for x, y in zip(ref, rs)]
            table[n]["peftx_speedup"] = statistics.median(per_repeat)
            table[n]["peftx_speedup_range"] = (min(per_repeat), max(per_repeat))
            table[n]["steady"] = max(table[n]["spread"], table[ref_name]["spread"]) <= a.max_spread
            table[n]["reference"] = ref_name
            table[n]["peftx_eval_speedup"] = table[ref_name]["eval_examples_per_s"] / table[n]["eval_examples_per_s"]
    print_table(table, a, peaks, notes)
    if a.out:
        meta = {
            "args": vars(a),
            "peaks_gflops": peaks,
            "flops_per_example": {"a_per_token": ab[0], "b_per_token_squared": ab[1], "train_mean": ab[2]},
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "notes": notes,
        }
        Path(a.out).write_text(json.dumps({"meta": meta, "results": table}, indent=2))


def print_table(table: dict, a, peaks: dict, notes: list[str]) -> None:
    ref = next((t["reference"] for t in table.values() if "reference" in t), "peftx")
    task = ", ".join(a.task_set) or "the recipe's task"
    print(
        f"\n{a.steps} timed steps of {a.batch_size} after {a.warmup} warm-up, {task}; median of {a.repeats} repeats "
        f"(min-max); GEMM peak fp32 {peaks['fp32']:.0f} GFLOPS, bf16 {peaks['bf16']:.1f} GFLOPS\n"
    )
    print(
        "| contender | precision | examples/s (min-max) | spread | tokens/s | padded/real | MFU "
        f"| {ref} ÷ it (min-max) | eval examples/s | {ref} ÷ it (eval) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, t in table.items():
        lo, hi = t["examples_per_s_range"]
        if "peftx_speedup" not in t:
            ratio = "—"
        elif n == t["reference"]:
            ratio = "1.00x"
        elif t["steady"]:
            r_lo, r_hi = t["peftx_speedup_range"]
            ratio = f"{t['peftx_speedup']:.2f}x ({r_lo:.2f}-{r_hi:.2f})"
        else:  # a ratio of numbers that move this much says nothing
            ratio = f"none: spread over {100 * a.max_spread:.0f}%"
        print(
            f"| {n} | {t['precision']} | {t['examples_per_s']:.1f} ({lo:.1f}-{hi:.1f}) | {100 * t['spread']:.0f}% | "
            f"{t['tokens_per_s']:.0f} | {t['padding']:.2f} | {100 * t['mfu']:.0f}% | {ratio} | "
            f"{t['eval_examples_per_s']:.0f} | {t.get('peftx_eval_speedup', float('nan')):.2f}x |"
        )
    for note in notes:
        print(f"\nNote: {note}")


if __name__ == "__main__":
    main()
