"""What a run recorded is checked when it is used again: the backbone's sha256 on predict, evaluate,
export and resume (refused in one line unless --allow-changed-weights), and a checkpoint's random
states on resume (refused unless --allow-inexact: the continuation would not be bit-identical)."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from peftx.cli import app
from peftx.errors import PeftxError
from peftx.export.exporter import export_run
from peftx.model.loading import load_backbone
from peftx.recipe import load_recipe, validate_recipe
from peftx.runs.predict import Predictor
from peftx.runs.record import RunRecord
from peftx.runs.run import run
from peftx.training.checkpoints import DIGESTS, list_checkpoints
from tests.support.tiny import TINY, tiny_recipe

runner = CliRunner()
EXPRS = ["[MAX 2 9 ]", "[MIN 4 7 [MAX 1 0 ] ]"]


def save_base(path, seed: int) -> None:
    """A tiny BERT saved as a local pretrained checkpoint; another seed, other weights."""
    import torch

    torch.manual_seed(seed)
    bb = load_backbone(TINY["bert"]["source"], pretrained=False, overrides=TINY["bert"]["config_overrides"])
    bb.model.save_pretrained(path)


def pretrained_recipe(tmp_path, **train) -> dict:
    save_base(tmp_path / "base", seed=0)
    raw = tiny_recipe("bert", tmp_path)
    raw["model"] = {"family": "bert", "source": str(tmp_path / "base"), "pretrained": True}
    raw["train"] = {**raw["train"], **train}
    return raw


def test_predict_evaluate_and_export_refuse_a_backbone_whose_weights_changed(tmp_path):
    done = run(validate_recipe(pretrained_recipe(tmp_path)))
    assert len(done.record.backbone["sha256"]) == 64
    before = Predictor(done.run_dir).logits(EXPRS)
    save_base(tmp_path / "base", seed=1)  # the same directory, other weights

    with pytest.raises(PeftxError, match=r"sha256 .* not the .* this run was trained on.*--allow-changed-weights"):
        Predictor(done.run_dir)
    with pytest.raises(PeftxError, match="--allow-changed-weights"):
        export_run(done.run_dir, tmp_path / "export")
    assert not (tmp_path / "export").exists()
    for args in (["evaluate", str(done.run_dir)], ["export", str(done.run_dir), str(tmp_path / "export")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "--allow-changed-weights" in result.stderr

    accepted = Predictor(done.run_dir, allow_changed_weights=True)
    assert accepted.weights_changed and "trained on" in accepted.weights_changed
    assert not accepted.logits(EXPRS).equal(before)  # what the check is for: the outputs moved


def interrupted_run(tmp_path, raw: dict):
    """A run stopped by an error at its evaluation of step 4, with a checkpoint before it."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))

    def stop(point):
        if point.step == 4:
            raise RuntimeError("stopped by the test")

    with pytest.raises(RuntimeError):
        run(load_recipe(path), on_eval=stop)
    run_dir = tmp_path / "runs" / raw["name"]
    assert RunRecord.read(run_dir).status == "failed" and list_checkpoints(run_dir)
    return path, run_dir


def test_resume_refuses_changed_weights_and_missing_random_states_unless_allowed(tmp_path):
    raw = pretrained_recipe(tmp_path, steps=8, checkpoint_every=2)
    path, run_dir = interrupted_run(tmp_path, raw)
    save_base(tmp_path / "base", seed=1)
    with pytest.raises(PeftxError, match="--allow-changed-weights"):
        run(load_recipe(path), resume=True)
    save_base(tmp_path / "base", seed=0)  # the weights it was trained on: save_pretrained writes them alike

    newest = int(list_checkpoints(run_dir)[-1].name.split("-")[1])
    for ckpt in list_checkpoints(run_dir):  # checkpoints without their random states (and digests)
        (ckpt / "random_states_0.pkl").unlink()
        (ckpt / DIGESTS).unlink()
    with pytest.raises(PeftxError, match=r"has no random_states_0.pkl.*--resume --allow-inexact") as e:
        run(load_recipe(path), resume=True)
    assert "\n" not in str(e.value)
    with pytest.warns(UserWarning, match="fresh random states"):
        resumed = run(load_recipe(path), resume=True, allow_inexact=True)
    assert resumed.record.completed and resumed.record.resumed[-1]["from_step"] == newest


def test_unreadable_random_states_are_named(tmp_path):
    raw = tiny_recipe("bert", tmp_path, name="u")
    raw["train"] = {**raw["train"], "steps": 8, "checkpoint_every": 2}
    path, run_dir = interrupted_run(tmp_path, raw)
    for ckpt in list_checkpoints(run_dir):
        (ckpt / "random_states_0.pkl").write_bytes(b"not a pickle")
        (ckpt / DIGESTS).unlink()
    result = runner.invoke(app, ["run", str(path), "--resume", "--quiet"])
    assert result.exit_code == 2 and "random_states_0.pkl is unreadable" in result.stderr
    assert "--allow-inexact" in result.stderr and len(result.stderr.strip().splitlines()) == 1
