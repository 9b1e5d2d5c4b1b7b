"""Fast dropout and attention keep little for backward: a CPU dropout mask is rebuilt from its seed,
and attention's (batch, heads, queries, keys) scores, probabilities and mask are computed again in
backward. Outputs and gradients equal those of the same math with every such tensor kept, bit for bit
in float32 and float64 (the same random masks: the seeds come from torch's generator alike)."""

from __future__ import annotations

import pytest
import torch

from peftx.training.speed import attention_with_dropout, fast_dropout
from peftx.training.speed.dropout import _QUANTUM, _keep_mask, _mask_seed, _probs, _score_biases


def kept_for_backward(fn, *args) -> list[torch.Tensor]:
    """The tensors autograd saves while `fn(*args)` runs."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn(*args)
    return saved


def attention_keeping_everything(q, k, v, mask, p, causal):
    """The same math and random stream, with the probabilities and the mask kept as tensors."""
    scale = q.shape[-1] ** -0.5
    probs = _probs(q, k, _score_biases(q, k, mask, causal), scale)
    cut = round(p * _QUANTUM)
    keep = _keep_mask(probs.shape, cut, probs.dtype, probs.device, _mask_seed(probs.device))
    return torch.addcmul(torch.zeros((), dtype=probs.dtype), probs, keep, value=1 / (1 - cut / _QUANTUM)) @ v


def qkv(dtype, seed=0, shape=(2, 3, 7, 5)):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, dtype=dtype, generator=gen, requires_grad=True) for _ in range(3)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("mask_kind", ["none", "padding", "additive"])
def test_attention_equals_the_math_that_keeps_everything(dtype, causal, mask_kind):
    q, k, v = qkv(dtype)
    padding = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    padding[1, ..., 5:] = False
    mask = {"none": None, "padding": padding, "additive": torch.zeros(2, 1, 1, 7, dtype=dtype) - 1e4 * ~padding}
    grad = torch.randn(2, 3, 7, 5, dtype=dtype)
    outs, grads = [], []
    for fn in (attention_with_dropout, attention_keeping_everything):
        torch.manual_seed(1)
        out = fn(q, k, v, mask[mask_kind], 0.2, causal)
        outs.append(out)
        grads.append(torch.autograd.grad(out, (q, k, v), grad))
    assert torch.equal(outs[0], outs[1])
    for ours, theirs in zip(*grads):
        assert torch.equal(ours, theirs)


def test_attention_gradient_is_the_numerical_one():
    q, k, v = qkv(torch.float64, shape=(1, 2, 4, 3))

    def attention(q, k, v):
        torch.manual_seed(3)  # the same dropout mask at every evaluation
        return attention_with_dropout(q, k, v, None, 0.3)

    assert torch.autograd.gradcheck(attention, (q, k, v))


def test_attention_keeps_no_queries_by_keys_tensor():
    """Training attention saves q, k, v (and the masks' biases); inference and no dropout are unchanged."""
    q, k, v = qkv(torch.float32, shape=(4, 2, 64, 8))
    saved = kept_for_backward(attention_with_dropout, q, k, v, None, 0.1)
    assert saved and max(t.numel() for t in saved) == q.numel()
    kept_everything = kept_for_backward(attention_keeping_everything, q, k, v, None, 0.1, False)
    assert max(t.numel() for t in kept_everything) == 4 * 2 * 64 * 64


def test_cpu_dropout_keeps_its_seed_not_its_mask():
    torch.manual_seed(0)
    x = torch.randn(300, 200, requires_grad=True)
    assert kept_for_backward(fast_dropout, x, 0.1) == []
    torch.manual_seed(0)
    y = fast_dropout(x, 0.1)
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.equal(grad == 0, y == 0)  # the rebuilt mask is the forward's
    assert torch.equal(grad[y != 0], torch.full_like(grad[y != 0], 1 / (1 - round(0.1 * _QUANTUM) / _QUANTUM)))


def test_attention_under_bf16_autocast_keeps_dtypes():
    """Backward runs under the forward's autocast: the gradients take the inputs' dtypes, and equal the
    kept-everything math's to bf16 rounding."""
    q, k, v = qkv(torch.float32, shape=(2, 2, 6, 8))
    grads = []
    for fn in (attention_with_dropout, attention_keeping_everything):
        torch.manual_seed(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(q, k, v, None, 0.2, False)
        assert out.dtype == torch.bfloat16
        grads.append(torch.autograd.grad(out.float().square().sum(), (q, k, v)))
    for ours, theirs in zip(*grads):
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, theirs, rtol=0.02, atol=0.02)
