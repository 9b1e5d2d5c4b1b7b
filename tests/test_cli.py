"""The CLI: exit codes and one-line messages for user mistakes, an end-to-end run, predict."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from peftx.cli import app
from peftx.errors import PeftxError
from peftx.model.quantization import quantized_modules
from peftx.runs.predict import Predictor
from tests.support.tiny import tiny_recipe

runner = CliRunner()


def write(tmp_path, raw, name="tiny.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def test_validate_ok_and_error(tmp_path):
    good = write(tmp_path, tiny_recipe("bert", tmp_path), "good.yaml")
    bad_raw = tiny_recipe("bert", tmp_path)
    bad_raw["method"]["alpah"] = 3
    bad = write(tmp_path, bad_raw, "bad.yaml")
    result = runner.invoke(app, ["validate", str(good), str(bad)])
    assert result.exit_code == 2
    assert "ok: " in result.stdout
    assert "bad.yaml: method.alpah: unknown key (did you mean 'alpha'?)" in result.stderr
    assert "Traceback" not in result.output


def test_run_missing_recipe_exits_2(tmp_path):
    result = runner.invoke(app, ["run", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "missing.yaml: no such recipe file" in result.stderr


def test_offline_hub_id_fails_fast_with_advice(tmp_path):
    raw = tiny_recipe("gpt2", tmp_path)
    raw["model"] = {"source": "gpt2", "pretrained": True}
    result = runner.invoke(app, ["run", str(write(tmp_path, raw)), "--quiet"])
    assert result.exit_code == 2
    assert "hub is unreachable" in result.stderr and "pretrained: false" in result.stderr


def test_run_writes_run_dir_refuses_to_overwrite_and_predicts(tmp_path):
    path = write(tmp_path, tiny_recipe("bert", tmp_path))
    result = runner.invoke(app, ["run", str(path), "--quiet"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny_bert"
    assert {p.name for p in run_dir.iterdir()} == {
        "recipe.yaml",
        "result.json",
        "task.json",
        "weights.safetensors",
        "metrics.jsonl",
    }
    res = json.loads((run_dir / "result.json").read_text())
    assert res["status"] == "completed"
    assert 0 <= res["metrics"]["test_accuracy"] <= 1
    assert res["budget"]["trainable"] < res["budget"]["total"]
    assert {"majority_class", "root_operator"} <= set(res["baselines"])
    assert res["history"] and res["history"][-1]["step"] == 4
    assert res["versions"]["torch"] and res["memory"]["peak_rss_bytes"] > 0

    before = (run_dir / "result.json").read_text()
    again = runner.invoke(app, ["run", str(path), "--quiet"])
    assert again.exit_code == 2 and "a completed run of this name exists; pass --overwrite" in again.stderr
    assert (run_dir / "result.json").read_text() == before  # nothing lost

    inputs = tmp_path / "in.tsv"
    inputs.write_text("Source\tTarget\n[MAX 2 9 ]\t9\n( [MIN 4 7 ] )\t4\n")
    pred = runner.invoke(app, ["predict", str(run_dir), str(inputs)])
    assert pred.exit_code == 0, pred.output
    lines = pred.stdout.strip().splitlines()
    assert lines[0] == "input\tprediction\ttarget" and len(lines) == 3
    assert "accuracy against Target" in pred.stderr

    bad = tmp_path / "bad.txt"
    bad.write_text("[MAX 2 x ]\n")
    out = runner.invoke(app, ["predict", str(run_dir), str(bad)])
    assert out.exit_code == 2 and "bad.txt:1: unknown ListOps symbol 'x'" in out.stderr

    named = runner.invoke(app, ["run", str(path), "--quiet", "--name", "second", "--set", "train.steps=2"])
    assert named.exit_code == 0 and (tmp_path / "runs" / "second" / "result.json").exists()


def test_predict_on_missing_run_exits_2(tmp_path):
    (tmp_path / "x.txt").write_text("[MAX 1 2 ]\n")
    result = runner.invoke(app, ["predict", str(tmp_path), str(tmp_path / "x.txt")])
    assert result.exit_code == 2 and "not a run directory" in result.stderr


def test_run_output_to_a_log_has_plain_lines_per_evaluation(tmp_path):
    result = runner.invoke(app, ["run", str(write(tmp_path, tiny_recipe("bert", tmp_path)))])
    assert result.exit_code == 0, result.output
    assert "step 4: train loss" in result.output and "val acc" in result.output
    assert "0/4" not in result.output  # no stale frame of the live bar, which is for terminals only
    assert "test accuracy" in result.output and "written:" in result.output


def test_evaluate_rescores_a_run_as_trained_and_rebuilt(tmp_path):
    raw = tiny_recipe("bert", tmp_path, task={"name": "listops", "preset": "tiny", "n_test": 48})
    assert runner.invoke(app, ["run", str(write(tmp_path, raw)), "--quiet"]).exit_code == 0
    run_dir = tmp_path / "runs" / "tiny_bert"
    metrics = json.loads((run_dir / "result.json").read_text())["metrics"]

    out = runner.invoke(app, ["evaluate", str(run_dir), "--split", "validation", "--split", "test", "--json"])
    assert out.exit_code == 0, out.output
    scores = json.loads(out.stdout)["splits"]
    assert scores["test"]["accuracy"] == pytest.approx(metrics["test_accuracy"], abs=1e-6)
    assert scores["validation"]["accuracy"] == pytest.approx(metrics["val_accuracy"], abs=1e-6)
    assert scores["test"]["examples"] == raw["task"]["n_test"]

    lines = runner.invoke(app, ["evaluate", str(run_dir)])
    assert lines.exit_code == 0 and lines.stdout.startswith("test: accuracy ")
    assert f"at training: {100 * metrics['test_accuracy']:.2f}%" in lines.stdout

    # the same trained tensors on an 8-bit body: rebuilt quantized, scored on the same examples
    eight = Predictor(run_dir, ["model.quantization=8bit"])
    assert quantized_modules(eight.model)
    assert eight.evaluate(["test"])["test"]["examples"] == raw["task"]["n_test"]

    bad = runner.invoke(app, ["evaluate", str(run_dir), "--set", "method.r=2"])
    assert bad.exit_code == 2 and "weights.safetensors" in bad.stderr and "shape" in bad.stderr
    bad = runner.invoke(app, ["evaluate", str(run_dir), "--set", "method.use_dora=true"])
    assert bad.exit_code == 2 and "lacks" in bad.stderr and "lora_magnitude" in bad.stderr  # would stay untrained
    bad = runner.invoke(app, ["evaluate", str(run_dir), "--split", "dev"])
    assert bad.exit_code == 2 and "--split: unknown split 'dev'" in bad.stderr


def test_version_and_recipe_show():
    out = runner.invoke(app, ["--version"])
    assert out.exit_code == 0 and out.stdout.strip().startswith("peftx ")
    out = runner.invoke(app, ["recipe", "show", "method.lora"])
    assert out.exit_code == 0 and "method.r" in out.stdout
    out = runner.invoke(app, ["recipe", "show", "nope"])
    assert out.exit_code == 2 and "unknown recipe section 'nope'" in out.stderr


def test_predict_inputs_in_utf16_and_broken_bytes(tmp_path):
    from peftx.runs.predict import read_text

    path = tmp_path / "in.txt"
    path.write_text("[MAX 2 9 ]\n", encoding="utf-16")
    assert read_text(path) == "[MAX 2 9 ]\n"
    path.write_bytes(b"[MAX \xff 9 ]\n")
    with pytest.raises(PeftxError, match="not UTF-8 text"):
        read_text(path)
