"""The claims' controls side by side (docs/controls.md): ListOps (`cpu` preset), the offline MiniLM,
LoRA at about 2% of the parameters, the same steps and learning rate for every arm, several seeds;
arms pretrained / scratch / shuffled / self_pretrained / body none. Writes a markdown table of mean
test accuracy with its 95% interval (Student's t over seeds) and each arm's difference from the
pretrained arm (Welch's 95% interval), with the command and the machine.

    python scripts/controls_table.py --seeds 3 --steps 600 --self-pretrain-steps 2000 --out controls.md
    python scripts/controls_table.py --seeds 1 --steps 5 --eval-every 5 --self-pretrain-steps 5 \
        --self-pretrain batch_size=8 --set task.n_train=512 --set task.n_val=64 --set task.n_test=64   # a smoke test

Runs go to `--runs` (one directory per arm and seed); a rerun of the same command keeps the runs that
completed and goes on with the others, so the table can be built in several sittings.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from scipy import stats

from peftx.recipe import load_recipe
from peftx.runs.record import RunRecord
from peftx.runs.run import run
from peftx.studies.budget import BudgetRequest, budget_table, parse_target
from peftx.util.env import versions

# arm -> (what it is, the recipe changes that make it)
ARMS = {
    "pretrained": ("the checkpoint", ["model.init=pretrained"]),
    "scratch": ("random weights", ["model.init=scratch"]),
    "shuffled": ("checkpoint, each tensor's entries permuted", ["model.init=shuffled"]),
    "self_pretrained": (
        "random, then its family's pretraining objective on the task's inputs",
        ["model.init=self_pretrained"],
    ),
    "body_none": ("checkpoint's embeddings -> mean -> head", ["model.body=none"]),
}


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--recipe", default="recipes/listops_lora.yaml", help="the base recipe (MiniLM, LoRA, ListOps cpu)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of: {', '.join(ARMS)}")
    p.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 of every arm")
    p.add_argument("--steps", type=int, default=600, help="training steps of every run")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--lr", type=float, default=None, help="one learning rate for every arm (default: the recipe's)")
    p.add_argument("--target", default="2%", help="LoRA's trainable budget (its rank is the largest within it)")
    p.add_argument("--self-pretrain-steps", type=int, default=2000, help="the self_pretrained arm's stage")
    p.add_argument("--self-pretrain", dest="stage", action="append", default=[], help="more of its settings, KEY=VALUE")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="more recipe changes, KEY=VALUE")
    p.add_argument("--runs", default="runs/controls", help="where the runs go")
    p.add_argument("--out", default=None, help="write the table here (default: print it only)")
    p.add_argument("--overwrite", action="store_true", help="replace runs whose recipe differs (else refused)")
    return p.parse_args(argv)


def _rank_overrides(args: argparse.Namespace) -> tuple[list[str], object]:
    """The method's knob within `--target` (peftx budget's search), as a recipe change, and its budget row."""
    rows = budget_table(
        BudgetRequest(recipe=Path(args.recipe), overrides=list(args.overrides), target=parse_target(args.target))
    )
    row = rows[0]
    knob = row.knob or "r"
    return [f"method.{knob}={row.recipe['method'][knob]}"], row


def _common(args: argparse.Namespace, rank: list[str]) -> list[str]:
    out = [
        "train.precision=fp32",  # numbers that do not depend on the machine's bf16
        f"train.steps={args.steps}",
        f"train.eval_every={args.eval_every}",
        f"output.dir={args.runs}",
        *rank,
        *args.overrides,
    ]
    return out + ([f"train.lr={args.lr}"] if args.lr is not None else [])


def _run_arm(args: argparse.Namespace, arm: str, seed: int, common: list[str]) -> RunRecord:
    extra = list(ARMS[arm][1])
    if arm == "self_pretrained":
        extra.append(f"model.self_pretrain.steps={args.self_pretrain_steps}")
        extra += [f"model.self_pretrain.{kv}" for kv in args.stage]
    name = f"{arm}_s{seed}"
    recipe = load_recipe(args.recipe, [*common, *extra, f"seed={seed}", f"output.name={name}"])
    t0 = time.perf_counter()
    out = run(recipe, overwrite=args.overwrite, resume=not args.overwrite)
    acc = _accuracy(out.record)
    print(f"{name}: test accuracy {100 * acc:.2f}% ({time.perf_counter() - t0:.0f} s)", flush=True)
    return out.record


def _accuracy(record: RunRecord) -> float:
    """Test accuracy of a completed run (the `accuracy` of its test metrics)."""
    m = record.metrics
    test = getattr(m, "test", None) or {}
    return float(test.get("accuracy", m.test_accuracy))


def _interval(xs: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student's t interval (nan for one seed)."""
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)


