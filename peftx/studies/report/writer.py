"""Reports built from result.json files alone: a markdown table and PNG plots.

Runs are grouped into configurations: everything in the resolved recipe except the seed, the learning
rate and the run's name/output. Within a configuration the learning rate is chosen on the mean validation
value of the task's primary metric (accuracy; RMSE, MASE ... where lower is better) over the seeds every
rate was run with (`peftx.studies.selection.choose`, the sweep's `tune:` rule); the table reports that
metric on test at that learning rate as mean ± standard error over seeds (sample standard deviation /
sqrt(n)).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from peftx.errors import PeftxError
from peftx.recipe import result_neutral_keys
from peftx.runs.record import RESULT, RunRecord
from peftx.studies.report.plots import PLOT_FILES, plot
from peftx.studies.report.rows import Row, mean, sem, short, shown, stopped_label
from peftx.studies.report.sections import chosen_on, not_reported_section, pretrained_section, unreadable_section
from peftx.studies.selection import choose
from peftx.util.echo import printable

# Recipe keys that never define a configuration: the schema's result-neutral fields (threads, names,
# where output goes) and what a configuration is reported over (seeds; the learning rate is chosen).
IGNORED = ("seed", "train.lr", *result_neutral_keys())


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list | dict) else v
    return out


def load_runs(root: str | Path, unreadable: list[str] | None = None) -> list[tuple[Path, RunRecord]]:
    """Every readable run record under `root`, whatever its status, with its directory.

    Args:
        unreadable: if given, receives one line per result file that could not be read (why).

    Raises:
        PeftxError: `root` does not exist.
    """
    root = Path(root)
    if not root.exists():
        raise PeftxError(f"{root}: no such directory")
    runs = []
    for path in sorted(root.rglob(RESULT)):
        try:
            runs.append((path.parent, RunRecord.read(path.parent)))
        except PeftxError as e:
            if unreadable is not None:
                unreadable.append(str(e))
    return runs


def load_results(root: str | Path) -> list[RunRecord]:
    """Every completed run record under `root` (unreadable result files are skipped).

    Raises:
        PeftxError: no completed run under `root`.
    """
    results = [record for _, record in load_runs(root) if record.completed]
    if not results:
        raise PeftxError(f"{root}: no completed runs (no result.json with status 'completed')")
    return results


def task_identity(record: RunRecord) -> str:
    """What makes two runs' tasks the same task: its name and its whole recipe section (data source
    and sizes included: LRA files and the generated preset are different tasks)."""
    return json.dumps(record.recipe.get("task", {}), sort_keys=True, default=str)


def task_labels(records: list[RunRecord]) -> dict[str, str]:
    """Task identity -> a short label: the task's name, with the fields that tell apart identities
    of the same name (e.g. `listops (data_dir=lra)`)."""
    sections = {task_identity(r): r.recipe.get("task", {}) for r in records}
    labels = {}
    for ident, section in sections.items():
        name = str(section.get("name"))
        same = [s for s in sections.values() if s.get("name") == section.get("name")]
        keys = sorted({k for s in same for k in s if k != "name"})
        # here an unset field (None: generated data) does differ from a set one (data files)
        differing = [
            k for k in keys if len({json.dumps(s.get(k), default=str) for s in same}) > 1 and section.get(k) is not None
        ]
        detail = ", ".join(f"{k}={short(Path(str(section[k])).name or section[k], 20)}" for k in differing)
        labels[ident] = f"{name} ({detail})" if detail else name
    return labels


def _one_per_seed(records: list[RunRecord]) -> tuple[list[RunRecord], list[tuple[int, list[str]]]]:
    """The first run (by name) of each seed, and the seeds that more than one run has: a repeated seed
    is the same experiment again, not another sample, so it is reported and not averaged."""
    by_seed: dict[int, list[RunRecord]] = defaultdict(list)
    for r in sorted(records, key=lambda r: (r.seed, r.name)):
        by_seed[r.seed].append(r)
    kept = [rs[0] for _, rs in sorted(by_seed.items())]
    return kept, [(seed, [r.name for r in rs]) for seed, rs in sorted(by_seed.items()) if len(rs) > 1]


def _mark_sections(flats: list[dict[str, object]]) -> None:
    """A section some recipes set and others leave null (`input.align`) differs between them, though
    neither side's fields are in the other: give each flat recipe the section's key as `on` or `off`."""
    sections = {k.rsplit(".", 1)[0] for f in flats for k in f if "." in k}
    for key in {k for f in flats for k, v in f.items() if v is None and k in sections}:
        for f in flats:
            if key in f and f[key] is None:
                f[key] = "off"
            elif any(k.startswith(key + ".") for k in f):
                f[key] = "on"


def summarize(results: list[RunRecord]) -> tuple[list[Row], list[str]]:
    """Rows (one per configuration) and the recipe keys that distinguish them."""
    flats = [flatten(r.recipe) for r in results]
    _mark_sections(flats)
    labels = task_labels(results)
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
        distinct = {lr: _one_per_seed(rs) for lr, rs in by_lr.items()}
        metric, higher = _primary(members[0][0])
        tried = {lr: [(r.seed, r.metrics.value("val", metric)) for r in kept] for lr, (kept, _) in distinct.items()}
        best_lr, lrs = choose(tried, higher)
        chosen, duplicates = distinct[best_lr]
        flat = members[0][1]
        rows.append(
            Row(
                config={k: flat.get(k) for k in varying},
                task=labels[task_identity(chosen[0])],
                lr=best_lr,
                seeds=[r.seed for r in chosen],
                test=[r.metrics.value("test", metric) for r in chosen],
                val=[r.metrics.value("val", metric) for r in chosen],
                trainable=chosen[0].budget.trainable,
                total=chosen[0].budget.total,
                baselines=chosen[0].baselines,
                lrs_tried=dict(sorted(lrs.items())),
                curves=[
                    [(h.step, h.metric(metric)) for h in r.history if h.metric(metric) is not None] for r in chosen
                ],
                train_curves=[[(t.step, t.loss) for t in r.train_log if t.loss is not None] for r in chosen],
                selected=[(r.metrics.selected_step, r.metrics.value("val", metric)) for r in chosen],
                duplicates=duplicates,
                pretrained=flat.get("model.pretrained"),
                stopped=[(_timing(r, "stopped"), _timing(r, "steps"), _timing(r, "cap")) for r in chosen],
                metric=metric,
                higher_is_better=higher,
            )
        )
    for task in {r.task for r in rows}:  # each task's rows show only what varies among them
        same_task = [r for r in rows if r.task == task]
        keep = [k for k in varying if not k.startswith("task.") and _differs([r.config.get(k) for r in same_task])]
        for r in same_task:
            r.config = {k: r.config.get(k) for k in keep}
    rows.sort(key=lambda r: (r.task, [str(v) for v in r.config.values()]))
    for i, r in enumerate(rows, start=1):
        r.key = f"c{i}"
    return rows, varying


def _primary(record: RunRecord) -> tuple[str, bool]:
    """The run's primary metric and whether higher is better (records before other metrics: accuracy)."""
    m = record.metrics
    return (m.primary, m.higher_is_better) if m is not None else ("accuracy", True)


