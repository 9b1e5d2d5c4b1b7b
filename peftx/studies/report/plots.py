"""The report's PNG plots: each task's primary metric (accuracy, RMSE, ...) on test against trainable
parameters, pretrained against from scratch, and training curves with the spread over seeds. The file
names say accuracy, as they did before other metrics existed."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from peftx.studies.report.rows import Row, key_label, mean, sem, short


def _count_label(x: float, _pos: object = None) -> str:
    """Tick text for parameter counts: 1k, 30k, 1.2M."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def _baselines(ax, baselines: dict[str, float], scale: float = 100.0) -> None:
    for name, value in (baselines or {}).items():
        ax.axhline(scale * value, ls="--", lw=1, color="grey")
        ax.annotate(
            name.replace("_", " "),
            (0.01, scale * value),
            xycoords=("axes fraction", "data"),
            xytext=(0, 2),
            textcoords="offset points",
            fontsize=7,
            color="grey",
        )


PLOT_FILES = ("accuracy_vs_trainable.png", "pretrained_vs_scratch.png", "rate_curves.png", "training_curves.png")


def plot(rows: list[Row], out_dir: Path) -> list[Path]:
    """PNG plots: accuracy vs trainable parameters per task, pretrained vs scratch, the rate curves of
    tuned configurations, training curves (validation accuracy with its spread over seeds and the
    selected steps; training loss). Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {r.key: f"C{i % 10}" for i, r in enumerate(rows)}
    drawers = (_accuracy_vs_trainable, _pretrained_vs_scratch, _rate_curves, _training_curves)
    figures = {name: draw(plt, rows, colors) for name, draw in zip(PLOT_FILES, drawers)}
    written = []
    for name, fig in figures.items():
        if fig is None:
            continue
        written.append(out_dir / name)
        fig.savefig(written[-1], dpi=120, bbox_inches="tight")
        plt.close(fig)
    return written


def _tasks(rows: list[Row]) -> list[str]:
    return list(dict.fromkeys(r.task for r in rows))


def _task_baselines(ax, rows: list[Row], task: str) -> None:
    first = next(r for r in rows if r.task == task)
    _baselines(ax, first.baselines, first.scale)


def _unit(rows: list[Row], task: str) -> str:
    return next(r for r in rows if r.task == task).unit


def _accuracy_vs_trainable(plt, rows: list[Row], colors: dict):
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    tasks = _tasks(rows)
    fig, axes = plt.subplots(1, len(tasks), figsize=(7.5 * len(tasks), 4.5), squeeze=False, layout="constrained")
    for ax, task in zip(axes[0], tasks):
        for r in (r for r in rows if r.task == task):
            err = sem(r.test)
            # pretrained and from-scratch twins have the same count: set them apart by a few percent
            jitter = {True: 0.94, False: 1.06}.get(r.pretrained, 1.0)
            ax.errorbar(
                r.trainable * jitter,
                r.scale * mean(r.test),
                yerr=None if math.isnan(err) else r.scale * err,
                fmt="o" if r.pretrained is not False else "s",
                mfc=colors[r.key] if r.pretrained is not False else "white",
                color=colors[r.key],
                capsize=3,
                label=r.short_label,
            )
        _task_baselines(ax, rows, task)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, numticks=8))
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels are what collide
        ax.xaxis.set_major_formatter(FuncFormatter(_count_label))
        lo, hi = ax.get_xlim()
        if hi / lo < 10:  # less than a decade: give the axis room for a labelled tick
            ax.set_xlim(lo / 3, hi * 3)
        ax.set_xlabel("trainable parameters (log)")
        ax.set_ylabel(f"test {_unit(rows, task)}")
        ax.set_title(task)
        _legend_right(ax)
    return fig


def _pretrained_vs_scratch(plt, rows: list[Row], colors: dict):
    pairs = pretrained_pairs(rows)
    if not pairs:
        return None
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(pairs)), 4.5))
    xs = range(len(pairs))
    for offset, which, color in ((-0.2, 0, "tab:blue"), (0.2, 1, "tab:orange")):
        vals = [p[which].scale * mean(p[which].test) for p in pairs.values()]
        errs = [0 if math.isnan(sem(p[which].test)) else p[which].scale * sem(p[which].test) for p in pairs.values()]
        ax.bar(
            [x + offset for x in xs],
            vals,
            0.4,
            yerr=errs,
            capsize=3,
            color=color,
            label="pretrained" if which == 0 else "from scratch",
        )
    ax.set_xticks(list(xs), [short(k, 24) for k in pairs], rotation=20, ha="right", fontsize=7)
    units = sorted({p[0].unit for p in pairs.values()})
    ax.set_ylabel(f"test {' / '.join(units)}")
    ax.legend()
    return fig


def _rate_curves(plt, rows: list[Row], colors: dict):
    """Validation accuracy against the learning rate, the chosen rate starred (tuned rows only)."""
    tuned = [r for r in rows if len(r.lrs_tried) > 1]
    if not tuned:
        return None
    tuned_tasks = _tasks(tuned)
    fig, axes = plt.subplots(
        1, len(tuned_tasks), figsize=(7.5 * len(tuned_tasks), 4.5), squeeze=False, layout="constrained"
    )
    for ax, task in zip(axes[0], tuned_tasks):
        for r in (r for r in tuned if r.task == task):
            lrs = list(r.lrs_tried)
            style = "--" if r.pretrained is False else "-"
            ax.plot(
                lrs,
                [r.scale * r.lrs_tried[x] for x in lrs],
                style,
                marker="o",
                color=colors[r.key],
                label=r.short_label,
            )
            ax.scatter([r.lr], [r.scale * r.lrs_tried[r.lr]], marker="*", s=140, color=colors[r.key], zorder=3)
        _task_baselines(ax, rows, task)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log)")
        ax.set_ylabel(f"validation {_unit(rows, task)}")
        ax.set_title(f"{task}  (* chosen rate; compared on the seeds every rate ran)", fontsize=9)
        _legend_right(ax)
    return fig


def _training_curves(plt, rows: list[Row], colors: dict):
    tasks = _tasks(rows)
    fig, axes = plt.subplots(
        2, len(tasks), figsize=(7.5 * len(tasks), 7), squeeze=False, sharex="col", layout="constrained"
    )
    for col, task in enumerate(tasks):
        acc_ax, loss_ax = axes[0][col], axes[1][col]
        for r in (r for r in rows if r.task == task):
            style = "--" if r.pretrained is False else "-"  # from-scratch twins dashed
            _curve(acc_ax, [[(s, r.scale * a) for s, a in c] for c in r.curves], style, colors[r.key], r.short_label)
            sel = [(s, r.scale * a) for s, a in r.selected]
            if r.curves and any(r.curves):
                acc_ax.scatter(
                    [s for s, _ in sel], [a for _, a in sel], marker="*", s=90, color=colors[r.key], zorder=3
                )
            _curve(loss_ax, r.train_curves, style, colors[r.key], None)
        _task_baselines(acc_ax, rows, task)
        acc_ax.set_ylabel(f"validation {_unit(rows, task)}")
        acc_ax.set_title(f"{task}  (* selected step; band: seed range)", fontsize=9)
        loss_ax.set_xlabel("step")
        loss_ax.set_ylabel("training loss")
        _legend_right(acc_ax)
    return fig


def _curve(ax, curves: list[list[tuple[int, float]]], style: str, color: str, label: str | None) -> None:
    """The mean over seeds of (step, value) curves, with the range over seeds as a band."""
    steps = sorted({s for c in curves for s, _ in c})
    if not steps:
        return
    per_step = [[v for c in curves for s2, v in c if s2 == s] for s in steps]
    marker = "." if label is not None else None
    ax.plot(steps, [mean(v) for v in per_step], style, marker=marker, color=color, label=label)
    if len(curves) > 1:  # the spread over seeds: lowest to highest
        ax.fill_between(steps, [min(v) for v in per_step], [max(v) for v in per_step], color=color, alpha=0.15)


def _legend_right(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)


ARM_KEYS = ("model.pretrained", "model.init", "model.body")  # what tells the claim's arms apart


def arm(row: Row) -> str:
    """The row's arm of the claim: `pretrained`, `scratch`, `shuffled`, `self_pretrained`, or a body
    ablation (`body none`); records made before `model.init` existed say it by `model.pretrained`."""
    init = row.config.get("model.init")
    if init is None:
        pretrained = row.config.get("model.pretrained")
        init = None if pretrained is None else ("pretrained" if pretrained else "scratch")
    body = row.config.get("model.body")
    if body not in (None, "full"):
        return f"body {body}"
    return init


def control_pairs(rows: list[Row]) -> dict[str, tuple[Row, Row]]:
    """Each control beside the pretrained configuration that differs from it only in the arm (init or
    body): label -> (pretrained row, control row). A from-scratch twin's label is the configuration's
    alone (as before other controls existed); any other control's label names it."""
    by_rest: dict[str, dict[str, Row]] = defaultdict(dict)
    for r in rows:
        if arm(r) is None:
            continue
        rest = {k: v for k, v in r.config.items() if k not in ARM_KEYS}
        rest_label = ", ".join(f"{key_label(k)}={short(v)}" for k, v in rest.items() if k != "task.name")
        by_rest[f"{r.task}: {rest_label}" if rest_label else r.task][arm(r)] = r
    pairs = {}
    for label, arms in by_rest.items():
        if "pretrained" not in arms:
            continue
        for name, control in arms.items():
            if name != "pretrained":
                pairs[label if name == "scratch" else f"{label} vs {name}"] = (arms["pretrained"], control)
    return pairs


def pretrained_pairs(rows: list[Row]) -> dict[str, tuple[Row, Row]]:
    """Configurations that differ only in being pretrained or from scratch: label -> (pretrained row,
    scratch row)."""
    return {k: v for k, v in control_pairs(rows).items() if arm(v[1]) == "scratch"}
