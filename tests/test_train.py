"""The training loop's options: precision, selection of the best checkpoint, schedules."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from peftx.env import resolve_precision
from peftx.recipe import validate_recipe
from peftx.run import run
from peftx.train import make_accelerator
from tests.conftest import tiny_recipe
from tests.helpers import build


def test_bf16_autocast_loss_matches_fp32():
    _, _, model, split = build(tiny_recipe("bert"))
    model.eval()
    batch = split.collate(list(range(32)))
    y = batch.pop("labels")
    with torch.no_grad():
        fp32 = F.cross_entropy(model(**batch), y)
        with make_accelerator("bf16").autocast():
            bf16 = F.cross_entropy(model(**batch).float(), y)
    assert abs(bf16.item() - fp32.item()) < 0.02 * fp32.item()


def test_precision_auto_picks_a_concrete_choice():
    assert resolve_precision("auto") in ("fp32", "bf16")
    assert resolve_precision("fp32") == "fp32"


def test_best_selection_restores_best_validation_weights(tmp_path):
    raw = tiny_recipe("bert", tmp_path)
    raw["train"].update(steps=6, eval_every=2, lr=5e-2, select="best")
    res = run(validate_recipe(raw)).result
    best = max(h["val_accuracy"] for h in res["history"])
    assert res["metrics"]["val_accuracy"] == best
    assert res["metrics"]["selected_step"] == next(h["step"] for h in res["history"] if h["val_accuracy"] == best)