def _at_edge(row: Row) -> bool:
    """The chosen rate is the smallest or largest of three or more tried: the best may lie outside."""
    return len(row.lrs_tried) >= 3 and row.lr in (min(row.lrs_tried), max(row.lrs_tried))


def _timing(record: RunRecord, key: str):
    return getattr(record.timing, key, None) if record.timing is not None else None


def _differs(values: list) -> bool:
    """Whether the values that are set (not None) take more than one value: a field that only some
    configurations have (LoRA's `r`) is not by itself a difference between them."""
    return len({json.dumps(v, sort_keys=True, default=str) for v in values if v is not None}) > 1


def _cell(value: object) -> str:
    """A value from a recipe as a table cell: control characters escaped, `|` kept from ending the cell."""
    return printable(str(value)).replace("|", "\\|")


def _head(row: Row, what: str) -> str:
    """A column heading: `test acc %` for accuracy as before other metrics existed, else `test rmse ↓`."""
    if row.metric == "accuracy":
        return f"{what} acc %"
    return f"{what} {row.metric}" + (" %" if row.scale == 100 else "") + (" ↑" if row.higher_is_better else " ↓")


def markdown_table(rows: list[Row], varying: list[str]) -> str:
    """The report's tables: one per task identity (headed by its label when there are several), one
    line per configuration, that task's baselines underneath."""
    tasks = list(dict.fromkeys(r.task for r in rows))
    parts = []
    for task in tasks:
        same_task = [r for r in rows if r.task == task]
        table = _task_table(same_task, [k for k in varying if k in same_task[0].config])
        parts.append(f"### {task}\n\n{table}" if len(tasks) > 1 else table)
    return "\n".join(parts)


