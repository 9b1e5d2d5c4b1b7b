"""Tiny training runs for `tests/test_distributed.py`: launched as one plain process or as several under
`torchrun` (CPU ranks on gloo need `ACCELERATE_USE_CPU=true`), each scenario trains with the real
samplers and evaluates, and the main process writes, per scenario:

- `lr`, `loss`: the learning rate after every optimizer step and the step's training loss (step -> value);
- `seen`: per micro-batch, the sorted union over processes of the training examples it held;
- `history`, `val`, `test`, `initial_val`: evaluations (accuracy, loss), `initial_val` before training;
- `val_ids`, `test_ids`: the example indices evaluation gathered, one entry per row computed;
- `outcome`: the TrainOutcome's counts (examples, tokens, processes, batches);
- `world_size`, `distributed_type`: as accelerate saw the launch (DDP falls in MULTI_CPU / MULTI_GPU).

A scenario fixes the global batch; each of N processes takes global_batch / N. Dropout is off, so one
process and N processes compute the same model up to float rounding.

Run: python -m tests.support.distributed_worker --out OUT.json [--scenario NAME ...]
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, replace

import torch
from accelerate import PartialState
from accelerate.utils import gather_object, set_seed

from peftx.recipe import validate_recipe
from peftx.training.batching import make_split
from peftx.training.builder import build_model
from peftx.training.evaluation import evaluate, infer_rows
from peftx.training.job import TrainJob
from peftx.training.loop import train
from peftx.training.points import Point, TrainPoint
from peftx.training.session import make_accelerator
from tests.support.tiny import tiny_recipe

NO_DROPOUT = {
    "bert": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    "gpt2": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "llama": {"attention_dropout": 0.0},
}

SCENARIOS = {
    # 249 = 7 x 32 + 25: each epoch ends on a global batch that splits 13 / 12; 50 and 37 evaluation
    # examples in token-budgeted batches of unequal sizes, not a multiple of the process count
    "uneven": dict(family="bert", global_batch=32, grad_accum=1, steps=12, n_train=249, n_val=50, n_test=37),
    # 225 = 14 x 16 + 1: the epoch's last micro-batch holds one example, so one process has none of it
    "accum": dict(family="gpt2", global_batch=16, grad_accum=2, steps=8, n_train=225, n_val=41, n_test=23),
    # the llama family (grouped-query attention, last-token pooling): 97 = 6 x 16 + 1 again ends an epoch
    # on a one-example batch
    "llama": dict(family="llama", global_batch=16, grad_accum=1, steps=7, n_train=97, n_val=30, n_test=21),
}


def run_scenario(family: str, global_batch: int, grad_accum: int, steps: int, n_train: int, n_val: int, n_test: int):
    """Train and evaluate one scenario in this process (one of however many were launched).

    Returns:
        The record described in the module docstring, on the main process (None on the others).
    """
    accelerator = make_accelerator("fp32", grad_accum)  # first: it forms the process group (gloo on CPUs)
    world = accelerator.num_processes
    if world != int(os.environ.get("WORLD_SIZE", "1")):
        raise RuntimeError(f"launched {os.environ['WORLD_SIZE']} processes, accelerate sees {world}")
    raw = tiny_recipe(
        family, task={"name": "listops", "preset": "tiny", "n_train": n_train, "n_val": n_val, "n_test": n_test}
    )
    raw["model"]["config_overrides"].update(NO_DROPOUT[family])
    raw["model"]["head_dropout"] = 0.0
    raw["train"].update(
        batch_size=global_batch // world,
        grad_accum=grad_accum,
        steps=steps,
        eval_every=4,
        log_every=1,
        warmup=0.25,
        eval_batch_size=16,
        eval_batch_tokens=300,  # token budgets cut the long examples' batches smaller
    )
    recipe = validate_recipe(raw)
    cfg = recipe.train
    set_seed(recipe.seed)
    task = recipe.task.load()
    model, _ = build_model(recipe, task.info)
    model.to(accelerator.device)  # evaluated before training prepares it
    splits = {
        n: make_split(task.splits[n], task.info.input_spec, model.specials, model.max_length, 1)
        for n in ("train", "validation", "test")
    }
    held: list[list[int]] = []  # this process's training micro-batches, as collated

    def recording(indices: list[int], collate=splits["train"].collate):
        held.append(sorted(indices))
        return collate(indices)

    splits["train"] = replace(splits["train"], collate=recording)
    initial_val = evaluate(model, splits["validation"], cfg, accelerator)
    lr: dict[int, float] = {}
    loss: dict[int, float] = {}

    def on_point(point: Point) -> None:
        if isinstance(point, TrainPoint):
            lr[point.step], loss[point.step] = point.lr, point.loss

    outcome = train(TrainJob(model, splits["train"], splits["validation"], cfg, recipe.seed, accelerator), on_point)
    val = evaluate(model, splits["validation"], cfg, accelerator)
    test = evaluate(model, splits["test"], cfg, accelerator)
    ids = {
        n: infer_rows(model, splits[n], cfg.eval_batch_size, accelerator, cfg.eval_batch_tokens)[0].tolist()
        for n in ("validation", "test")
    }
    per_process = gather_object([held])  # [process 0's micro-batches, process 1's, ...]
    if not accelerator.is_main_process:
        return None
    return {
        "world_size": accelerator.num_processes,
        "distributed_type": str(accelerator.distributed_type),
        "lr": lr,
        "loss": loss,
        "seen": [sorted(i for part in parts for i in part) for parts in zip(*per_process)],
        "history": [p.model_dump() for p in outcome.history],
        "initial_val": initial_val,
        "val": val,
        "test": test,
        "val_ids": ids["validation"],
        "test_ids": ids["test"],
        "outcome": {k: v for k, v in asdict(outcome).items() if k not in ("history", "train_log", "best")},
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="default: all")
    args = p.parse_args()
    torch.set_num_threads(1)
    records = {name: run_scenario(**SCENARIOS[name]) for name in args.scenario or SCENARIOS}
    state = PartialState()
    if state.is_main_process:
        with open(args.out, "w") as f:
            json.dump(records, f)
    state.wait_for_everyone()


if __name__ == "__main__":
    main()
