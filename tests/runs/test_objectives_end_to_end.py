"""Regression and multi-label runs end to end: result.json names the objective's metrics and its primary
one; `evaluate` reproduces them; `predict` answers in the objective's terms; an export reloaded the
plain way gives the same outputs; the report ranks a lower-is-better metric the right way round; and
records written before other objectives existed still read."""

from __future__ import annotations

import json

import pytest

from peftx.export.exporter import export_run
from peftx.recipe import validate_recipe
from peftx.runs.predict import Predictor
from peftx.runs.record import RunRecord
from peftx.runs.run import run
from peftx.studies.report.writer import summarize
from tests.export.test_export import plain_load
from tests.spec.test_objective import objective_task
from tests.support.tiny import tiny_recipe

PRIMARY = {"regression": ("rmse", "lower"), "multilabel": ("map", "higher")}


def objective_run(tmp_path, objective: str, name: str | None = None, **train):
    inputs = {"name": "linear"} if objective == "regression" else {"name": "learned"}
    raw = tiny_recipe("bert", tmp_path, task=objective_task(objective, tmp_path), input=inputs)
    raw["train"].update(steps=6, eval_every=3, **train)
    raw["output"]["name"] = name
    return run(validate_recipe(raw))


@pytest.mark.parametrize("objective", ["regression", "multilabel"])
def test_a_run_records_evaluates_predicts_and_exports_in_its_objectives_terms(tmp_path, objective):
    result = run_result = objective_run(tmp_path, objective)
    m = result.record.metrics
    assert (m.primary, m.direction) == PRIMARY[objective]
    assert m.test_accuracy is None and m.value("test") == m.test[m.primary]
    assert all(p.val_metrics and next(iter(p.val_metrics)) == m.primary for p in result.record.history)
    assert result.record.baselines  # the constant predictor a model should beat
    predictor = Predictor(run_result.run_dir)
    scores = predictor.evaluate(["test"])["test"]
    for name, value in m.test.items():
        assert scores[name] == pytest.approx(value, abs=1e-6)
    inputs = ["[[0.5, 1.0], [1.0, -2.0]]", "[[3.0, 0.0]]"] if objective == "regression" else ["a", "c", "d"]
    predictions = predictor.predict(inputs)
    if objective == "regression":
        assert all(isinstance(p, float) for p in predictions)
    else:
        assert all(isinstance(p, list) and set(p) <= {"x", "y", "z"} for p in predictions)
    task = json.loads((run_result.run_dir / "task.json").read_text())
    assert task["objective"]["kind"] == objective
    out = export_run(run_result.run_dir, tmp_path / "export")
    model, _ = plain_load(out.out_dir)
    parsed = [predictor.info.parse(x) for x in inputs]
    sequences = (
        parsed if objective == "regression" else [[predictor.info.input_spec.symbols[i] for i in p] for p in parsed]
    )
    assert (model.logits(sequences) - predictor.logits(inputs)).abs().max().item() <= 1e-5
    assert model.predict(sequences) == predictions


def test_the_report_ranks_an_error_metric_lowest_first(tmp_path):
    runs = [objective_run(tmp_path, "regression", name=f"lr{lr}", lr=lr).record for lr in (3e-3, 1e-5)]
    rows, _ = summarize(runs)
    (row,) = rows
    assert row.metric == "rmse" and not row.higher_is_better
    assert row.lr == min(row.lrs_tried, key=row.lrs_tried.get)  # the smaller validation error wins


def test_records_of_schema_version_2_still_read(tmp_path):
    record = objective_run(tmp_path, "multilabel").record
    old = json.loads(record.model_dump_json())
    old["schema_version"] = 2
    old["metrics"] = {
        "test_accuracy": 0.5,
        "test_loss": 0.7,
        "val_accuracy": 0.6,
        "selected_step": 3,
        "selection": "best",
    }
    for point in old["history"]:
        point.pop("val_metrics")
        point["val_accuracy"] = 0.6
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "result.json").write_text(json.dumps(old))
    read = RunRecord.read(tmp_path / "old")
    assert read.metrics.primary == "accuracy" and read.metrics.value("test") == 0.5
    assert read.history[0].metric("accuracy") == 0.6
    (row,) = summarize([read])[0]
    assert row.metric == "accuracy" and row.test == [0.5]
