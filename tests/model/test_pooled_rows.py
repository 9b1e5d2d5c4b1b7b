"""`train.skip_unpooled_rows`: the last layer computes only the pooled row, with the outputs and gradients
of the layer that computes every row, for every family that has it, under every kind of adapter."""

from __future__ import annotations

import copy

import pytest
import torch

from peftx.training.speed import prepare_model
from tests.support.helpers import build
from tests.support.tiny import LLAMA_SHAPED, tiny_recipe

LORA = {"name": "lora", "r": 4}


def _setup(fam: str, method: dict | None = None, arch: str | None = None, **model):
    raw = tiny_recipe(fam, method=method or LORA)
    if arch is not None:
        raw["model"].update(copy.deepcopy(LLAMA_SHAPED[arch]))
    raw["model"].update(model)
    _, _, net, split = build(raw)
    batch = split.collate(list(range(12)))  # ListOps lengths differ: padded rows
    labels = batch.pop("labels")
    return net, split, batch, labels


def _outputs_and_gradients(net, split, batch, labels):
    net.zero_grad()
    out = net(**batch)
    split.objective.loss(out, labels).backward()
    return out.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def _rows_seen_by_last_feed_forward(net, batch) -> int:
    """Rows per example the last layer's feed-forward input had in one forward pass."""
    name = {"bert": "intermediate", "gpt2": "mlp", "llama": "mlp"}[net.family.name]
    last = [m for n, m in net.backbone.named_modules() if n.endswith(name)][-1]
    seen = []
    handle = last.register_forward_pre_hook(lambda _, args: seen.append(args[0].shape[1]))
    with torch.no_grad():
        net(**batch)
    handle.remove()
    return seen[0]


@pytest.mark.parametrize(
    ("fam", "arch", "method", "attention"),
    [
        ("bert", None, LORA, "sdpa"),
        ("bert", None, LORA, "eager"),
        ("bert", None, {"name": "prefix"}, "sdpa"),
        ("bert", None, {"name": "prompt"}, "sdpa"),
        ("bert", None, {"name": "ia3"}, "sdpa"),
        ("bert", None, {"name": "frozen"}, "sdpa"),
        ("gpt2", None, LORA, "sdpa"),
        ("gpt2", None, LORA, "eager"),
        ("gpt2", None, {"name": "prefix"}, "sdpa"),
        ("gpt2", None, {"name": "prompt"}, "sdpa"),
        ("gpt2", None, {"name": "full"}, "sdpa"),
        ("llama", None, LORA, "sdpa"),
        ("llama", None, LORA, "eager"),
        ("llama", None, {"name": "prefix"}, "sdpa"),
        ("llama", None, {"name": "ia3"}, "sdpa"),
        ("llama", "qwen2", LORA, "sdpa"),
    ],
)
def test_the_pooled_row_alone_gives_every_output_and_gradient(fam, arch, method, attention):
    net, split, batch, labels = _setup(fam, method, arch)
    net.double().eval()  # no dropout: the two paths must agree to float64 rounding
    if attention != "sdpa" or method["name"] != "prefix":  # prefix tuning set its own attention function
        net.backbone.config._attn_implementation = attention
    before_out, before_grads = _outputs_and_gradients(net, split, batch, labels)
    assert _rows_seen_by_last_feed_forward(net, batch) >= batch["attention_mask"].shape[1]  # soft prompts add rows

    assert net.compute_pooled_rows_only()
    after_out, after_grads = _outputs_and_gradients(net, split, batch, labels)
    assert _rows_seen_by_last_feed_forward(net, batch) == 1
    torch.testing.assert_close(after_out, before_out, rtol=0, atol=1e-12)
    assert after_grads.keys() == before_grads.keys()
    for name, grad in before_grads.items():
        torch.testing.assert_close(after_grads[name], grad, rtol=0, atol=1e-12, msg=name)


@pytest.mark.parametrize("fam", ["bert", "gpt2", "llama"])
def test_the_pooled_row_alone_under_bf16_autocast(fam):
    net, split, batch, labels = _setup(fam)
    net.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before_out, before_grads = _outputs_and_gradients(net, split, batch, labels)
        net.compute_pooled_rows_only()
        after_out, after_grads = _outputs_and_gradients(net, split, batch, labels)
    assert after_out.dtype == before_out.dtype
    torch.testing.assert_close(after_out, before_out, rtol=0.05, atol=0.05)
    for name, grad in before_grads.items():
        assert after_grads[name].dtype == grad.dtype
        assert (after_grads[name] - grad).norm() <= 0.03 * grad.norm() + 1e-6, name  # bf16 rounding


@pytest.mark.parametrize(
    ("fam", "arch", "model"),
    [
        ("t5", None, {}),  # the decoder runs one position already; the encoder's every row is read
        ("bart", None, {}),
        ("bert", None, {"pooling": "mean"}),
        ("gpt2", None, {"pooling": "mean"}),
        ("llama", "mistral", {}),  # a sliding window: the row would see more than the window
    ],
)
def test_nothing_changes_where_the_pooling_reads_more_than_one_row(fam, arch, model):
    net, split, batch, labels = _setup(fam, None, arch, **model)
    net.eval()
    assert not net.compute_pooled_rows_only()
    assert all("forward" not in vars(m) for m in net.backbone.modules() if m is not net.backbone)


def test_attention_functions_without_one_row_masks_are_declined():
    net, *_ = _setup("bert")
    net.backbone.config._attn_implementation = "flash_attention_2"
    assert not net.compute_pooled_rows_only()


@pytest.mark.parametrize("fam", ["bert", "gpt2", "llama"])
def test_the_backbone_called_directly_computes_every_row(fam):
    """Only the task model's forward reads one row: anything else calling the backbone (a pretraining
    objective reading every position) gets every row of the last layer, as before."""
    net, _, batch, _ = _setup(fam)
    net.eval()
    embeds = torch.randn(3, 7, net.family.hidden_size(net.backbone.config))
    with torch.no_grad():
        before = net.backbone(inputs_embeds=embeds).last_hidden_state
        net.compute_pooled_rows_only()
        net(**batch)
        after = net.backbone(inputs_embeds=embeds).last_hidden_state
    torch.testing.assert_close(after, before, rtol=0, atol=0)


def test_a_copied_model_computes_with_its_own_layer():
    net, split, batch, labels = _setup("bert")
    net.eval()
    net.compute_pooled_rows_only()
    twin = copy.deepcopy(net)
    with torch.no_grad():
        for p in twin.backbone.parameters():
            p.mul_(1.5)
        assert _rows_seen_by_last_feed_forward(twin, batch) == 1
        changed, kept = twin(**batch), net(**batch)
    twin.pooled_rows_layer = None
    with torch.no_grad():
        torch.testing.assert_close(changed, twin(**batch), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(changed, kept)


@pytest.mark.parametrize(
    ("train", "applied"),
    [({}, True), ({"skip_unpooled_rows": False}, False), ({"gradient_checkpointing": True}, False)],
)
def test_training_applies_it_unless_switched_off(train, applied):
    raw = tiny_recipe("gpt2")
    raw["train"].update(train)
    recipe, _, net, split = build(raw)
    prepare_model(net, recipe.train, torch.device("cpu"))
    assert (net.pooled_rows_layer is not None) == applied
    batch = split.collate(list(range(12)))
    batch.pop("labels")
    assert _rows_seen_by_last_feed_forward(net, batch) == (1 if applied else batch["attention_mask"].shape[1])
