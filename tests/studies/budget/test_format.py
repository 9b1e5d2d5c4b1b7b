"""Budget tables as text (csv, json, markdown, terminal) and the count and size formatters."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from rich.console import Console

from peftx.errors import PeftxError
from peftx.studies.budget import BudgetRow, Target, fmt_count, fmt_mem, render
from peftx.studies.budget.format import render_csv, render_json, render_markdown


def test_csv_round_trips(rows):
    parsed = list(csv.DictReader(io.StringIO(render_csv(rows))))
    assert len(parsed) == len(rows)
    for line, row in zip(parsed, rows):
        assert (line["model"], line["method"], line["setting"]) == (row.model, row.method, row.setting)
        assert int(line["total"]) == row.budget.total and int(line["trainable"]) == row.budget.trainable
        assert int(line["trainable_adapter"]) == row.budget.trainable_in("adapter")
        assert float(line["trainable_pct"]) == pytest.approx(row.budget.trainable_pct)
        fp32 = [int(line[f"mem_fp32_{k}"]) for k in ("weights", "gradients", "optimizer")]
        assert fp32 == [4 * row.budget.total, 4 * row.budget.trainable, 8 * row.budget.trainable]
        assert int(line["mem_fp32_total"]) == sum(fp32)


def test_json_round_trips(rows):
    data = json.loads(render_json(rows, None, "listops"))
    assert data["target"] is None and set(data["memory_schemes"]) == {"fp32", "bf16", "int8_weights", "adamw_8bit"}
    for item, row in zip(data["rows"], rows, strict=True):
        assert BudgetRow.from_dict({k: v for k, v in item.items() if k != "memory"} | {"recipe": row.recipe}) == row
        assert item["memory"]["bf16"]["weights"] == 2 * row.budget.total


def test_markdown_and_terminal_tables(rows):
    text = render_markdown(rows, Target(2.0, True), "listops")
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows) and len({line.count("|") for line in table}) == 1
    assert "within 2%?" in table[0]
    plain = render(rows, "table", None, "listops", Console(file=io.StringIO(), width=250))
    assert "preset=ln_only" in plain and "\x1b[" not in plain
    wide = Console(file=io.StringIO(), width=200)
    assert render(rows, "table", None, "listops") == render(rows, "table", None, "listops", wide)  # the default
    with pytest.raises(PeftxError, match="--format 'xml'"):
        render(rows, "xml", None, "listops")


def test_terminal_table_keeps_the_consoles_styles_and_width(rows):
    console = Console(file=io.StringIO(), width=180, force_terminal=True, color_system="standard")
    text = render(rows, "table", Target(2.0, True), "listops", console)
    assert "\x1b[" in text and console.file.getvalue() == ""  # rendered, not printed
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert max(len(line) for line in plain.splitlines()) <= 180 and "preset=ln_only" in plain


@pytest.mark.parametrize(
    "n, text",
    [(0, "0"), (999, "999"), (1000, "1.00k"), (12_288, "12.29k"), (1_500_000, "1.50M"), (2_000_000_000, "2.00B")],
)
def test_fmt_count(n, text):
    assert fmt_count(n) == text


def test_fmt_mem():
    assert fmt_mem(247 * 2**20) == "247M" and fmt_mem(1.62 * 2**30) == "1.62G" and fmt_mem(2**30) == "1.00G"
