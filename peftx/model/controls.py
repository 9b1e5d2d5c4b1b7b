"""Shuffled weights (`model.init: shuffled`): the pretrained checkpoint with every tensor's entries
permuted, the control that separates what pretraining put into the weights' *structure* (knowledge)
from what it put into their *statistics* (scale, spread, outliers).

Every floating-point parameter of the backbone is shuffled within itself: attention and feed-forward
matrices, their biases, the token and position embeddings, and the layer norms' gains and biases.
Each tensor keeps its exact multiset of values (so its mean, variance, every higher moment and its
outliers), and loses which entry sits where. Norms and biases are shuffled too, because keeping them
would keep nothing: a norm gain is tied to channels whose meaning the shuffled matrices no longer
carry, so a kept gain vector is as unstructured as a permuted one, and permuting it keeps the rule
uniform (one rule, no judgement about which vectors "count"). This is the exact-distribution form of
the per-layer mean-and-variance initialisation of Raghu et al. (NeurIPS 2019, "Transfusion"), which
draws each layer's weights i.i.d. from the pretrained layer's mean and variance.

Tied tensors (T5's and BART's shared token embedding) are one parameter and are shuffled once, so they
stay tied. Buffers (position ids, rotary frequencies) are not weights and are left alone. The
permutations come from one generator seeded with the run's seed, drawn in the backbone's parameter
order, so a run and its reload (`peftx predict`) shuffle identically.
"""

from __future__ import annotations

import torch
from torch import nn


def shuffle_weights(backbone: nn.Module, seed: int) -> int:
    """Permute the entries of every floating-point parameter of `backbone` in place.

    Args:
        backbone: the loaded (pretrained) backbone; meta tensors are left alone (nothing to permute).
        seed: the run's seed.

    Returns:
        The number of tensors shuffled.
    """
    gen = torch.Generator().manual_seed(seed)
    count = 0
    with torch.no_grad():
        for _, p in backbone.named_parameters():  # tied parameters come once
            if not p.is_floating_point() or p.is_meta or p.numel() < 2:
                continue
            order = torch.randperm(p.numel(), generator=gen).to(p.device)
            flat = p.data.reshape(-1)
            p.data.copy_(flat[order].reshape(p.shape))
            count += 1
    return count