def _task_table(rows: list[Row], cols: list[str]) -> str:
    by_lr = any(len(r.lrs_tried) > 1 for r in rows)  # columns shown only where some row has them
    stopped = any(stopped_label(r.stopped) != "—" for r in rows)
    first = rows[0]  # one task identity: one objective
    head = [
        "task",
        *cols,
        "lr (chosen)",
        *([f"{_head(first, 'val')} by lr"] if by_lr else []),
        "seeds",
        f"{_head(first, 'test')} (mean ± SEM)",
        _head(first, "val"),
        "trainable",
        "trainable %",
        *(["stopped"] if stopped else []),
        "plot",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r.task,
            *["" if r.config.get(k) is None else _cell(r.config.get(k)) for k in cols],
            f"{r.lr:g}" + (" (edge)" if _at_edge(r) else ""),
            *([", ".join(f"{lr:g}: {shown(r, v)}" for lr, v in r.lrs_tried.items())] if by_lr else []),
            str(len(r.seeds)) + (" (+ duplicates)" if r.duplicates else ""),
            f"{shown(r, mean(r.test))} ± {shown(r, sem(r.test))}",
            shown(r, mean(r.val)),
            f"{r.trainable:,}",
            f"{100 * r.trainable / max(r.total, 1):.2f}",
            *([stopped_label(r.stopped)] if stopped else []),
            r.key,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    baselines = rows[0].baselines  # one task identity: one data set, one set of baselines
    if baselines:
        unit = "%" if first.scale == 100 else ""
        lines.append(
            f"Baselines on {rows[0].task} (test {first.metric}): "
            + ", ".join(f"{k.replace('_', ' ')} {shown(first, v)}{unit}" for k, v in baselines.items())
        )
    dups = [(r, seed, names) for r in rows for seed, names in r.duplicates]
    if dups:
        lines += ["", "Repeated seeds (the same seed run again: counted once, the first run by name):", ""]
        lines += [f"- {r.key} seed {seed}: {', '.join(names)}" for r, seed, names in dups]
    return "\n".join(lines) + "\n"


REPORT_FILES = ("report.md", *PLOT_FILES)


def is_report(md: Path) -> bool:
    """Whether `md` is a report.md that `peftx report` wrote (its heading and its "Made by" line)."""
    try:
        head = md.read_text(encoding="utf-8", errors="replace")[:4096]
    except OSError:
        return False
    return head.startswith("# Report: ") and "\nMade by `" in head and " result file(s): " in head


def check_report_dir(out: Path) -> None:
    """Refuse to write where a report's files would replace files that are not a previous report's: a
    report.md of someone else's, or plot files with no peftx report beside them."""
    md = out / "report.md"
    if md.exists() and not is_report(md):
        raise PeftxError(f"{md}: exists and is not a peftx report; choose another --out")
    taken = [name for name in REPORT_FILES if (out / name).exists()]
    if taken and not md.exists():
        raise PeftxError(f"{out / taken[0]}: exists beside no peftx report; choose another --out")


def tasks_section(records: list[RunRecord]) -> str:
    """Each task identity: its label, its recipe section and what the task said it loaded."""
    labels = task_labels(records)
    lines = ["## Tasks", "", "| task | recipe section | data |", "|---|---|---|"]
    for ident, label in labels.items():
        notes = next((r.data_notes for r in records if task_identity(r) == ident), [])
        data = "; ".join(n for n in notes if not n.startswith("truncated")) or "—"
        lines.append(f"| {label} | `{ident}` | {data} |")
    return "\n".join(lines) + "\n"


def write_report(
    root: str | Path, out_dir: str | Path | None = None, command: str | None = None, unreadable: list[str] | None = None
) -> list[Path]:
    """Write report.md and the PNG plots for the runs under `root`: completed runs in the tables and
    plots, the others listed apart.

    Args:
        command: the command to name in report.md (default: the `peftx report` that does this).
        unreadable: if given, receives one line per result file that could not be read (also listed in
            report.md).

    Returns:
        The files written.

    Raises:
        PeftxError: `root` holds no completed runs.
    """
    root = Path(root)
    unreadable = unreadable if unreadable is not None else []
    runs = load_runs(root, unreadable)
    completed = [r for _, r in runs if r.completed]
    if not completed:
        raise PeftxError(f"{root}: no completed runs (no result.json with status 'completed')")
    rows, varying = summarize(completed)
    out = Path(out_dir) if out_dir is not None else root
    check_report_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    command = command or f"peftx report {root}" + (f" --out {out_dir}" if out_dir is not None else "")
    md = out / "report.md"
    body = [
        f"# Report: {root}",
        "",
        f"Made by `{command}` from {len(runs) + len(unreadable)} result file(s): {len(completed)} completed run(s) in "
        f"{len(rows)} configuration(s). {chosen_on(rows)}; mean ± standard error over distinct seeds. `stopped`: "
        "flat (train.early_stop ended the run) or cap (it ran every step it was given); `(edge)`: the chosen "
        "rate is the smallest or largest of the three or more tried, so a better one may lie beyond it.",
        "",
        markdown_table(rows, varying),
        pretrained_section(rows),
        tasks_section(completed),
        not_reported_section(runs, root),
        *([unreadable_section(unreadable)] if unreadable else []),
    ]
    md.write_text("\n".join(body))
    return [md, *plot(rows, out)]
