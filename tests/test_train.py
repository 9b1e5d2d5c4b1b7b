"""The training loop's options: precision, selection of the best checkpoint, schedules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from peftx import env
from peftx.env import resolve_precision
from peftx.recipe import validate_recipe
from peftx.run import run
from peftx.train import make_accelerator
from tests.conftest import FAMILY_NAMES, tiny_recipe
from tests.helpers import build


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_bf16_run_model_loss_matches_fp32(family):
    """The model a bf16 run builds (frozen weights stored in bf16, under autocast) scores like the
    fp32 one built from the same seed."""
    raw = tiny_recipe(family, method={"name": "lora", "r": 4, "train_roles": ["bias"]})
    _, _, model, split = build(raw)
    raw["train"]["precision"] = "bf16"
    _, _, bf16_model, _ = build(raw)
    assert torch.bfloat16 in {p.dtype for p in bf16_model.parameters()}
    batch = split.collate(list(range(32)))
    y = batch.pop("labels")
    with torch.no_grad():
        fp32 = F.cross_entropy(model.eval()(**batch), y)
        with make_accelerator("bf16").autocast():
            bf16 = F.cross_entropy(bf16_model.eval()(**batch).float(), y)
    assert abs(bf16.item() - fp32.item()) < 0.02 * fp32.item()


@pytest.mark.parametrize(
    "cuda, cuda_bf16, cpu_bf16, expected",
    [
        (True, True, False, "bf16"),
        (True, False, True, "fp32"),  # a GPU decides, not the host CPU
        (False, False, True, "bf16"),
        (False, False, False, "fp32"),
    ],
)
def test_precision_auto_follows_the_hardware(monkeypatch, cuda, cuda_bf16, cpu_bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: cuda_bf16)
    monkeypatch.setattr(env, "cpu_has_fast_bf16", lambda: cpu_bf16)
    assert resolve_precision("auto") == expected
    # an explicit choice is kept whatever the hardware
    assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"


def test_best_selection_restores_best_validation_weights(tmp_path):
    raw = tiny_recipe("bert", tmp_path)
    raw["train"].update(steps=6, eval_every=2, lr=5e-2, select="best")
    res = run(validate_recipe(raw)).result
    best = max(h["val_accuracy"] for h in res["history"])
    assert res["metrics"]["val_accuracy"] == best
    assert res["metrics"]["selected_step"] == next(h["step"] for h in res["history"] if h["val_accuracy"] == best)
