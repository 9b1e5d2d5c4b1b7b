"""The report's sections besides the tables: each pretrained configuration against its controls, the
tasks' data, result files that could not be read, runs not reported (and why)."""

from __future__ import annotations

import math
from pathlib import Path

from peftx.runs.record import RunRecord
from peftx.studies.report.plots import arm, control_pairs
from peftx.studies.report.rows import Row, mean, short, shown, welch_interval
from peftx.util.echo import printable


def pretrained_section(rows: list[Row]) -> str:
    """Each pretrained configuration beside each of its controls (from-scratch twin; shuffled,
    self-pretrained, ablated body where the runs hold them): the difference of mean test values with its
    95% Welch interval over seeds, each arm at its own chosen learning rate."""
    pairs = control_pairs(rows)
    if not pairs:
        return ""
    scratch_only = all(arm(c) == "scratch" and p.metric == "accuracy" for p, c in pairs.values())
    title, head = _SCRATCH_HEAD if scratch_only else _CONTROLS_HEAD
    body = [_pair_line(label, pre, control, with_control=not scratch_only) for label, (pre, control) in pairs.items()]
    return "\n".join([title, "", *head, *body]) + "\n"


# (title, lines above the rows) of the section: from-scratch twins alone on accuracy, or any controls
_SCRATCH_HEAD = (
    "## Pretrained − from scratch",
    [
        "Mean test accuracy of the pretrained configuration minus its from-scratch twin's, each at its own "
        "chosen learning rate; 95% Welch interval over seeds.",
        "",
        "| configuration | pretrained % | from scratch % | difference (points) | 95% interval |",
        "|---|---:|---:|---:|---|",
    ],
)
_CONTROLS_HEAD = (
    "## Pretrained − controls",
    [
        "Mean test value of each task's primary metric for the pretrained configuration minus each control's "
        "(from scratch; shuffled weights; self-pretrained on the task's own inputs; the body taken out), each "
        "at its own chosen learning rate; 95% Welch interval over seeds. Where lower is better (an error), a "
        "negative difference favours the pretrained model.",
        "",
        "| configuration | control | metric | pretrained | control | difference | 95% interval |",
        "|---|---|---|---:|---:|---:|---|",
    ],
)


def _pair_line(label: str, pre: Row, control: Row, with_control: bool) -> str:
    diff, lo, hi = welch_interval([pre.scale * a for a in pre.test], [control.scale * a for a in control.test])
    digits = ".1f" if pre.scale == 100 else ".4g"
    interval = "—" if math.isnan(lo) else f"[{lo:+{digits}}, {hi:+{digits}}]"
    cells = [f"{label} ({pre.key} vs {control.key})"]
    if with_control:
        cells += [arm(control), pre.unit]
    cells += [shown(pre, mean(pre.test)), shown(control, mean(control.test)), f"{diff:+{digits}}", interval]
    return "| " + " | ".join(cells) + " |"


def unreadable_section(unreadable: list[str]) -> str:
    """Result files that could not be read at all: listed with why, so that none is silently missing."""
    if not unreadable:
        return ""
    lines = ["## Unreadable result files", "", "| file and why |", "|---|"]
    lines += [f"| {short(printable(u).replace('|', chr(92) + '|'), 200)} |" for u in unreadable]
    return "\n".join(lines) + "\n"


def not_reported_section(runs: list[tuple[Path, RunRecord]], root: Path) -> str:
    """Runs that did not complete (failed, interrupted, diverged, pruned, still running): listed, never
    averaged into a configuration."""
    others = [(p, r) for p, r in runs if not r.completed]
    if not others:
        return ""
    lines = [
        "## Runs not reported",
        "",
        "These did not complete; no number of theirs enters the tables above."
        + (" A sweep's pruner stopped the `pruned` ones early." if any(r.pruned for _, r in others) else ""),
        "",
        "| run | status | steps evaluated | error |",
        "|---|---|---:|---|",
    ]
    for path, r in others:
        where = path.relative_to(root) if path.is_relative_to(root) else path
        why = r.error or (f"pruned at step {r.pruned.step}: {r.pruned.reason}" if r.pruned else "")
        error = why.replace("|", "\\|").splitlines()[0] if why else ""
        cells = [printable(str(where)).replace("|", "\\|"), r.status, str(len(r.history)), short(printable(error), 80)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def chosen_on(rows: list[Row]) -> str:
    metrics = list(dict.fromkeys(r.metric for r in rows))
    if metrics == ["accuracy"]:
        return "Test accuracy at the learning rate chosen on mean validation accuracy (over the seeds every rate ran)"
    named = ", ".join(
        f"{m} ({'higher' if r.higher_is_better else 'lower'} is better)"
        for m, r in ((m, next(r for r in rows if r.metric == m)) for m in metrics)
    )
    return (
        f"Each task's primary metric — {named} — on test, at the learning rate chosen on its mean validation "
        "value (over the seeds every rate ran)"
    )
