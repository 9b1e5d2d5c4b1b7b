"""Old against new speed code on the same batches, alternating in one process: training steps (forward
and backward, no optimizer) of a recipe with some of `peftx/training/speed.py`'s names taken from another git
revision. For changes too small to see across processes (a few percent) on a machine whose speed moves.

    python scripts/ab_speed.py --rev HEAD~1 --swap _FastDropout
    python scripts/ab_speed.py --rev HEAD~1 --swap _FastDropout --set task.preset=lra512 \\
        --set task.n_train=600 --set train.batch_size=8

The old names run with the old module's globals (what they call comes from the old revision too).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def old_module(rev: str):
    """peftx/training/speed.py as it was at `rev`, loaded as a module of its own."""
    source = subprocess.run(
        ["git", "show", f"{rev}:peftx/training/speed.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speed_old.py"
        path.write_text(source)
        spec = importlib.util.spec_from_file_location("speed_old", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", required=True, help="git revision of the old peftx/training/speed.py")
    p.add_argument("--swap", action="append", required=True, help="a name in peftx.training.speed to take from --rev")
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "listops_lora.yaml"))
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--batches", type=int, default=6)
    p.add_argument("--rounds", type=int, default=4)
    a = p.parse_args()

    import peftx.training.speed as speed
    from peftx.recipe import load_recipe
    from peftx.training.session import open_session

    old = old_module(a.rev)
    variants = {"old": {n: getattr(old, n) for n in a.swap}, "new": {n: getattr(speed, n) for n in a.swap}}
    recipe = load_recipe(a.recipe, ["train.steps=10", *a.set])
    session = open_session(recipe)
    model, accelerator = session.model, session.accelerator
    split = session.splits(["train"])["train"]
    fast = speed.prepare_model(model, recipe.train, accelerator.device)
    model.train()
    bs = recipe.train.batch_size
    order = np.argsort(split.lengths)  # batches of similar lengths, as peftx's sampler makes them
    starts = np.random.default_rng(0).integers(0, len(split) // bs, a.batches)
    batches = [split.collate(order[i * bs : (i + 1) * bs].tolist()) for i in starts]

    def step(batch: dict) -> None:
        batch = dict(batch)
        labels = batch.pop("labels")
        with accelerator.autocast(), fast():
            loss = torch.nn.functional.cross_entropy(model(**batch).float(), labels)
        loss.backward()
        for param in model.parameters():
            param.grad = None

    for batch in batches[:2]:  # warm-up
        step(batch)
    seconds: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.rounds):
        for name, names in variants.items():
            for attr, value in names.items():
                setattr(speed, attr, value)
            t = time.perf_counter()
            for batch in batches:
                step(batch)
            seconds[name].append(time.perf_counter() - t)
    print(f"precision {session.precision}, threads {torch.get_num_threads()}, {len(batches)} batches of {bs}")
    for name, s in seconds.items():
        print(f"{name}: " + " ".join(f"{x:.3f}" for x in s) + f" s, median {statistics.median(s):.3f}")
    print(f"old / new: {statistics.median(seconds['old']) / statistics.median(seconds['new']):.3f}x")


if __name__ == "__main__":
    main()
