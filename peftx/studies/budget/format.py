"""Budget tables as text (terminal, markdown, csv, json) and as recipes (`--emit-recipes`), and the
one way peftx writes a parameter count ("1.50M") or a byte size ("1.62G") for people.

Memory columns are estimates from the counts (`peftx.model.budget.MEMORY_SCHEMES`): the terminal and
markdown tables show each scheme's total; csv and json give weights, gradients and optimizer state
apart.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import asdict
from pathlib import Path

import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from peftx.errors import PeftxError
from peftx.model.budget import MEMORY_SCHEMES, fmt_count, memory
from peftx.studies.budget.table import BudgetRow
from peftx.studies.budget.target import Target

FORMATS = ("table", "markdown", "csv", "json")
GROUPS = ("input", "body", "adapter", "head")


MEMORY_NOTE = (
    "Memory: weights + gradients + AdamW state (activations excluded), in GiB (G) or MiB (M): fp32; bf16 "
    "(everything in bf16); int8 w (bf16 with the body's frozen linear weights in 8 bits); adam8 (fp32 with "
    "8-bit AdamW state)."
)
MEMORY_HEADERS = {"fp32": "fp32", "bf16": "bf16", "int8_weights": "int8 w", "adamw_8bit": "adam8"}


def fmt_mem(n: float) -> str:
    """Bytes as GiB ("1.62G") or MiB ("247M")."""
    return f"{n / (1 << 30):.2f}G" if n >= 1 << 30 else f"{n / (1 << 20):.0f}M"


def check_format(fmt: str) -> None:
    """Raise unless `fmt` is one of FORMATS.

    Raises:
        PeftxError: an unknown format, naming the valid ones.
    """
    if fmt not in FORMATS:
        raise PeftxError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")


STATUS_TEXT = {"max": "yes; largest", "none": "no; smallest", "fixed": "yes; fixed", "over": "no; fixed"}


def _vs(pct: float, target: Target | None) -> str:
    """`pct` with enough digits to show which side of a percentage target it is on (1.9995 within 2%
    shows as "1.9995", not "2"; 2.0004 over it as "2.0004")."""
    for digits in range(3, 9):
        text = f"{pct:.{digits}g}"
        if target is None or not target.percent or (float(text) == target.value) == (pct == target.value):
            return text
    return repr(pct)


def _versus_target(row: BudgetRow, target: Target) -> str:
    if row.status == "match":
        n = row.next
        over = f"{_vs(n['trainable_pct'], target)}%" if target.percent else f"{n['trainable']:,}"
        return f"yes; {n['setting']}: {over}"
    return STATUS_TEXT.get(row.status, "")


def human_table(rows: list[BudgetRow], target: Target | None) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the terminal and markdown tables."""
    headers = ["model", "method", "setting", "trainable", "%"]
    if target is not None:
        headers.append(f"within {target}? next step")
    headers += ["total", *GROUPS, *MEMORY_HEADERS.values()]
    cells = []
    for r in rows:
        b = r.budget
        line = [r.model, r.method, r.setting, fmt_count(b.trainable), _vs(b.trainable_pct, target)]
        line += [_versus_target(r, target)] if target else []
        line += [fmt_count(b.total)] + [fmt_count(b.trainable_in(g)) if b.trainable_in(g) else "-" for g in GROUPS]
        line += [fmt_mem(memory(b, MEMORY_SCHEMES[s])["total"]) for s in MEMORY_HEADERS]
        cells.append(line)
    return headers, cells


def _title(target: Target | None, task: str) -> str:
    what = f"Trainable parameters by group ({task} inputs and classes)"
    return f"{what}; each method's largest setting within {target} trainable" if target else what


def render_rich(rows: list[BudgetRow], target: Target | None, task: str, console: Console) -> str:
    """The table as `console` would print it (its width; styles where it is a terminal)."""
    headers, cells = human_table(rows, target)
    table = Table(title=_title(target, task), caption=MEMORY_NOTE, caption_justify="left")
    for h in headers:
        table.add_column(escape(h), justify="left" if h in ("model", "method", "setting") else "right")
    for line in cells:
        table.add_row(*(escape(c) for c in line))
    with console.capture() as captured:
        console.print(table)
    return captured.get()


def render_markdown(rows: list[BudgetRow], target: Target | None, task: str) -> str:
    headers, cells = human_table(rows, target)
    right = {i for i, h in enumerate(headers) if h not in ("model", "method", "setting")}
    out = [
        f"{_title(target, task)}:",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if i in right else "---" for i in range(len(headers))) + "|",
    ]
    out += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in cells]
    return "\n".join([*out, "", MEMORY_NOTE]) + "\n"


