"""Old against new code on the same training steps, taking turns: one worker process per git revision
(the old one checked out in a temporary worktree), each stepping the library's own loop
(`peftx.training.loop.Trainer.step`) through the same batch stream, one round each in turn. For changes
too small to see across separate runs (a few percent) on a machine whose speed drifts: only one worker
computes at a time, and drift falls on both alike.

    python scripts/ab_speed.py --rev HEAD~1
    python scripts/ab_speed.py --old-set train.keep_freed_memory=true     # one setting against another
    python scripts/ab_speed.py --rev HEAD~1 --set task.preset=lra512 --set task.n_train=600 \\
        --set train.batch_size=8

Both revisions must have `Trainer.step` (the public step of the loop). Each worker's peak resident
memory is printed too (one process each, so settings of the allocator compare).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def worker(recipe_path: str, overrides: list[str], steps: int) -> None:
    """Build the recipe's model from the checkout in the working directory, then answer each line on
    stdin (a number of steps) with the seconds those optimizer steps took."""
    sys.path.insert(0, os.getcwd())  # this checkout's peftx, not the one beside this script
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:  # as the `peftx` command does, before torch is imported
        from peftx.util.huge_pages import enable_huge_pages

        enable_huge_pages()
    except ImportError:  # an older revision
        pass
    from peftx.recipe import load_recipe
    from peftx.tasks.base import SPLITS
    from peftx.training.job import TrainJob
    from peftx.training.loop import Trainer
    from peftx.training.session import open_session

    recipe = load_recipe(recipe_path, [f"train.steps={steps}", *overrides])
    session = open_session(recipe)
    splits = session.splits(SPLITS)
    job = TrainJob(session.model, splits["train"], splits["validation"], recipe.train, recipe.seed, session.accelerator)
    trainer = Trainer(job)
    print(json.dumps({"precision": session.precision}), flush=True)
    for line in sys.stdin:
        seconds = sum(trainer.step().seconds for _ in range(int(line)))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        print(json.dumps({"seconds": seconds, "peak_mib": peak}), flush=True)


def start(cwd: Path, a: argparse.Namespace, total: int, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--recipe", a.recipe, "--steps", str(total)]
    cmd += [x for s in [*a.set, *extra] for x in ("--set", s)]
    proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    json.loads(proc.stdout.readline())  # built
    return proc


def ask(proc: subprocess.Popen, steps: int) -> dict:
    """The worker's answer for `steps` more steps: their seconds, and its peak resident MiB so far."""
    proc.stdin.write(f"{steps}\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def take_turns(trees: dict[str, Path], a: argparse.Namespace, extra: dict[str, list[str]]) -> dict[str, list[dict]]:
    """Each worker's answers, round by round (after a warm-up that is not kept)."""
    total = a.warmup + a.steps * a.rounds
    workers = {name: start(tree, a, total, extra[name]) for name, tree in trees.items()}
    for proc in workers.values():
        ask(proc, a.warmup)
    answers: dict[str, list[dict]] = {k: [] for k in workers}
    for _ in range(a.rounds):
        for name, proc in workers.items():
            answers[name].append(ask(proc, a.steps))
    for proc in workers.values():
        proc.stdin.close()
        proc.wait()
    return answers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rev", help="git revision of the old code (default: this tree, with --old-set)")
    p.add_argument("--old-set", action="append", default=[], help="recipe value for the old side only")
    p.add_argument("--recipe", default=str(ROOT / "recipes" / "listops_lora.yaml"))
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per round")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2, help="steps each worker takes before the rounds")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        return worker(a.recipe, a.set, a.warmup + a.steps * a.rounds)
    if not a.rev and not a.old_set:
        p.error("give --rev, --old-set or both")
    extra = {"old": a.old_set, "new": []}
    with tempfile.TemporaryDirectory() as tmp:
        old_tree = Path(tmp) / "old" if a.rev else ROOT
        if a.rev:
            subprocess.run(["git", "worktree", "add", "--detach", str(old_tree), a.rev], cwd=ROOT, check=True)
        try:
            answers = take_turns({"old": old_tree, "new": ROOT}, a, extra)
        finally:
            if a.rev:
                subprocess.run(["git", "worktree", "remove", "--force", str(old_tree)], cwd=ROOT, check=False)
    print(f"{a.steps} optimizer steps per round, {a.rounds} rounds, taking turns")
    seconds = {name: [r["seconds"] for r in rounds] for name, rounds in answers.items()}
    for name, s in seconds.items():
        peak = answers[name][-1]["peak_mib"]
        times = " ".join(f"{x:.3f}" for x in s)
        print(f"{name}: {times} s, median {statistics.median(s):.3f}; peak {peak:,.0f} MiB")
    print(f"old / new: {statistics.median(seconds['old']) / statistics.median(seconds['new']):.3f}x")


if __name__ == "__main__":
    main()
