"""Prefix keys and values through transformers' attention-function interface.

In transformers 5 every attention module of BERT, GPT-2, T5 and BART projects its queries, keys and
values, then hands them to `ALL_ATTENTION_FUNCTIONS.get_interface(config._attn_implementation)`.
Prefix tuning registers one more implementation there, `peftx_prefix`, and switches the backbone to
it. The function looks up the prefix of the calling module (the attribute `PREFIX_ATTR`, set on the
modules that get prefixes), prepends its keys and values per head, widens the attention mask so
every query sees every prefix position, gives the prefix positions zero position bias (T5's
relative-position bias is a score term passed along as `position_bias`; prefix slots have no
position), and delegates to PyTorch's scaled-dot-product attention (transformers' `sdpa`).
Modules without a prefix pass straight through to `sdpa`.

The matching mask function materialises every mask as a boolean (batch, 1, query, key) tensor (the
`sdpa` masks, never skipped), so the prefix columns can be prepended; a `None` mask still works.
A transformers release that stops routing an attention through the interface would silently drop
prefixes; tests/test_prefix.py checks that every prefixed module changes the logits.

`Prefixes`, the trained prefixes themselves, lives here too: the `prefix` method's config
(`peftx.methods.prefix`) imports this module only when it adds prefixes to a model, so reading a
recipe imports no torch.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

from peftx.model.extras import ExportedExtra, MethodExtra

ATTENTION = "peftx_prefix"
PREFIX_ATTR = "peftx_prefix"  # on an attention module: () -> (keys, values), each (heads, length, head_dim)

PrefixSource = Callable[[], tuple[torch.Tensor, torch.Tensor]]


def _extend_mask(
    mask: torch.Tensor | None, module: nn.Module, query: torch.Tensor, key: torch.Tensor, length: int, causal: Any
) -> torch.Tensor | None:
    """The attention mask over [prefix; keys]: prefix columns visible to every query."""
    q_len, k_len = query.shape[2], key.shape[2]
    if mask is None:
        if causal is None:
            causal = getattr(module, "is_causal", True)  # what sdpa assumes for a module
        if not (causal and q_len > 1):
            return None  # full attention: nothing to mask, prefix included
        # sdpa would have used its is_causal flag, which aligns to the top-left corner once the key
        # is longer than the query: spell the causal pattern out instead (bottom-right aligned)
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril(k_len - q_len)[None, None]
    if mask.dtype == torch.bool:
        visible = torch.ones((*mask.shape[:-1], length), dtype=torch.bool, device=mask.device)
    else:  # an additive float mask
        visible = torch.zeros((*mask.shape[:-1], length), dtype=mask.dtype, device=mask.device)
    return torch.cat([visible, mask], dim=-1)


def prefix_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention with the module's prefix prepended to its keys and values (transformers' interface).

    Args:
        module: the calling attention module.
        query: (batch, heads, q_len, head_dim).
        key, value: (batch, heads, k_len, head_dim).
        attention_mask: (batch, 1, q_len, k_len) boolean or additive, or None.
        kwargs: passed on to sdpa (`position_bias` of T5 is widened with zeros first).

    Returns:
        (attention output (batch, q_len, heads, head_dim), None).
    """
    source: PrefixSource | None = getattr(module, PREFIX_ATTR, None)
    if source is not None:
        p_key, p_value = source()  # (heads, length, head_dim) each
        batch, length = key.shape[0], p_key.shape[1]
        attention_mask = _extend_mask(attention_mask, module, query, key, length, kwargs.get("is_causal"))
        key = torch.cat([p_key.to(key.dtype).expand(batch, -1, -1, -1), key], dim=2)  # (batch, heads, P+k, hd)
        value = torch.cat([p_value.to(value.dtype).expand(batch, -1, -1, -1), value], dim=2)
        if kwargs.get("position_bias") is not None:  # T5: (1 or batch, heads, q_len, k_len) score terms
            kwargs["position_bias"] = F.pad(kwargs["position_bias"], (length, 0))  # prefix slots: no position
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _materialised_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """transformers' sdpa mask, never skipped (so prefix columns can be prepended to it)."""
    kwargs.update(allow_is_causal_skip=False, allow_is_bidirectional_skip=False)
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register(ATTENTION, prefix_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, _materialised_mask)


class Prefixes(MethodExtra):
    """Key/value prefixes of a list of attention modules ("sites"); lives in `model.extras["prefix"]`.

    Without reparameterisation each site holds its own (2, heads, length, head_dim) tensor. With it,
    a shared (length, hidden) embedding goes through an MLP (hidden -> reparam_hidden -> tanh ->
    every site's keys and values); the MLP is what trains and what a run saves, so a reloaded run
    recomputes exactly the same prefixes.

    Args:
        sites: names of the attention modules, in order.
        shapes: (heads, head_dim) of each site.
        length: prefix positions per site.
        hidden: width of the reparameterisation embedding (the model's hidden size).
        reparam_hidden: MLP width, or None for direct prefixes.
        init_std: standard deviation of the direct prefixes' normal initialisation.
    """

    def __init__(
        self,
        sites: list[str],
        shapes: list[tuple[int, int]],
        length: int,
        hidden: int,
        reparam_hidden: int | None,
        init_std: float,
    ) -> None:
        super().__init__()
        self.sites = list(sites)
        self.shapes = list(shapes)
        self.length = length
        self.reparam = reparam_hidden is not None
        if not self.reparam:
            self.kv = nn.ParameterList(
                nn.Parameter(torch.randn(2, heads, length, head_dim) * init_std) for heads, head_dim in shapes
            )
        else:
            widths = [2 * heads * head_dim for heads, head_dim in shapes]
            self.bounds = [0, *itertools.accumulate(widths)]  # plain ints: works on the meta device too
            self.embedding = nn.Parameter(torch.randn(length, hidden))
            self.mlp_in = nn.Linear(hidden, reparam_hidden)
            self.mlp_out = nn.Linear(reparam_hidden, self.bounds[-1])

    def site(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, values) of one site, each (heads, length, head_dim)."""
        heads, head_dim = self.shapes[index]
        if not self.reparam:
            kv = self.kv[index]  # (2, heads, length, head_dim)
        else:
            lo, hi = self.bounds[index], self.bounds[index + 1]
            inner = torch.tanh(self.mlp_in(self.embedding))  # (length, reparam_hidden)
            flat = F.linear(inner, self.mlp_out.weight[lo:hi], self.mlp_out.bias[lo:hi])  # (length, 2*heads*hd)
            kv = flat.view(self.length, 2, heads, head_dim).permute(1, 2, 0, 3)  # (2, heads, length, head_dim)
        return kv[0], kv[1]

    def export_spec(self) -> ExportedExtra:
        """Its state; the prefixes act inside attention, which the exported template cannot apply."""
        return ExportedExtra(
            kind=None,
            tensors=dict(self.state_dict()),
            needs_peftx="act inside the attention, which plain transformers cannot",
        )

    def attach(self, modules: list[nn.Module]) -> None:
        """Give each site module its prefix source (a plain callable: not a registered submodule)."""
        for index, module in enumerate(modules):
            setattr(module, PREFIX_ATTR, functools.partial(self.site, index))
