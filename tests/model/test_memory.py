"""Low-memory training options: gradient checkpointing changes nothing but memory, 8-bit optimizers
train, a run reports where its memory went, and a quantized from-scratch run reloads."""

from __future__ import annotations

import typing

import pytest
import torch

from peftx.model.memory import enable_gradient_checkpointing
from peftx.recipe import TrainSection, validate_recipe
from peftx.runs.predict import Predictor
from peftx.runs.run import run
from peftx.training.optimizers import OPTIMIZERS, build_optimizer, make_optimizer, optimizer_state_bytes
from tests.model.test_quantization import grads, quantized_recipe
from tests.support.helpers import build, changed, snapshot
from tests.support.tiny import tiny_recipe


@pytest.mark.parametrize(
    "family, bits", [("bert", "none"), ("gpt2", "none"), ("t5", "none"), ("bart", "none"), ("bert", "8bit")]
)
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(family, bits):
    _, _, model, split = build(quantized_recipe(family, bits))
    batch = split.collate(list(range(16)))
    y = batch.pop("labels")
    loss0, grads0 = grads(model, batch, y)
    enable_gradient_checkpointing(model)
    assert model.backbone.is_activation_checkpointing
    loss1, grads1 = grads(model, batch, y)
    assert loss1 == pytest.approx(loss0, abs=1e-6)
    assert grads1.keys() == grads0.keys() and any("lora" in n for n in grads1)
    for name, g in grads1.items():
        assert torch.allclose(g, grads0[name], atol=1e-6), name


def test_optimizer_names_match_the_schema():
    assert set(typing.get_args(TrainSection.model_fields["optimizer"].annotation)) == set(OPTIMIZERS)


@pytest.mark.filterwarnings("ignore:Paged optimizers are not supported on CPU")
def test_every_optimizer_moves_the_trainable_parameters():
    recipe, _, model, split = build(tiny_recipe("bert"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    batch = split.collate(list(range(16)))
    y = batch.pop("labels")
    for name in OPTIMIZERS:
        opt = make_optimizer(model, recipe.train.model_copy(update={"optimizer": name}))
        assert type(opt).__name__ == OPTIMIZERS[name][1]
        before = snapshot(model)
        torch.nn.functional.cross_entropy(model(**batch), y).backward()
        with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()}
        opt.step()
        opt.zero_grad(set_to_none=True)
        assert with_grad <= changed(before, model) <= trainable, name


def test_8bit_optimizer_state_is_a_quarter_of_adamw():
    sizes = {}
    for name in ("adamw", "adamw8bit"):
        layer = torch.nn.Linear(256, 256)
        opt = build_optimizer(name, [{"params": [layer.weight], "weight_decay": 0.0}], 1e-3)
        layer(torch.randn(4, 256)).sum().backward()
        opt.step()
        sizes[name] = optimizer_state_bytes(opt)
    assert sizes["adamw"] >= 2 * 4 * 256 * 256  # two float32 moments
    assert sizes["adamw8bit"] < sizes["adamw"] / 3.5  # two uint8 moments + block scales


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_quantized_run_reports_memory_and_reloads(tmp_path, bits):
    raw = quantized_recipe("gpt2", bits, tmp_path)
    raw["train"].update(optimizer="adamw8bit", gradient_checkpointing=True)
    recipe = validate_recipe(raw)
    out = run(recipe)
    memory = out.result["memory"]
    assert memory["peak_rss_bytes"] > memory["weight_bytes"] > memory["quantized_weight_bytes"] > 0
    assert memory["gradient_bytes"] == 4 * out.result["budget"]["trainable"]  # float32 gradients
    assert memory["optimizer_state_bytes"] > 0
    assert out.result["backbone"]["quantization"].startswith(bits)
    # a from-scratch quantized body is saved dequantized and quantized again when reloaded
    task = recipe.task.load()
    from peftx.tasks.listops.task import VOCAB

    texts = [" ".join(VOCAB.symbols[i] for i in t) for t in task.splits["test"]["tokens"]]
    labels = task.splits["test"]["label"]
    predicted = Predictor(out.run_dir).predict(texts)
    acc = sum(int(p) == y for p, y in zip(predicted, labels)) / len(labels)
    assert acc == pytest.approx(out.result["metrics"]["test_accuracy"], abs=2 / len(labels))


def test_unquantized_run_reports_memory(tmp_path):
    res = run(validate_recipe(tiny_recipe("bert", tmp_path))).result
    memory = res["memory"]
    assert memory["quantized_weight_bytes"] == 0
    assert memory["optimizer_state_bytes"] >= 2 * memory["gradient_bytes"]  # AdamW: two moments
