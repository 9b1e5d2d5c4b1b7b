"""Reports built from result.json files alone: a markdown table and PNG plots.

Runs are grouped into configurations: everything in the resolved recipe except the seed, the learning
rate and the run's name/output. Within a configuration the learning rate is chosen on mean validation
accuracy over seeds; the table reports test accuracy at that learning rate as mean ± standard error
over seeds (sample standard deviation / sqrt(n)).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from peftx.artifacts import RESULT, RunRecord
from peftx.errors import PeftxError
from peftx.recipe import result_neutral_keys

# Recipe keys that never define a configuration: the schema's result-neutral fields (threads, names,
# where output goes) and what a configuration is reported over (seeds; the learning rate is chosen).
IGNORED = ("seed", "train.lr", *result_neutral_keys())


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def sem(xs: list[float]) -> float:
    """Standard error of the mean: sample standard deviation / sqrt(n); NaN for fewer than 2 values."""
    n = len(xs)
    if n < 2:
        return float("nan")
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1) / n)


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list | dict) else v
    return out


def load_results(root: str | Path) -> list[RunRecord]:
    """Every completed run record under `root` (unreadable result files are skipped)."""
    root = Path(root)
    if not root.exists():
        raise PeftxError(f"{root}: no such directory")
    results = []
    for path in sorted(root.rglob(RESULT)):
        try:
            record = RunRecord.read(path.parent)
        except PeftxError:
            continue
        if record.completed:
            results.append(record)
    if not results:
        raise PeftxError(f"{root}: no completed runs (no result.json with status 'completed')")
    return results


@dataclass
class Row:
    """One configuration at its chosen learning rate."""

    config: dict[str, object]  # the keys that vary across the report -> value
    task: str
    lr: float
    seeds: list[int]
    test: list[float]
    val: list[float]
    trainable: int
    total: int
    baselines: dict[str, float]
    lrs_tried: dict[float, float] = field(default_factory=dict)  # lr -> mean validation accuracy
    curves: list[list[tuple[int, float]]] = field(default_factory=list)  # per seed: (step, val acc)

    @property
    def label(self) -> str:
        return (
            ", ".join(f"{_key_label(k)}={_short(v)}" for k, v in self.config.items() if k != "task.name") or self.task
        )


def _key_label(key: str) -> str:
    """`method.name` -> `method`, `method.r` -> `r`: short, and distinct for the plug-in sections."""
    section, _, field = key.rpartition(".")
    return section if field == "name" and section else field


def _short(value: object, width: int = 28) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def summarize(results: list[RunRecord]) -> tuple[list[Row], list[str]]:
    """Rows (one per configuration) and the recipe keys that distinguish them."""
    flats = [flatten(r.recipe) for r in results]
    keys = sorted({k for f in flats for k in f})
    varying = [k for k in keys if k not in IGNORED and _differs([f.get(k) for f in flats])]
    groups: dict[str, list[tuple[RunRecord, dict]]] = defaultdict(list)
    for res, flat in zip(results, flats):
        ident = json.dumps({k: v for k, v in flat.items() if k not in IGNORED}, sort_keys=True, default=str)
        groups[ident].append((res, flat))
    rows = []
    for members in groups.values():
        by_lr: dict[float, list[RunRecord]] = defaultdict(list)
        for res, flat in members:
            by_lr[float(flat["train.lr"])].append(res)
        lrs = {lr: mean([r.metrics.val_accuracy for r in rs]) for lr, rs in by_lr.items()}
        best_lr = max(lrs, key=lambda lr: (lrs[lr], -lr))
        chosen = sorted(by_lr[best_lr], key=lambda r: r.seed)
        flat = members[0][1]
        rows.append(
            Row(
                config={k: flat.get(k) for k in varying},
                task=str(flat.get("task.name")),
                lr=best_lr,
                seeds=[r.seed for r in chosen],
                test=[r.metrics.test_accuracy for r in chosen],
                val=[r.metrics.val_accuracy for r in chosen],
                trainable=chosen[0].budget.trainable,
                total=chosen[0].budget.total,
                baselines=chosen[0].baselines,
                lrs_tried=dict(sorted(lrs.items())),
                curves=[[(h.step, h.val_accuracy) for h in r.history] for r in chosen],
            )
        )
    for task in {r.task for r in rows}:  # each task's rows show only what varies among them
        same_task = [r for r in rows if r.task == task]
        keep = [k for k in varying if k != "task.name" and _differs([r.config.get(k) for r in same_task])]
        for r in same_task:
            r.config = {k: r.config.get(k) for k in keep}
    rows.sort(key=lambda r: (r.task, [str(v) for v in r.config.values()]))
    return rows, varying


def _differs(values: list) -> bool:
    """Whether the values that are set (not None) take more than one value: a field that only some
    configurations have (LoRA's `r`) is not by itself a difference between them."""
    return len({json.dumps(v, sort_keys=True, default=str) for v in values if v is not None}) > 1


def pct(x: float) -> str:
    return "—" if math.isnan(x) else f"{100 * x:.1f}"


def markdown_table(rows: list[Row], varying: list[str]) -> str:
    """The report's tables: one per task (headed by its name when there are several), one line per
    configuration, the task's baselines underneath."""
    tasks = list(dict.fromkeys(r.task for r in rows))
    parts = []
    for task in tasks:
        same_task = [r for r in rows if r.task == task]
        table = _task_table(same_task, [k for k in varying if k in same_task[0].config])
        parts.append(f"### {task}\n\n{table}" if len(tasks) > 1 else table)
    return "\n".join(parts)


def _task_table(rows: list[Row], cols: list[str]) -> str:
    head = ["task", *cols, "lr (chosen)", "seeds", "test acc % (mean ± SEM)", "val acc %", "trainable", "trainable %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r.task,
            *["" if r.config.get(k) is None else str(r.config.get(k)) for k in cols],
            f"{r.lr:g}",
            str(len(r.seeds)),
            f"{pct(mean(r.test))} ± {pct(sem(r.test))}",
            pct(mean(r.val)),
            f"{r.trainable:,}",
            f"{100 * r.trainable / max(r.total, 1):.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    baselines: dict[str, dict[str, float]] = {}
    for r in rows:
        baselines.setdefault(r.task, r.baselines)
    lines.append("")
    for task, b in baselines.items():
        if b:
            lines.append(
                f"Baselines on {task} (test accuracy): "
                + ", ".join(f"{k.replace('_', ' ')} {100 * v:.1f}%" for k, v in b.items())
            )
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], out_dir: Path) -> list[Path]:
    """PNG plots: accuracy vs trainable parameters per task, pretrained vs scratch, training curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    tasks = sorted({r.task for r in rows})

    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for r in (r for r in rows if r.task == task):
            err = sem(r.test)
            ax.errorbar(
                r.trainable,
                100 * mean(r.test),
                yerr=None if math.isnan(err) else 100 * err,
                fmt="o",
                capsize=3,
                label=r.label,
            )
        for name, value in (next(r for r in rows if r.task == task).baselines or {}).items():
            ax.axhline(100 * value, ls="--", lw=1, color="grey")
            ax.annotate(
                name.replace("_", " "),
                (0.01, 100 * value),
                xycoords=("axes fraction", "data"),
                xytext=(0, 2),
                textcoords="offset points",
                fontsize=7,
                color="grey",
            )
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(task)
        _legend_below(ax)
    written.append(out_dir / "accuracy_vs_trainable.png")
    fig.savefig(written[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)

    pairs = _pretrained_pairs(rows)
    if pairs:
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(pairs)), 4.5))
        xs = range(len(pairs))
        for offset, which, color in ((-0.2, 0, "tab:blue"), (0.2, 1, "tab:orange")):
            vals = [100 * mean(p[which].test) for p in pairs.values()]
            errs = [0 if math.isnan(sem(p[which].test)) else 100 * sem(p[which].test) for p in pairs.values()]
            ax.bar(
                [x + offset for x in xs],
                vals,
                0.4,
                yerr=errs,
                capsize=3,
                color=color,
                label="pretrained" if which == 0 else "from scratch",
            )
        ax.set_xticks(list(xs), list(pairs), rotation=20, ha="right", fontsize=7)
        ax.set_ylabel("test accuracy (%)")
        ax.legend()
        written.append(out_dir / "pretrained_vs_scratch.png")
        fig.savefig(written[-1], dpi=120, bbox_inches="tight")
        plt.close(fig)

    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for r in (r for r in rows if r.task == task):
            steps = sorted({s for c in r.curves for s, _ in c})
            if not steps:
                continue
            ys = [mean([a for c in r.curves for s2, a in c if s2 == s]) * 100 for s in steps]
            ax.plot(steps, ys, marker=".", label=r.label)
        ax.set_xlabel("step")
        ax.set_ylabel("validation accuracy (%)")
        ax.set_title(task)
        _legend_below(ax)
    written.append(out_dir / "training_curves.png")
    fig.savefig(written[-1], dpi=120, bbox_inches="tight")
    plt.close(fig)
    return written


def _legend_below(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1, frameon=False)


def _pretrained_pairs(rows: list[Row]) -> dict[str, tuple[Row, Row]]:
    """Configurations that differ only in model.pretrained: label -> (pretrained row, scratch row)."""
    by_rest: dict[str, dict[bool, Row]] = defaultdict(dict)
    for r in rows:
        if "model.pretrained" not in r.config:
            continue
        rest = {k: v for k, v in r.config.items() if k != "model.pretrained"}
        rest_label = ", ".join(f"{_key_label(k)}={_short(v)}" for k, v in rest.items() if k != "task.name")
        by_rest[f"{r.task}: {rest_label}" if rest_label else r.task][bool(r.config["model.pretrained"])] = r
    return {k: (v[True], v[False]) for k, v in by_rest.items() if True in v and False in v}


def write_report(root: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write report.md and the PNG plots for every completed run under `root`.

    Returns:
        The files written.

    Raises:
        PeftxError: `root` holds no completed runs.
    """
    rows, varying = summarize(load_results(root))
    out = Path(out_dir) if out_dir is not None else Path(root)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "report.md"
    md.write_text(f"# Report: {root}\n\n" + markdown_table(rows, varying))
    return [md, *plot(rows, out)]
