"""Pieces of a last layer that computes only the rows its pooling reads (`Family.last_layer_rows`).

A classifier reads one position of the backbone's last layer: [CLS] (BERT) or the last real token
(GPT-2, LLaMA). In a transformer layer only attention mixes positions, and only through its keys and
values: the last layer needs keys and values of every position, but queries, attention output,
feed-forward and norms of the pooled row alone. Each family writes its layer's forward for that row
with these helpers, calling the layer's own modules (so LoRA and every other adapter on them apply)
and transformers' attention-function interface (so prefix tuning's keys apply). The row's query sees
exactly the real positions, whether the layer is causal or not: [CLS] sees all of them, and the last
real token sees every one before it, which is all of them with right padding.

Imports no torch at module level: a family is declared without it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

    # (the layer, its input (batch, seq, hidden), pooled row per example (batch,), padding mask (batch,
    #  seq), the keyword arguments the layer was called with) -> its output at those rows (batch, 1, hidden).
    # The layer comes as an argument, not in a closure: a copied model computes with its own layer.
    RowsForward = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]], torch.Tensor]

# The attention functions that take a (batch, 1, 1, keys) mask for one query row: transformers' math and
# SDPA paths, and prefix tuning's (which widens the mask and calls SDPA). Others (flash, flex) take
# masks in forms of their own: a layer using one computes every row.
ROW_MASK_ATTENTION = ("eager", "sdpa", "peftx_prefix")


def pooled_row(pooling: str, mask: torch.Tensor) -> torch.Tensor:
    """The row (batch,) each example's `pooling` reads (one of `ONE_ROW_POOLINGS`); `mask` (batch, seq)
    is 1 on real positions, padding on the right."""
    return _ROW_OF[pooling](mask)


_ROW_OF = {
    "cls": lambda mask: mask.new_zeros(len(mask)).long(),  # the first position
    "last": lambda mask: mask.sum(1).long() - 1,  # the last real position
}
ONE_ROW_POOLINGS = tuple(_ROW_OF)  # the poolings that read one row of the last layer


def pick(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(batch, seq, width) -> (batch, 1, width): the row `rows[i]` of each example i."""
    return x.expand(len(rows), -1, -1).gather(1, rows.view(-1, 1, 1).expand(-1, 1, x.shape[-1]))


def heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(batch, seq, heads x head_dim) -> (batch, heads, seq, head_dim), as attention modules split."""
    return x.view(*x.shape[:-1], -1, head_dim).transpose(1, 2)


def attend(
    module: nn.Module,
    rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    mask: torch.Tensor,
    dropout: float,
) -> torch.Tensor:
    """`module`'s attention for one query row per example, through transformers' interface.

    Args:
        module: the attention module (its config names the attention function; its `scaling`).
        rows: queries (batch, heads, 1, head_dim); keys and values (batch, kv heads, seq, head_dim).
        mask: (batch, seq), 0 at positions the row must not see.
        dropout: on the attention probabilities.

    Returns:
        (batch, 1, heads x head_dim), ready for the output projection.
    """
    import torch
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    query, key, value = rows
    implementation = module.config._attn_implementation
    visible = mask.bool()[:, None, None, :]
    if implementation == "eager":  # the math path adds its mask to the scores
        masked = torch.zeros(visible.shape, dtype=query.dtype, device=query.device)
        visible = masked.masked_fill_(~visible, torch.finfo(query.dtype).min)
    function = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, _eager(module))
    out, _ = function(module, query, key, value, visible, dropout=dropout, scaling=module.scaling)
    return out.reshape(len(out), 1, -1)


def _eager(module: nn.Module) -> Callable | None:
    """The math path of the transformers module that defines `module`'s class (each model's own)."""
    return getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)


def attention_takes_rows(module: nn.Module) -> bool:
    """Whether `module`'s attention function takes a one-row mask (`ROW_MASK_ATTENTION`)."""
    implementation = module.config._attn_implementation
    return implementation in ROW_MASK_ATTENTION and (implementation != "eager" or _eager(module) is not None)
