"""Where a peftx training step spends its time: torch's profiler over steps of the demo recipe, the
operators by their own CPU time, grouped into kinds (matrix products, attention, norms and element-wise
work, optimizer, casts, the rest).

    python scripts/profile_step.py                               # the demo recipe, this machine's precision
    python scripts/profile_step.py --set train.precision=bf16    # bf16 autocast
    python scripts/profile_step.py --set task.preset=lra512 --set task.n_train=2000 --set train.batch_size=8

The first `--warmup` steps are not profiled (kernel selection, allocator growth).
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, schedule  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
KINDS = [  # (kind, substrings of operator names), first match wins
    ("matrix products", ("addmm", "mm", "bmm", "matmul", "linear")),
    ("attention", ("attention", "softmax", "sdpa", "flash")),
    ("optimizer", ("adam", "_foreach", "lerp", "addcdiv", "sqrt", "zero_")),  # AdamW's addcmul is _foreach
    ("casts and copies", ("to_copy", "copy_", "_to_copy", "clone", "contiguous")),
    ("norms", ("layer_norm", "native_layer_norm")),
    # peftx's fast dropout: its autograd node (which draws the bits), the integer passes, masking with addcmul
    ("dropout", ("dropout", "bernoulli", "rand", "bitwise_and", "clamp_", "aten::addcmul")),
    ("element-wise", ("gelu", "add", "mul", "div", "sub", "tanh", "where", "masked", "fill")),
    ("embedding and loss", ("embedding", "cross_entropy", "nll", "log_softmax", "index")),
]


def kind(name: str) -> str:
    low = name.lower()
    for k, keys in KINDS:
        if any(key in low for key in keys):
            return k
    return "other"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "listops_lora.yaml"))
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--shapes", metavar="OP", help="also break OP (e.g. aten::copy_) down by its input shapes")
    a = p.parse_args()

    from peftx.recipe import load_recipe
    from peftx.training.job import TrainJob
    from peftx.training.loop import train
    from peftx.training.points import TrainPoint
    from peftx.training.session import open_session

    total = a.warmup + a.steps
    recipe = load_recipe(a.recipe, [f"train.steps={total}", "train.eval_every=1000000", "train.log_every=1", *a.set])
    session = open_session(recipe)
    train_split = session.splits(["train"])["train"]
    val_split = session.split(session.task.splits["validation"].select(range(8)))
    sched = schedule(wait=0, warmup=a.warmup, active=a.steps, repeat=1)
    with profile(activities=[ProfilerActivity.CPU], schedule=sched, record_shapes=bool(a.shapes)) as prof:
        train(
            TrainJob(session.model, train_split, val_split, recipe.train, recipe.seed, session.accelerator),
            lambda point: prof.step() if isinstance(point, TrainPoint) else None,
        )
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total_us = sum(e.self_cpu_time_total for e in events)
    by_kind: dict[str, float] = defaultdict(float)
    for e in events:
        by_kind[kind(e.key)] += e.self_cpu_time_total
    print(f"precision {session.precision}, threads {torch.get_num_threads()}, {a.steps} steps profiled")
    print(f"{total_us / 1e3 / a.steps:.0f} ms of operator time per step\n")
    print("| kind | share of operator time |\n|---|---:|")
    for k, us in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {100 * us / total_us:.1f}% |")
    print("\n| operator | share | calls per step |\n|---|---:|---:|")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: a.top]:
        print(f"| `{e.key}` | {100 * e.self_cpu_time_total / total_us:.1f}% | {e.count / a.steps:.0f} |")
    if a.shapes:
        shaped = [e for e in prof.key_averages(group_by_input_shape=True) if e.key == a.shapes]
        print(f"\n| `{a.shapes}` input shapes | share of all operator time | calls per step |\n|---|---:|---:|")
        for e in sorted(shaped, key=lambda e: -e.self_cpu_time_total)[: a.top]:
            print(f"| {e.input_shapes} | {100 * e.self_cpu_time_total / total_us:.1f}% | {e.count / a.steps:.0f} |")


if __name__ == "__main__":
    main()
