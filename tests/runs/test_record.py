"""The run record: one typed result.json, strict JSON, readable from older files, one-line errors."""

from __future__ import annotations

import json

import pytest

from peftx.errors import PeftxError
from peftx.runs.record import RESULT, SCHEMA_VERSION, RunRecord


def record(**fields) -> RunRecord:
    return RunRecord(name="r", recipe={"seed": 0}, seed=0, precision="fp32", **fields)


def test_record_round_trips_and_carries_its_schema_version(tmp_path):
    r = record(status="completed", history=[{"step": 2, "val_accuracy": 0.5, "val_loss": 1.5, "lr": 1e-3}])
    r.write(tmp_path)
    data = json.loads((tmp_path / RESULT).read_text())
    assert data["schema_version"] == SCHEMA_VERSION and data["history"][0]["step"] == 2
    back = RunRecord.read(tmp_path)
    assert back == r and back.completed and back.history[0].val_accuracy == 0.5


def test_non_finite_numbers_are_written_as_null_strict_json(tmp_path):
    record(history=[{"step": 1, "val_accuracy": 0.1, "val_loss": float("nan"), "lr": float("inf")}]).write(tmp_path)
    text = (tmp_path / RESULT).read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON literal {c}"))
    assert "NaN" not in text and "Infinity" not in text


def test_files_from_before_the_schema_version_still_read(tmp_path):
    old = {"name": "r", "status": "completed", "recipe": {}, "seed": 1, "precision": "fp32", "future_field": [1]}
    (tmp_path / RESULT).write_text(json.dumps(old))
    r = RunRecord.read(tmp_path)
    assert r.schema_version == 1 and r.seed == 1 and r.model_extra["future_field"] == [1]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not a readable result file"),
        (b"\xff\xfe\x00garbage", "not a readable result file"),
        (b'{"name": "r", "sta', "not a readable result file"),
        (b"[1, 2]", "not a run record"),
        (b'{"name": "r", "recipe": {}, "seed": "x", "precision": "fp32"}', "seed"),
        (b'{"schema_version": 99, "name": "r"}', "newer than this peftx reads"),
    ],
)
def test_a_broken_result_file_is_one_line(tmp_path, content, message):
    (tmp_path / RESULT).write_bytes(content)
    with pytest.raises(PeftxError, match=message) as e:
        RunRecord.read(tmp_path)
    assert "\n" not in str(e.value)


def test_a_directory_without_a_record_is_named(tmp_path):
    with pytest.raises(PeftxError, match="not a run directory"):
        RunRecord.read(tmp_path)


def test_a_run_records_its_training_loss_and_learning_rate_at_every_log_step(tmp_path):
    from peftx.recipe import validate_recipe
    from peftx.runs.run import run
    from tests.support.tiny import tiny_recipe

    raw = tiny_recipe("gpt2", tmp_path)
    raw["train"] = {**raw["train"], "steps": 6, "log_every": 2, "eval_every": 3, "warmup": 0}
    out = run(validate_recipe(raw))
    back = RunRecord.read(out.run_dir)
    assert [p.step for p in back.train_log] == [2, 4, 6]
    assert all(p.loss is not None and p.loss > 0 for p in back.train_log)
    lrs = [p.lr for p in back.train_log]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] < raw["train"]["lr"]  # linear decay, once a step
    assert [h.step for h in back.history] == [3, 6]
    assert back.processes.world_size == 1 and back.processes.global_batch == raw["train"]["batch_size"]


def test_a_diverged_run_is_recorded_as_diverged_never_as_a_result(tmp_path):
    from typer.testing import CliRunner

    from peftx.cli import app
    from tests.support.tiny import tiny_recipe

    raw = tiny_recipe("bert", tmp_path)
    raw["train"] = {**raw["train"], "lr": 1e6, "steps": 14, "log_every": 1, "eval_every": 4}
    path = tmp_path / "r.yaml"
    import yaml

    path.write_text(yaml.safe_dump(raw))
    out = CliRunner().invoke(app, ["run", str(path)])
    assert out.exit_code == 3 and "training diverged at step 2: gradient norm nan" in out.stderr, out.output
    record = RunRecord.read(tmp_path / "runs" / "tiny_bert")
    assert record.status == "diverged" and record.metrics is None
    json.loads((tmp_path / "runs" / "tiny_bert" / RESULT).read_text(), parse_constant=pytest.fail)
    assert not (tmp_path / "runs" / "tiny_bert" / "weights.safetensors").exists()

    # train.nonfinite: skip passes over the bad updates, counts them, and still stops a hopeless run
    out = CliRunner().invoke(app, ["run", str(path), "--overwrite", "--set", "train.nonfinite=skip"])
    assert out.exit_code == 3 and "10 steps in a row had a non-finite gradient norm" in out.stderr, out.output
