"""Sweeps: grid expansion, resume after an interruption, and reports built from result files."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from typer.testing import CliRunner

from peftx.cli import app
from peftx.errors import PeftxError
from peftx.runs.record import RunRecord
from peftx.studies.report.writer import load_results, markdown_table, sem, summarize
from peftx.studies.sweep import expand, find_axes, load_sweep
from peftx.studies.sweep_worker import run_sweep
from tests.support.tiny import tiny_model, tiny_recipe

runner = CliRunner()


def sweep_raw(tmp_path) -> dict:
    raw = tiny_recipe("bert", tmp_path)
    raw["name"] = "grid"
    raw["model"] = [tiny_model("bert"), tiny_model("gpt2")]
    raw["train"] = {**raw["train"], "lr": [1e-2, 1e-3], "steps": 2, "eval_every": 2}
    raw["seed"] = [0, 1]
    return raw


def test_axes_are_lists_where_the_schema_wants_one_value(tmp_path):
    raw = sweep_raw(tmp_path)
    raw["method"] = {"name": "lora", "targets": ["attention", "feed_forward"], "r": [4, 8]}
    axes = dict(find_axes(raw))
    assert set(axes) == {"model", "train.lr", "seed", "method.r"}  # targets is a list by nature
    points = expand(raw)
    assert len(points) == 2 * 2 * 2 * 2
    assert len({p.name for p in points}) == 16
    p = points[0]
    assert p.recipe.method.targets == ["attention", "feed_forward"]
    assert p.name == "seed=0__bert-bert-base-uncased__r=4__lr=0.01"
    assert all(pt.recipe.output.dir.name == "grid" for pt in points)


def test_explicit_grid_for_list_fields(tmp_path):
    raw = tiny_recipe("bert", tmp_path)
    raw["grid"] = {"method.targets": [["attention"], ["attention", "feed_forward"]], "method.name": ["lora"]}
    points = expand(raw)
    assert [p.recipe.method.targets for p in points] == [["attention"], ["attention", "feed_forward"]]


def test_invalid_point_is_named(tmp_path):
    raw = sweep_raw(tmp_path)
    raw["train"]["lr"] = [1e-3, "fast"]
    with pytest.raises(PeftxError, match=r"\[.*lr=fast.*\]: train\.lr: Input should be a valid number"):
        expand(raw)


def test_sem_arithmetic():
    assert sem([0.5, 0.7]) == pytest.approx(0.1)  # sd 0.1414 / sqrt(2)
    assert sem([1.0, 2.0, 3.0, 4.0]) == pytest.approx(math.sqrt(5 / 3) / 2)
    assert math.isnan(sem([0.4]))


def test_sweep_runs_resumes_and_reports(tmp_path):
    raw = sweep_raw(tmp_path)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(raw))
    points = load_sweep(path)
    assert len(points) == 8
    log = []
    assert run_sweep(points, log=log.append).failed == []
    root = tmp_path / "runs" / "grid"
    assert len(list(root.glob("*/result.json"))) == 8

    # interrupted: one run lost its result, one is marked as interrupted; a rerun redoes only those
    victim, half = root / points[3].name, root / points[5].name
    (victim / "result.json").unlink()
    res = json.loads((half / "result.json").read_text())
    res["status"] = "interrupted"
    (half / "result.json").write_text(json.dumps(res))
    log.clear()
    assert run_sweep(load_sweep(path), log=log.append).failed == []
    ran = [line for line in log if "skipped" not in line]
    assert len(ran) == 2 and points[3].name in ran[0] and points[5].name in ran[1]

    # a changed recipe is not mistaken for a finished one
    with pytest.raises(PeftxError, match="finished with a different recipe"):
        run_sweep(load_sweep(path, ["train.steps=3"]), log=log.append)

    rows, varying = summarize(load_results(root))
    assert len(rows) == 2 and all(len(r.seeds) == 2 for r in rows)
    for r in rows:  # the chosen lr has the best mean validation accuracy, and test is reported there
        assert r.lrs_tried[r.lr] == max(r.lrs_tried.values())
    table = markdown_table(rows, varying)
    assert "±" in table and "majority class" in table

    out = runner.invoke(app, ["report", str(root), "--out", str(tmp_path / "rep")])
    assert out.exit_code == 0, out.output
    written = {p.name for p in (tmp_path / "rep").iterdir()}
    assert {"report.md", "accuracy_vs_trainable.png", "training_curves.png"} <= written


def completed_record(recipe, seed, val, test, trainable=1000, total=100000, baselines=None, lr=1e-3) -> RunRecord:
    """A hand-written record of a completed run (what the report reads, and nothing else)."""
    return RunRecord(
        name="x",
        status="completed",
        seed=seed,
        precision="fp32",
        recipe=recipe,
        metrics={
            "val_accuracy": val,
            "test_accuracy": test,
            "test_loss": 1.0,
            "selected_step": 10,
            "selection": "best",
        },
        budget={"trainable": trainable, "total": total, "trainable_pct": 100 * trainable / total},
        baselines=baselines or {},
        history=[{"step": 10, "val_accuracy": val, "val_loss": 1.0, "lr": lr}],
    )


def test_report_builds_from_result_files_only(tmp_path):
    # hand-written result files: the report needs nothing else (no models, no data)
    def result(seed, lr, pretrained, val, test, threads=None):
        recipe = {
            "name": "x",
            "seed": seed,
            "model": {"source": "offline", "pretrained": pretrained},
            "task": {"name": "listops"},
            "method": {"name": "lora"},
            "train": {"lr": lr, "threads": threads},  # threads: speed only, never a configuration
            "output": {"dir": "runs", "name": f"r{seed}{lr}{pretrained}"},
        }
        return completed_record(recipe, seed, val, test, baselines={"majority_class": 0.15}, lr=lr)

    runs = [
        result(0, 1e-3, True, 0.5, 0.48),
        result(1, 1e-3, True, 0.6, 0.58),
        result(0, 1e-4, True, 0.3, 0.9, threads=1),
        result(1, 1e-4, True, 0.3, 0.9, threads=1),
        result(0, 1e-3, False, 0.2, 0.21),
        result(1, 1e-3, False, 0.2, 0.19),
    ]
    for i, r in enumerate(runs):
        d = tmp_path / f"run{i}"
        d.mkdir()
        r.write(d)
    rows, varying = summarize(load_results(tmp_path))
    assert varying == ["model.pretrained"]
    pre = next(r for r in rows if r.config["model.pretrained"] is True)
    assert pre.lr == 1e-3  # chosen on validation, even though lr 1e-4 had the better test accuracy
    assert pre.test == [0.48, 0.58] and set(pre.lrs_tried) == {1e-3, 1e-4}
    out = runner.invoke(app, ["report", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "pretrained_vs_scratch.png").exists()
    report = (tmp_path / "report.md").read_text()
    assert "| listops | True | 0.001 | 0.0001: 30.0, 0.001: 55.0 | 2 | 53.0 ± 5.0 |" in report


def test_dry_run_prints_budgets(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(sweep_raw(tmp_path)))
    out = runner.invoke(app, ["sweep", str(path), "--dry-run"])
    assert out.exit_code == 0, out.output
    assert "8 runs" in out.stdout and "todo" in out.stdout
    assert not (tmp_path / "runs").exists()


def test_report_on_empty_dir_exits_2(tmp_path):
    out = runner.invoke(app, ["report", str(tmp_path)])
    assert out.exit_code == 2 and "no completed runs" in out.stderr


def test_point_names_skip_fields_a_point_does_not_set(tmp_path):
    raw = tiny_recipe("bert", tmp_path)
    raw["method"] = [{"name": "lora", "r": 4}, {"name": "frozen", "preset": "fpt"}]
    assert [p.name for p in expand(raw)] == ["lora-r4", "frozen-fpt"]


def test_report_of_several_tasks_has_a_table_per_task_with_what_varies_in_it(tmp_path):
    def result(i, task, method, pretrained, acc):
        recipe = {
            "seed": 0,
            "model": {"source": "offline", "pretrained": pretrained},
            "task": {"name": task},
            "method": method,
            "train": {"lr": 1e-3},
        }
        d = tmp_path / f"run{i}"
        d.mkdir()
        completed_record(recipe, 0, acc, acc, trainable=10, total=100).write(d)

    result(0, "listops", {"name": "lora", "r": 8}, True, 0.4)
    result(1, "listops", {"name": "frozen", "preset": "fpt"}, True, 0.3)
    result(2, "vision", {"name": "full"}, True, 0.8)
    result(3, "vision", {"name": "full"}, False, 0.6)
    rows, varying = summarize(load_results(tmp_path))
    assert {r.task: list(r.config) for r in rows} == {"listops": ["method.name"], "vision": ["model.pretrained"]}
    table = markdown_table(rows, varying)
    assert "### listops" in table and "### vision" in table
    assert "| listops | frozen | 0.001 | 1 | 30.0 ± — |" in table
    assert "| vision | False | 0.001 | 1 | 60.0 ± — |" in table
    assert "method.r" not in table  # only LoRA has r: not a difference by itself
