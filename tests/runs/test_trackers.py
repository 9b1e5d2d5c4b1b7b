"""Every run writes metrics.jsonl; output.trackers feeds CSV and TensorBoard through accelerate."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from typer.testing import CliRunner

from peftx.cli import app
from peftx.runs.record import RunRecord
from tests.support.tiny import tiny_recipe

runner = CliRunner()


def recipe(tmp_path, **output):
    raw = tiny_recipe("bert", tmp_path)
    raw["train"] = {**raw["train"], "steps": 12, "log_every": 3, "eval_every": 2}  # eval more often than log
    raw["output"] = {**raw["output"], **output}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_metrics_jsonl_has_every_log_step_and_evaluation(tmp_path):
    out = runner.invoke(app, ["run", str(recipe(tmp_path))])
    assert out.exit_code == 0, out.output
    assert "nan" not in out.stderr  # evaluations before the first log step print '-', not nan
    run_dir = tmp_path / "runs" / "tiny_bert"
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in lines if e["kind"] == "train"]
    evals = [e for e in lines if e["kind"] == "eval"]
    assert [e["step"] for e in train] == [3, 6, 9, 12]
    assert [e["step"] for e in evals] == [2, 4, 6, 8, 10, 12]
    for e in train:
        assert e["loss"] > 0 and e["grad_norm"] > 0 and e["examples_per_s"] > 0 and e["tokens_per_s"] > 0
    record = RunRecord.read(run_dir)  # the typed record holds the training loss too
    assert [t.step for t in record.train_log] == [3, 6, 9, 12]
    assert [t.loss for t in record.train_log] == [e["loss"] for e in train]


def test_csv_and_tensorboard_trackers(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = recipe(tmp_path)
    out = runner.invoke(app, ["run", str(path), "--set", "output.trackers=[tensorboard, csv]", "--quiet"])
    assert out.exit_code == 0, out.output
    run_dir = tmp_path / "runs" / "tiny_bert"
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"loss", "lr", "grad_norm", "val_accuracy", "val_loss"} <= set(scalars), scalars
    assert [e.step for e in events.Scalars("loss")] == [3, 6, 9, 12]
    assert [e.step for e in events.Scalars("val_accuracy")] == [2, 4, 6, 8, 10, 12]
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [r["step"] for r in rows if r["loss"]] == ["3", "6", "9", "12"]
    assert [r["step"] for r in rows if r["val_accuracy"]] == ["2", "4", "6", "8", "10", "12"]


def test_a_tracker_without_its_package_is_one_line(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    out = runner.invoke(app, ["run", str(recipe(tmp_path)), "--set", "output.trackers=[wandb]"])
    assert out.exit_code == 2 and "output.trackers: wandb needs its package" in out.stderr
    assert out.stderr.count("\n") == 1
    bad = runner.invoke(app, ["validate", str(recipe(tmp_path, trackers=["neptune"]))])
    assert bad.exit_code == 2 and "trackers" in bad.output
