"""Cold paths, timed in one run: ListOps generation at LRA's size (generator 1 against 2), the default
`peftx budget` table and `peftx validate` without their caches, the imports that bound both, and the
commands that need no model (`--only commands`: help, version, a schema error, recipe show, report,
a sweep's dry run, the budget table; goals: help <= 0.5 s, a schema error <= 1 s, the table < 3 s on
a quiet machine). tests/test_cold_paths.py checks that those commands import no torch.

    python scripts/bench_cold.py                     # everything (about 4 minutes on 2 cores)
    python scripts/bench_cold.py --only commands --repeats 3
    python scripts/bench_cold.py --only generation --v1-examples 5000

Each command runs in a fresh process with an empty `$PEFTX_CACHE`, as a user's first call would.
Generator 1 is timed on `--v1-examples` expressions and scaled to the full size (it draws one tree at
a time, so its time is proportional to the count); generator 2 is timed at the full size.
"""

from __future__ import annotations

import argparse
import json
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


def timed(cmd: list[str], exit_code: int = 0) -> float:
    """Wall seconds of a command in a fresh process with an empty cache (it must exit with `exit_code`)."""
    env = dict(os.environ, PEFTX_CACHE=tempfile.mkdtemp(prefix="peftx-cold-"), HF_HUB_OFFLINE="1")
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != exit_code:
        raise SystemExit(f"{' '.join(cmd)}: exit {done.returncode}, expected {exit_code}\n{done.stderr[-2000:]}")
    return time.perf_counter() - t


def command_rows(peftx: list[str], repeats: int) -> list[tuple[str, str]]:
    """Wall time (best of `repeats`) of each command that needs no model."""
    folder = Path(tempfile.mkdtemp(prefix="peftx-cold-cmd-"))
    recipe = {
        "model": {"source": "offline"},
        "task": {"name": "listops", "preset": "tiny"},
        "method": {"name": "lora"},
        "train": {"steps": 10, "lr": [1e-3, 3e-4]},
        "seed": [0, 1],
        "output": {"dir": str(folder / "runs")},
    }
    (folder / "grid.yaml").write_text(json.dumps(recipe))
    (folder / "misspelt.yaml").write_text(json.dumps(recipe | {"task": {"name": "listop"}, "seed": 0}))
    (folder / "runs").mkdir()
    commands = [
        ("`peftx --help`", ["--help"], 0),
        ("`peftx --version`", ["--version"], 0),
        ("`peftx validate` of a misspelt task name", ["validate", str(folder / "misspelt.yaml")], 2),
        ("`peftx recipe show`", ["recipe", "show"], 0),
        ("`peftx report` (no runs)", ["report", str(folder / "runs")], 2),
        ("`peftx sweep --dry-run` (4 points)", ["sweep", str(folder / "grid.yaml"), "--dry-run"], 0),
        ("`peftx budget` (48 rows), no cache", ["budget"], 0),
    ]
    rows = []
    for name, args, code in commands:
        best = min(timed([*peftx, *args], code) for _ in range(repeats))
        rows.append((name, f"{best:.2f} s"))
    return rows


def generation_seconds(n: int, version: int) -> float:
    out = subprocess.run(
        [sys.executable, "-c", GENERATE, str(n), str(version)], check=True, capture_output=True, text=True, cwd=ROOT
    )
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["generation", "budget", "validate", "imports", "commands"], action="append")
    ap.add_argument("--repeats", type=int, default=1, help="--only commands: best of this many runs each")
    ap.add_argument("--examples", type=int, default=100_000, help="ListOps expressions (LRA: 100,000)")
    ap.add_argument("--v1-examples", type=int, default=10_000, help="generator 1 is timed on this many, then scaled")
    ap.add_argument("--recipe", default="recipes/listops_lora.yaml", help="what `peftx validate` checks")
    a = ap.parse_args()
    only = set(a.only or ["generation", "budget", "validate", "imports", "commands"])
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
    if "commands" in only:
        rows += command_rows(peftx, a.repeats)
    if "generation" in only:
        one = generation_seconds(a.v1_examples, 1) * a.examples / a.v1_examples
        two = generation_seconds(a.examples, 2)
        rows.append((f"ListOps `lra` {a.examples:,}, generator 1 (scaled from {a.v1_examples:,})", f"{one:.1f} s"))
        rows.append((f"ListOps `lra` {a.examples:,}, generator 2", f"{two:.1f} s ({one / two:.1f}x faster)"))
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    print("| cold path | wall time |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
