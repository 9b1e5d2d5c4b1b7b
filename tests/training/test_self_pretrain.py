"""The self-pretraining stage (`model.init: self_pretrained`): its loss falls on tiny ListOps for every
family, its body is cached and shared by runs that differ only in what the stage does not depend on,
a stopped stage goes on to the same body, runs start from that body exactly, and the run records it."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from peftx.errors import PeftxError
from peftx.recipe import validate_recipe
from peftx.runs.run import run
from peftx.training import self_pretrain
from peftx.training.builder import build_model
from peftx.training.self_pretrain import BODY, ensure_self_pretrained, stage_dir, stage_inputs
from tests.support.tiny import tiny_model, tiny_recipe

STAGE = {"steps": 30, "lr": 3e-3, "batch_size": 16, "eval_examples": 64}


def _recipe(family: str = "bert", stage: dict | None = None, **sections):
    model = tiny_model(family, init="self_pretrained", self_pretrain=stage or STAGE)
    return validate_recipe(tiny_recipe(family, model=model, **sections))


def test_self_pretraining_loss_falls_for_every_family(family):
    record = ensure_self_pretrained(_recipe(family))
    expected = {"bert": "mlm", "gpt2": "causal", "llama": "causal", "t5": "denoise", "bart": "denoise"}[family]
    assert record["objective"] == expected and record["steps"] == 30 and not record["reused"]
    assert record["loss_after"] < record["loss_before"] - 0.1
    assert record["seconds"] > 0 and len(record["log"]) > 0


def test_the_body_is_shared_by_runs_that_differ_outside_the_stage():
    first = ensure_self_pretrained(_recipe())
    other = _recipe(seed=7, method={"name": "full"}, train=tiny_recipe()["train"] | {"lr": 1e-4})
    second = ensure_self_pretrained(other)
    assert second["reused"] and second["key"] == first["key"]
    changed = _recipe(stage=STAGE | {"seed": 1})
    assert stage_inputs(changed).digest != first["key"]  # the stage's own seed makes another body


def test_runs_start_from_the_saved_body_exactly():
    frozen = {"name": "frozen"}  # no adapter weights in the backbone
    a, b = _recipe(method=frozen), _recipe(seed=3, method=frozen)
    key = ensure_self_pretrained(a)["key"]
    saved = load_file(str(stage_dir(key) / BODY))
    for recipe in (a, b):  # two run seeds, one body
        model = build_model(recipe, recipe.task.describe(), "fp32")[0]
        own = dict(model.backbone.named_parameters())
        assert set(own) <= set(saved)
        for name, p in own.items():
            assert torch.equal(p, saved[name]), name
    scratch = validate_recipe(tiny_recipe("bert", method=frozen))
    random_body = dict(build_model(scratch, scratch.task.describe(), "fp32")[0].backbone.named_parameters())
    assert not torch.equal(
        random_body["encoder.layer.0.attention.self.query.weight"], saved["encoder.layer.0.attention.self.query.weight"]
    )


def test_a_stopped_stage_goes_on_to_the_same_body(tmp_path, monkeypatch):
    stage = STAGE | {"steps": 12, "checkpoint_every": 4}
    whole = ensure_self_pretrained(_recipe(stage=stage))
    whole_body = load_file(str(stage_dir(whole["key"]) / BODY))
    monkeypatch.setenv("PEFTX_CACHE", str(tmp_path / "other-cache"))
    real_step = self_pretrain._Stage.train_step

    def stop_at_7(self):
        if self.step == 6:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(self_pretrain._Stage, "train_step", stop_at_7)
    with pytest.raises(KeyboardInterrupt):
        ensure_self_pretrained(_recipe(stage=stage))
    monkeypatch.setattr(self_pretrain._Stage, "train_step", real_step)
    resumed = ensure_self_pretrained(_recipe(stage=stage))
    assert resumed["resumed_from"] == 4 and resumed["key"] == whole["key"]
    body = load_file(str(stage_dir(resumed["key"]) / BODY))
    assert body.keys() == whole_body.keys()
    for name, tensor in whole_body.items():
        assert torch.equal(body[name], tensor), name
    assert resumed["loss_after"] == whole["loss_after"]


def test_the_run_records_the_stage_and_a_rerun_reuses_it(tmp_path):
    first = run(_recipe(tmp_path=tmp_path))
    stage = first.result["self_pretrain"]
    assert first.result["status"] == "completed"
    assert stage["steps"] == 30 and stage["loss_after"] < stage["loss_before"] and stage["seconds"] > 0
    assert first.result["backbone"]["init"] == "self_pretrained"
    assert first.result["backbone"]["self_pretrained"] == stage["key"]
    second = run(_recipe(tmp_path=tmp_path, seed=1, name="again"))
    assert second.result["self_pretrain"]["reused"] and second.result["self_pretrain"]["key"] == stage["key"]


def test_continuous_inputs_are_refused_in_one_line():
    task = {"name": "vision", "dataset": "digits", "patch": 2, "n_train": 64, "n_val": 16, "n_test": 16}
    recipe = _recipe(task=task)
    with pytest.raises(
        PeftxError, match="^model.init: self_pretrained needs a task with discrete symbols; task vision gives vectors$"
    ):
        build_model(recipe, recipe.task.describe(), "fp32", meta=True)