def _welch(a: list[float], b: list[float]) -> tuple[float, float]:
    """Difference of means a - b and the half-width of its 95% Welch interval (nan below two seeds each)."""
    d = sum(a) / len(a) - sum(b) / len(b)
    if len(a) < 2 or len(b) < 2:
        return d, math.nan
    va, vb = (stats.tvar(x) / len(x) for x in (a, b))
    if va + vb == 0:
        return d, 0.0
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return d, stats.t.ppf(0.975, dof) * math.sqrt(va + vb)


def _pm(mean: float, half: float) -> str:
    return f"{100 * mean:.1f}" + ("" if math.isnan(half) else f" ± {100 * half:.1f}")


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    v = versions()
    packages = ", ".join(f"{k} {v.get(k)}" for k in ("torch", "transformers", "peft"))
    return f"{cpu}, {os.cpu_count()} cores{gpu}, {torch.get_num_threads()} torch threads; {packages}"


def table(args: argparse.Namespace, results: dict[str, list[RunRecord]], method: str, argv: list[str]) -> str:
    """The markdown table of the arms' results, with the command and the machine."""
    base = [_accuracy(r) for r in results.get("pretrained", [])]
    lines = [
        "| arm | what | seeds | test accuracy % (95% CI) | Δ vs pretrained, points (95% CI) "
        "| val accuracy % | train s / run |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, records in results.items():
        accs = [_accuracy(r) for r in records]
        mean, half = _interval(accs)
        delta = "—" if arm == "pretrained" or not base else _pm(*_welch(accs, base))
        val = sum(r.metrics.val_accuracy or 0.0 for r in records) / len(records)
        train_s = sum((r.timing.train_seconds or 0.0) for r in records) / len(records)
        stage = ""
        if arm == "self_pretrained" and records[0].self_pretrain:
            sp = records[0].self_pretrain
            loss = f"loss {sp['loss_before']:.3g} -> {sp['loss_after']:.3g}"
            stage = f" (+ stage {sp['seconds']:.0f} s once: {sp['steps']} steps, {loss})"
        cells = [
            arm,
            ARMS[arm][0],
            str(len(records)),
            _pm(mean, half),
            delta,
            f"{100 * val:.1f}",
            f"{train_s:.0f}{stage}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    first = next(iter(results.values()))[0]
    preset = first.recipe["task"].get("preset")
    head = [
        f"ListOps ({preset} preset), {first.backbone.get('name', first.backbone.get('source'))}, {method}, "
        f"{args.steps} steps, lr {first.recipe['train']['lr']} for every arm, fp32; test accuracy at the best "
        "validation step; mean over seeds with the 95% Student's t interval, differences with Welch's.",
        "",
        f"Command: `python scripts/controls_table.py {shlex.join(argv)}`",
        "",
        f"Machine: {_machine()}",
        "",
    ]
    return "\n".join(head + lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = _args(argv)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        sys.exit(f"error: --arms: unknown {unknown} (valid: {', '.join(ARMS)})")
    rank, row = _rank_overrides(args)
    method = f"{row.method} {row.setting} ({row.budget.trainable_pct:.2f}% trainable)"
    print(f"{method}; runs in {args.runs}", flush=True)
    common = _common(args, rank)
    results = {arm: [_run_arm(args, arm, s, common) for s in range(args.seeds)] for arm in arms}
    text = table(args, results, method, argv)
    print(text)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"written: {args.out}")


if __name__ == "__main__":
    main()
