"""The training loop's options: precision, selection of the best checkpoint, schedules; its single step."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from peftx.recipe import validate_recipe
from peftx.runs.run import run
from peftx.training.job import TrainJob
from peftx.training.loop import Trainer, train
from peftx.training.points import EvalPoint, TrainPoint
from peftx.training.session import make_accelerator
from peftx.util import env
from peftx.util.env import resolve_precision
from tests.support.helpers import build
from tests.support.tiny import FAMILY_NAMES, tiny_recipe


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


def test_cpu_bf16_is_fast_only_where_measured_so(monkeypatch, tmp_path):
    """AVX512-BF16 alone does not make bf16 fast: the products are timed once per machine (the result
    cached on disk, so every process of a launch agrees); AMX is fast, no flag is not."""
    monkeypatch.setenv("PEFTX_CACHE", str(tmp_path))
    timed = []

    def speedup(value):
        def measure(*a, **k):
            timed.append(value)
            return value

        return measure

    for flags, measured, expected in [
        ({"avx2"}, 3.0, False),
        ({"avx512_bf16", "amx_bf16"}, 0.5, True),
        ({"avx512_bf16"}, 0.55, False),
    ]:
        env.cpu_has_fast_bf16.cache_clear()
        monkeypatch.setattr(env, "_cpu_flags", lambda flags=flags: flags)
        monkeypatch.setattr(env, "bf16_matmul_speedup", speedup(measured))
        assert env.cpu_has_fast_bf16() is expected
    assert timed == [0.55]  # only the AVX512-BF16 CPU without AMX was timed
    # the measurement is kept: another process (here: a cleared cache) reads it instead of timing again
    env.cpu_has_fast_bf16.cache_clear()
    monkeypatch.setattr(env, "bf16_matmul_speedup", speedup(9.0))
    assert env.cpu_has_fast_bf16() is False and timed == [0.55]
    assert json.loads((tmp_path / "machine.json").read_text()).popitem()[1] == {"bf16_speedup": 0.55}
    # a CPU measured fast
    (tmp_path / "machine.json").unlink()
    env.cpu_has_fast_bf16.cache_clear()
    assert env.cpu_has_fast_bf16() is True and timed == [0.55, 9.0]
    env.cpu_has_fast_bf16.cache_clear()


def test_bf16_matmul_speedup_is_measured():
    speedup = env.bf16_matmul_speedup(side=64, repeats=2)
    assert math.isfinite(speedup) and speedup > 0


def test_trainer_step_is_the_loops_step():
    """Benchmarks call `Trainer.step` one optimizer step at a time: it computes what the loop computes,
    the same losses and the same weights."""
    raw = tiny_recipe("bert")
    raw["train"].update(steps=5, grad_accum=2, log_every=1, eval_every=100)  # one evaluation, after step 5

    def job() -> TrainJob:
        recipe, _, model, split = build(raw)
        return TrainJob(model, split, split, recipe.train, recipe.seed, make_accelerator("fp32", grad_accum=2))

    looped, points = job(), []
    outcome = train(looped, points.append)
    assert [type(p) for p in points] == [TrainPoint] * 5 + [EvalPoint]
    assert points == [*outcome.train_log, *outcome.history]
    stepped = job()
    trainer = Trainer(stepped)
    results = [trainer.step() for _ in range(5)]
    assert [r.step for r in results] == [1, 2, 3, 4, 5] and not any(r.skipped for r in results)
    # a log point's loss is the mean of its step's micro-batch terms
    assert [p.loss for p in outcome.train_log] == [r.loss.item() / 2 for r in results]
    for (name, a), b in zip(looped.model.named_parameters(), stepped.model.parameters(), strict=True):
        assert torch.equal(a, b), name
