"""Differences of mean test accuracy between two configurations of the offline runs, with a Welch
95% interval: the numbers docs/RESULTS.md gives for input alignment.

    python scripts/align_intervals.py [RUNS]      # RUNS: default runs/offline
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

from scipy import stats

from peftx.artifacts import RunRecord

# (label, sweep, point name after the seed; None: the sweep's only configuration)
CONFIGS = {
    "LoRA, pretrained_vocab": ("c2_listops", "lora-r11-alpha22"),
    "LoRA, learned": ("c3_listops", None),
    "LoRA, learned + mmd": ("c3_align", "objective=mmd"),
    "LoRA, learned + sinkhorn": ("c3_align", "objective=sinkhorn"),
    "LoRA, learned + moments": ("c3_align", "objective=moments"),
    "fpt, pretrained_vocab": ("c2_listops", "frozen-fpt"),
    "fpt, learned": ("c3_align_fpt", "align=None"),
    "fpt, learned + mmd": ("c3_align_fpt", "align=objectivemmd-referencevocab-steps100-lr0.01-points512"),
    "Fashion-MNIST LoRA, linear": ("c3_align_vision", "align=None"),
    "Fashion-MNIST LoRA, linear + mmd": (
        "c3_align_vision",
        "align=objectivemmd-referencevocab-steps100-lr0.01-points512",
    ),
}
PAIRS = [
    ("LoRA, learned + mmd", "LoRA, learned"),
    ("LoRA, learned + sinkhorn", "LoRA, learned"),
    ("LoRA, learned + moments", "LoRA, learned"),
    ("LoRA, pretrained_vocab", "LoRA, learned"),
    ("LoRA, pretrained_vocab", "LoRA, learned + mmd"),
    ("fpt, learned + mmd", "fpt, learned"),
    ("fpt, pretrained_vocab", "fpt, learned + mmd"),
    ("Fashion-MNIST LoRA, linear + mmd", "Fashion-MNIST LoRA, linear"),
]


def accuracies(root: Path, sweep: str, point: str | None) -> tuple[list[float], list[float]]:
    """Test accuracies (%) of a configuration's completed seeds, and its alignment seconds."""
    acc, secs = [], []
    for d in sorted((root / sweep).iterdir()):
        if not d.is_dir() or (point is not None and not d.name.endswith("__" + point)):
            continue
        r = RunRecord.read(d)
        if r.completed:
            acc.append(100 * r.metrics.test_accuracy)
            secs.append(r.timing.align_seconds or 0.0)
    return acc, secs


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/offline")
    data = {k: accuracies(root, *v) for k, v in CONFIGS.items()}
    print("| configuration | seeds | test accuracy % | alignment seconds |")
    print("|---|---:|---:|---:|")
    for k, (acc, secs) in data.items():
        sem = statistics.stdev(acc) / math.sqrt(len(acc)) if len(acc) > 1 else float("nan")
        print(f"| {k} | {len(acc)} | {statistics.mean(acc):.1f} ± {sem:.1f} | {statistics.mean(secs):.1f} |")
    print("\n| difference | points | Welch 95% interval |")
    print("|---|---:|---|")
    for a, b in PAIRS:
        x, y = data[a][0], data[b][0]
        va, vb = statistics.variance(x) / len(x), statistics.variance(y) / len(y)
        d, se = statistics.mean(x) - statistics.mean(y), math.sqrt(va + vb)
        df = (va + vb) ** 2 / (va**2 / (len(x) - 1) + vb**2 / (len(y) - 1))
        half = stats.t.ppf(0.975, df) * se
        print(f"| {a} − {b} | {d:+.1f} | [{d - half:+.1f}, {d + half:+.1f}] |")


if __name__ == "__main__":
    main()
