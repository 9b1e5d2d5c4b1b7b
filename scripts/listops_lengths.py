"""How ListOps' presets' lengths compare with a model's positions: what truncating LRA's expressions
(lengths 501-1,999) to a 512-position model would cut, and what the `lra512` preset holds instead.

    python scripts/listops_lengths.py [--n 2000] [--positions 512] [--seed 0]

Lengths count symbols (a digit one, an operator two: its name and its closing bracket); a BERT-family
model adds [CLS] and [SEP], so it holds `positions - 2` of them.
"""

from __future__ import annotations

import argparse
import random
import statistics

from peftx.tasks.listops.task import PRESETS, generate_expression


def lengths(preset: str, n: int, seed: int) -> list[int]:
    """Lengths of `n` expressions drawn as the preset draws them (duplicates kept: a length sample)."""
    p = PRESETS[preset]
    rng, out = random.Random(seed), []
    while len(out) < n:
        toks = generate_expression(rng, p["max_depth"], p["max_args"], p["max_length"])
        if toks is not None and p["min_length"] < len(toks) < p["max_length"]:
            out.append(len(toks))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--positions", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    room = args.positions - 2
    print(f"| preset | lengths | mean | median | longer than {room} | symbols kept when cut to {room} |")
    print("|---|---|---:|---:|---:|---:|")
    for preset in ("cpu", "lra512", "lra"):
        sample = lengths(preset, args.n, args.seed)
        cut = sum(n > room for n in sample) / len(sample)
        kept = sum(min(n, room) for n in sample) / sum(sample)
        p = PRESETS[preset]
        print(
            f"| {preset} | {p['min_length'] + 1}-{p['max_length'] - 1} | {statistics.mean(sample):.0f} | "
            f"{statistics.median(sample):.0f} | {100 * cut:.1f}% | {100 * kept:.1f}% |"
        )
    print(f"\n{args.n} expressions per preset, seed {args.seed}; `python scripts/listops_lengths.py --n {args.n}`")


if __name__ == "__main__":
    main()
