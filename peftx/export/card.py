"""What an export says about itself: `Export` (what `export_run` wrote) and the model card, README.md,
with the loading snippet, what the model outputs and the run's results."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from peftx import __version__
from peftx.runs.record import RunRecord
from peftx.spec.objective import format_metric

BODY_DIR = "body"


@dataclass
class Export:
    """What `export_run` wrote.

    Attributes:
        out_dir: the export directory.
        base: what the body loads from: a hub id, a local path, or None (the body is in out_dir).
        adapter: whether out_dir holds a peft adapter.
        files: the files written, by name.
    """

    out_dir: Path
    base: str | None
    adapter: bool
    files: list[str] = field(default_factory=list)


def load_lines(info: Export, task: dict) -> list[str]:
    """The Python that loads this export with transformers (+ peft) and the bundled snippet."""
    where = "EXPORT_DIR"
    source = f'"{info.base}"' if info.base else f'f"{{{where}}}/{BODY_DIR}"'
    body = f"AutoModel.from_pretrained({source})"
    lines = ["from transformers import AutoModel"]
    if info.adapter:
        lines += ["from peft import PeftModel"]
    lines += [
        "from task_model import TaskModel  # task_model.py of this directory",
        "",
        f'{where} = "."  # this directory',
        f"body = PeftModel.from_pretrained({body}, {where})" if info.adapter else f"body = {body}",
        f"model = TaskModel(body, {where}).eval()",
    ]
    symbols = task["input"].get("symbols")
    if symbols:
        lines.append(f"model.predict([{symbols[:3]!r}])  # sequences of symbols -> label names")
    else:
        lines.append("model.predict([values])  # (seq, dim) arrays of stored values -> label names")
    return lines


def _what_it_outputs(task: dict) -> str:
    objective = task.get("objective", {"kind": "classification"})
    n = len(task["labels"])
    return {
        "classification": f"{n} classes",
        "multilabel": f"any of {n} labels",
        "regression": f"{n} target value(s)",
        "forecasting": f"{objective.get('horizon')} steps of {n} series",
    }[objective["kind"]]


def _results_table(record: RunRecord) -> list[str]:
    """The model card's results: every test metric of the objective, the selected validation value and
    the task's baselines."""
    m, lines = record.metrics, []
    if m is not None:
        test = m.test or {"accuracy": m.test_accuracy}
        lines += [
            "| metric | value |",
            "|---|---:|",
            *(f"| test {k} | {format_metric(k, v)} |" for k, v in test.items()),
            f"| test loss | {m.test_loss:.4f} |",
            f"| validation {m.primary} (selected step {m.selected_step}, {m.selection}) | "
            f"{format_metric(m.primary, m.value('val'))} |",
            *(
                f"| baseline: {k} (test {m.primary}) | {format_metric(m.primary, v)} |"
                for k, v in record.baselines.items()
            ),
            "",
        ]
    return lines


def model_card(record: RunRecord, info: Export, task: dict, command: str) -> str:
    """README.md of an export: what it is, how to load it, how it was trained and how it scored."""
    r = record.recipe
    b = record.budget
    method = r.get("method", {})
    model = r.get("model", {})
    lines = [
        "---",
        "library_name: peft" if info.adapter else "library_name: transformers",
        *([f"base_model: {info.base}"] if info.base and not Path(info.base).is_absolute() else []),
        "tags: [peftx]",
        "---",
        "",
        f"# {record.name}",
        "",
        f"A {task['family']} model fine-tuned with peftx {__version__} ({method.get('name')}) on the task "
        f"`{r.get('task', {}).get('name')}`: {_what_it_outputs(task)}.",
        "",
        "## Load it",
        "",
        "```python",
        *load_lines(info, task),
        "```",
        "",
    ]
    if task.get("export", {}).get("needs_peftx"):
        lines += [f"Note: {task['export']['needs_peftx']}; `TaskModel` refuses it, `peftx predict` runs it.", ""]
    lines += [
        "Inputs are framed as task.json says (start/end tokens, index space); `TaskModel` does it.",
        "",
        "## Training",
        "",
        f"- model: `{model.get('source')}` ({'pretrained' if model.get('pretrained') else 'from scratch'})",
        f"- method: `{json.dumps(method, sort_keys=True)}`",
        f"- train: steps {record.timing.steps if record.timing else '?'}, lr {r.get('train', {}).get('lr')}, "
        f"batch {r.get('train', {}).get('batch_size')}, seed {record.seed}, precision {record.precision}",
    ]
    if b is not None:
        lines.append(f"- trainable parameters: {b.trainable:,} of {b.total:,} ({b.trainable_pct:.3g}%)")
    lines += ["", "## Results", ""]
    lines += _results_table(record)
    lines += [
        "## Provenance",
        "",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in record.versions.items()),
        f"- made by: `{command}`",
        "- the resolved recipe and the run record: recipe.yaml, result.json",
        "",
    ]
    return "\n".join(lines)