def flat_row(row: BudgetRow) -> dict:
    """One row as flat fields (csv columns; byte counts and parameter counts as integers)."""
    b = row.budget
    out = {
        "model": row.model,
        "family": row.family,
        "method": row.method,
        "setting": row.setting,
        "status": row.status,
        "next_setting": (row.next or {}).get("setting", ""),
        "next_trainable": (row.next or {}).get("trainable", ""),
        "next_trainable_pct": (row.next or {}).get("trainable_pct", ""),
        "total": b.total,
        "trainable": b.trainable,
        "trainable_pct": b.trainable_pct,
        **{f"trainable_{g}": b.trainable_in(g) for g in GROUPS},
        "quantizable": b.quantizable,
    }
    for name, scheme in MEMORY_SCHEMES.items():
        out |= {f"mem_{name}_{k}": v for k, v in memory(b, scheme).items()}
    return out


def render_csv(rows: list[BudgetRow]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(flat_row(rows[0])), lineterminator="\n")
    writer.writeheader()
    writer.writerows(flat_row(r) for r in rows)
    return buf.getvalue()


def render_json(rows: list[BudgetRow], target: Target | None, task: str) -> str:
    data = {
        "task": task,
        "target": None if target is None else {"value": target.value, "percent": target.percent},
        "memory_schemes": {name: asdict(s) for name, s in MEMORY_SCHEMES.items()},
        "rows": [
            {k: v for k, v in r.to_dict().items() if k != "recipe"}
            | {"memory": {name: memory(r.budget, s) for name, s in MEMORY_SCHEMES.items()}}
            for r in rows
        ],
    }
    return json.dumps(data, indent=2) + "\n"


def render(rows: list[BudgetRow], fmt: str, target: Target | None, task: str, console: Console | None = None) -> str:
    """Text of the table in `fmt`.

    Args:
        rows: the table's rows.
        fmt: one of FORMATS.
        target: the target the rows were matched to, if any.
        task: the task named in the titles.
        console: the console the "table" format is laid out for (default: 200 columns, no styles).

    Raises:
        PeftxError: an unknown format.
    """
    check_format(fmt)
    if fmt == "table":
        return render_rich(rows, target, task, console or Console(file=io.StringIO(), width=200))
    if fmt == "markdown":
        return render_markdown(rows, target, task)
    if fmt == "csv":
        return render_csv(rows)
    return render_json(rows, target, task)


# ----------------------------------------------------------------------------------------------------
# --emit-recipes


def _slug(source: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", source.rstrip("/").split("/")[-1]) or "model"


def _needs_hub(model: dict) -> bool:
    source = str(model.get("source", "offline"))
    local = source == "offline" or source.startswith((".", "/", "~")) or Path(source).expanduser().is_dir()
    return model.get("pretrained", True) and not local


def recipe_text(row: BudgetRow, run_path: str, command: str, target: Target | None) -> str:
    """A row's recipe as YAML, opening with the command that runs it and the budget it gives."""
    raw = row.recipe
    order = ["model", "task", "input", "method", "train"]
    body = {k: raw[k] for k in order if k in raw} | {k: v for k, v in raw.items() if k not in order}
    b = row.budget
    lines = [
        f"# Run: peftx run {run_path}",
        f"# Written by: {command}",
        f"# {' '.join(filter(None, (row.method, row.setting)))}: {b.trainable:,} of {b.total:,} parameters "
        f"train ({b.trainable_pct:.3f}%)",
    ]
    if row.next:
        lines.append(f"# ({row.next['setting']} would train {row.next['trainable_pct']:.3f}%, over {target})")
    if _needs_hub(raw["model"]):
        lines += [
            f"# {raw['model']['source']}'s pretrained weights come from the Hugging Face hub (network or its",
            "# local cache); without them, run the from-scratch twin: --set model.pretrained=false",
        ]

    class Dumper(yaml.SafeDumper):  # block style, but lists of plain values on one line: [attention, ...]
        pass

    def short_lists(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
        flow = all(not isinstance(x, list | dict) for x in data)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)

    Dumper.add_representer(list, short_lists)
    text = yaml.dump(body, Dumper=Dumper, sort_keys=False)
    if row.knob is not None and target is not None:
        note = f"  # largest within {target} (peftx budget --target)"
        text = re.sub(rf"(?m)^(method:\n(?:  .*\n)*?  {re.escape(row.knob)}: .*)$", lambda m: m.group(1) + note, text)
    return "\n".join(lines) + "\n" + text


def emit_recipes(rows: list[BudgetRow], out_dir: Path, command: str, target: Target | None) -> list[Path]:
    """Write a recipe for every row within the target (every row without one) into `out_dir`.

    Files are named `<task>_<model>_<method>.yaml` (the same method twice: `..._<method>_<setting>.yaml`);
    each opens with `# Run: peftx run <out_dir>/<file>`.

    Returns:
        The paths written.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for row in rows:
        if not row.fits:
            continue
        name = f"{row.recipe['task']['name']}_{_slug(row.model)}_{row.method}"
        if out_dir / f"{name}.yaml" in written:  # the same method twice, with other settings
            name += "_" + _slug(row.setting.replace("=", "").replace(", ", "_"))
        name += ".yaml"
        path = out_dir / name
        path.write_text(recipe_text(row, (out_dir / name).as_posix(), command, target))
        written.append(path)
    return written
