"""Cold paths, timed in one run: ListOps generation at LRA's size (generator 1 against 2), the default
`peftx budget` table and `peftx validate` without their caches, and the imports that bound both.

    python scripts/bench_cold.py                     # everything (about 4 minutes on 2 cores)
    python scripts/bench_cold.py --only generation --v1-examples 5000

Each command runs in a fresh process with an empty `$PEFTX_CACHE`, as a user's first call would.
Generator 1 is timed on `--v1-examples` expressions and scaled to the full size (it draws one tree at
a time, so its time is proportional to the count); generator 2 is timed at the full size.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GENERATE = """
import sys, time
from peftx.tasks.listops.task import PRESETS, generate_splits
n, version = int(sys.argv[1]), int(sys.argv[2])
args = dict(PRESETS["lra"], n_train=n - 2 * (n // 50), n_val=n // 50, n_test=n // 50)  # LRA's 96/2/2
t = time.perf_counter()
generate_splits(0, **args, generator=version)
print(time.perf_counter() - t)
"""


def timed(cmd: list[str]) -> float:
    """Wall seconds of a command in a fresh process with an empty cache (it must succeed)."""
    env = dict(os.environ, PEFTX_CACHE=tempfile.mkdtemp(prefix="peftx-cold-"), HF_HUB_OFFLINE="1")
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def generation_seconds(n: int, version: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", GENERATE, str(n), str(version)], check=True, capture_output=True, text=True, cwd=ROOT
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["generation", "budget", "validate", "imports"], action="append")
    ap.add_argument("--examples", type=int, default=100_000, help="ListOps expressions (LRA: 100,000)")
    ap.add_argument("--v1-examples", type=int, default=10_000, help="generator 1 is timed on this many, then scaled")
    ap.add_argument("--recipe", default="recipes/listops_lora.yaml", help="what `peftx validate` checks")
    a = ap.parse_args()
    only = set(a.only or ["generation", "budget", "validate", "imports"])
    peftx = [sys.executable, "-m", "peftx"]
    rows: list[tuple[str, str]] = []
    if "imports" in only:
        rows.append(("import torch", f"{timed([sys.executable, '-c', 'import torch']):.1f} s"))
        rows.append(
            (
                "import torch, transformers' four families, peft",
                f"{timed([sys.executable, '-c', 'import peftx.families, peft']):.1f} s",
            )
        )
    if "budget" in only:
        rows.append(("`peftx budget` (48 rows), no cache", f"{timed([*peftx, 'budget']):.1f} s"))
    if "validate" in only:
        rows.append((f"`peftx validate {a.recipe}`, no cache", f"{timed([*peftx, 'validate', a.recipe]):.1f} s"))
    if "generation" in only:
        one = generation_seconds(a.v1_examples, 1) * a.examples / a.v1_examples
        two = generation_seconds(a.examples, 2)
        rows.append((f"ListOps `lra` {a.examples:,}, generator 1 (scaled from {a.v1_examples:,})", f"{one:.1f} s"))
        rows.append((f"ListOps `lra` {a.examples:,}, generator 2", f"{two:.1f} s ({one / two:.1f}x faster)"))
    print(f"{os.cpu_count()} CPUs")
    print("| cold path | wall time |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
