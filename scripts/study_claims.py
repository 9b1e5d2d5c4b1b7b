"""The paper's claims as differences between the offline study's configurations (recipes/offline/,
or the v3 study's recipes/v3/), each with its 95% Welch interval over seeds: the numbers
docs/results.md gives.

    python scripts/study_claims.py [RUNS]                # RUNS: default runs/offline
    python scripts/study_claims.py runs/v3 --study v3    # C1 against every control, on two families

Each configuration is at the learning rate the sweep's tuning stage chose on validation (the report's
rule); its seeds are those the chosen rate ran with.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from peftx.studies.report.rows import Row, mean, sem, stopped_label, welch_interval
from peftx.studies.report.writer import load_results, summarize

# label -> (task, the row's configuration values that identify it)
CONFIGS = {
    "ListOps: pretrained, full": ("listops", {"method.name": "full", "model.pretrained": True}),
    "ListOps: from scratch, full": ("listops", {"method.name": "full", "model.pretrained": False}),
    "ListOps: pretrained, LoRA 2%": (
        "listops",
        {"method.name": "lora", "model.pretrained": True, "input.name": "pretrained_vocab"},
    ),
    "ListOps: from scratch, LoRA 2%": ("listops", {"method.name": "lora", "model.pretrained": False}),
    "ListOps: pretrained, prefix 2%": ("listops", {"method.name": "prefix"}),
    "ListOps: pretrained, IA3": ("listops", {"method.name": "ia3"}),
    "ListOps: pretrained, BitFit": ("listops", {"method.name": "bitfit"}),
    "ListOps: pretrained, fpt": ("listops", {"method.name": "frozen"}),
    "ListOps: LoRA 2%, learned input": ("listops", {"input.name": "learned", "input.align": "off"}),
    "ListOps: LoRA 2%, learned input aligned": ("listops", {"input.name": "learned", "input.align": "on"}),
    "Fashion-MNIST: pretrained, full": ("vision", {"method.name": "full", "model.pretrained": True}),
    "Fashion-MNIST: from scratch, full": ("vision", {"method.name": "full", "model.pretrained": False}),
    "Fashion-MNIST: pretrained, LoRA 2%": ("vision", {"method.name": "lora"}),
    "SCL2205: pretrained, full": ("protein", {"method.name": "full", "model.pretrained": True}),
    "SCL2205: from scratch, full": ("protein", {"method.name": "full", "model.pretrained": False}),
    "SCL2205: pretrained, LoRA 2%": ("protein", {"method.name": "lora"}),
}
# (claim, a, b): the difference a - b
CLAIMS = [
    ("C1", "ListOps: pretrained, full", "ListOps: from scratch, full"),
    ("C1", "ListOps: pretrained, LoRA 2%", "ListOps: from scratch, LoRA 2%"),
    ("C1", "Fashion-MNIST: pretrained, full", "Fashion-MNIST: from scratch, full"),
    ("C1", "SCL2205: pretrained, full", "SCL2205: from scratch, full"),
    ("C2", "ListOps: pretrained, LoRA 2%", "ListOps: pretrained, full"),
    ("C2", "ListOps: pretrained, prefix 2%", "ListOps: pretrained, full"),
    ("C2", "Fashion-MNIST: pretrained, LoRA 2%", "Fashion-MNIST: pretrained, full"),
    ("C2", "SCL2205: pretrained, LoRA 2%", "SCL2205: pretrained, full"),
    ("C3", "ListOps: pretrained, LoRA 2%", "ListOps: LoRA 2%, learned input"),
    ("C3", "ListOps: LoRA 2%, learned input aligned", "ListOps: LoRA 2%, learned input"),
]


# The v3 study (recipes/v3/): C1 against each control, the bounds, C1 on a decoder
V3_CONFIGS = {
    "ListOps: pretrained, LoRA 2%": (
        "listops",
        {"model.family": "bert", "model.init": "pretrained", "method.name": "lora"},
    ),
    "ListOps: from scratch, LoRA 2%": ("listops", {"model.family": "bert", "model.init": "scratch"}),
    "ListOps: shuffled, LoRA 2%": ("listops", {"model.family": "bert", "model.init": "shuffled"}),
    "ListOps: self-pretrained, LoRA 2%": ("listops", {"model.family": "bert", "model.init": "self_pretrained"}),
    "ListOps: pretrained, full": ("listops", {"model.body": "full", "method.name": "full"}),
    "ListOps: body none": ("listops", {"model.body": "none"}),
    "ListOps: SmolLM2 pretrained, LoRA 2%": ("listops", {"model.family": "llama", "model.init": "pretrained"}),
    "ListOps: SmolLM2 from scratch, LoRA 2%": ("listops", {"model.family": "llama", "model.init": "scratch"}),
}
V3_CLAIMS = [
    ("C1", "ListOps: pretrained, LoRA 2%", "ListOps: from scratch, LoRA 2%"),
    ("C1 vs shuffled", "ListOps: pretrained, LoRA 2%", "ListOps: shuffled, LoRA 2%"),
    ("C1 vs self-pretrained", "ListOps: pretrained, LoRA 2%", "ListOps: self-pretrained, LoRA 2%"),
    ("body", "ListOps: pretrained, LoRA 2%", "ListOps: body none"),
    ("C2", "ListOps: pretrained, LoRA 2%", "ListOps: pretrained, full"),
    ("C1 decoder", "ListOps: SmolLM2 pretrained, LoRA 2%", "ListOps: SmolLM2 from scratch, LoRA 2%"),
]
STUDIES = {"v2": (CONFIGS, CLAIMS), "v3": (V3_CONFIGS, V3_CLAIMS)}


# What a key the task's rows do not vary in (so the report leaves it out) holds in every study recipe
DEFAULTS = {
    "input.name": "pretrained_vocab",
    "input.align": "off",
    "model.pretrained": True,
    "model.init": "pretrained",
    "model.body": "full",
    "model.family": "bert",
    "method.name": "lora",
}


def _matches(row: Row, key: str, value) -> bool:
    if key not in row.config:
        return key in DEFAULTS and DEFAULTS[key] == value
    return row.config[key] == value or str(row.config[key]) == str(value)


def find(rows: list[Row], task: str, want: dict) -> Row | None:
    """The one row of `task` whose configuration has every value of `want`."""
    hits = [r for r in rows if r.task == task and all(_matches(r, k, v) for k, v in want.items())]
    if len(hits) > 1:
        raise SystemExit(f"{task} {want}: {len(hits)} configurations match ({', '.join(h.label for h in hits)})")
    return hits[0] if hits else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="?", default="runs/offline")
    p.add_argument("--study", choices=sorted(STUDIES), default="v2")
    args = p.parse_args()
    configs, claims = STUDIES[args.study]
    results = load_results(Path(args.runs))
    rows, _ = summarize(results)
    found = {label: find(rows, task, want) for label, (task, want) in configs.items()}
    print(
        "| configuration | trainable % | lr (chosen) | rates tried | seeds | test accuracy % (mean ± SEM) | stopped |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for label, r in found.items():
        if r is None:
            print(f"| {label} | | | 0 | 0 | not run | |")
            continue
        err = "—" if math.isnan(sem(r.test)) else f"{100 * sem(r.test):.1f}"
        print(
            f"| {label} | {100 * r.trainable / r.total:.2f} | {r.lr:g} | {len(r.lrs_tried)} | {len(r.seeds)} | "
            f"{100 * mean(r.test):.1f} ± {err} | {stopped_label(r.stopped)} |"
        )
    print("\n| claim | difference | points | 95% interval | excludes 0 |")
    print("|---|---|---:|---|---|")
    for claim, a, b in claims:
        if found[a] is None or found[b] is None:
            print(f"| {claim} | {a} − {b} | not run | | |")
            continue
        d, lo, hi = welch_interval([100 * x for x in found[a].test], [100 * x for x in found[b].test])
        interval, excludes = (
            ("—", "—") if math.isnan(lo) else (f"[{lo:+.1f}, {hi:+.1f}]", "yes" if lo > 0 or hi < 0 else "no")
        )
        print(f"| {claim} | {a} − {b} | {d:+.1f} | {interval} | {excludes} |")
    # What the study cost: each run's own wall time (a resumed run counts its last stretch only)
    walls = [r.timing.wall_seconds for r in results if r.timing is not None and r.timing.wall_seconds]
    print(
        f"\n{len(walls)} runs; their wall times add to {sum(walls) / 60:.0f} minutes "
        f"({sum(walls) / 120:.0f} on two workers sharing the machine)."
    )


if __name__ == "__main__":
    main()
