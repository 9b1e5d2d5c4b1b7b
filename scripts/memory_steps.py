"""Where a training step's memory goes, step by step: the padded batch, the bytes autograd keeps for
backward (each storage counted once, by the module that made it), and what the process holds after
the step (resident memory, its high-water mark, glibc's heap and the free part it keeps).

    python scripts/memory_steps.py                                       # the demo recipe, 9 steps
    python scripts/memory_steps.py --steps 9 --set train.recompute_activations=false
    python scripts/memory_steps.py --by-module                          # who keeps what, per step

The gap between the heap's size and what the step keeps plus its temporaries is the allocator's:
freed blocks of earlier (differently shaped) steps that it keeps but cannot reuse whole.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from peftx.model.memory import process_memory  # noqa: E402
from peftx.recipe import load_recipe  # noqa: E402
from peftx.tasks.base import SPLITS  # noqa: E402
from peftx.training.job import TrainJob  # noqa: E402
from peftx.training.loop import Trainer  # noqa: E402
from peftx.training.session import open_session  # noqa: E402

MIB = 2**20


class SavedBytes:
    """Counts, per module, the storages autograd saves for backward while active."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.stack: list[str] = []
        self.by_module: collections.Counter[str] = collections.Counter()
        self.seen: set[int] = set()
        for name, module in model.named_modules():
            label = f"{type(module).__name__} ({name.rsplit('.', 1)[-1] or 'model'})"
            module.register_forward_pre_hook(lambda m, a, label=label: self.stack.append(label) and None)
            module.register_forward_hook(lambda m, a, o: self.stack.pop() and None)

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.seen:
            self.seen.add(storage.data_ptr())
            self.by_module[self.stack[-1] if self.stack else "outside modules"] += storage.nbytes()
        return t

    def reset(self) -> None:
        self.by_module.clear()
        self.seen.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "listops_lora.yaml"))
    ap.add_argument("--steps", type=int, default=9)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="recipe value (repeatable)")
    ap.add_argument("--by-module", action="store_true", help="also list the largest keepers of each step")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe, [f"train.steps={args.steps}", *args.overrides])
    session = open_session(recipe)
    splits = session.splits(SPLITS)
    job = TrainJob(session.model, splits["train"], splits["validation"], recipe.train, recipe.seed, session.accelerator)
    trainer = Trainer(job)  # applies the speed options, as a run does
    saved = SavedBytes(session.model)
    print("| step | saved for backward (MiB) | resident | peak resident | heap | heap free |")
    print("|---:|---:|---:|---:|---:|---:|")
    for step in range(args.steps):
        saved.reset()
        with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
            trainer.step()
        m = {k: v // MIB for k, v in process_memory().items()}
        cells = [step, sum(saved.by_module.values()) // MIB, m.get("rss_bytes"), m.get("peak_rss_bytes")]
        print("| " + " | ".join(str(c) for c in [*cells, m.get("heap_bytes"), m.get("heap_free_bytes")]) + " |")
        if args.by_module:
            for label, n in saved.by_module.most_common(6):
                print(f"|  | {n / MIB:.1f} {label} | | | | |")


if __name__ == "__main__":
    main()
