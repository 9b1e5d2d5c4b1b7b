"""`train.skip_unpooled_rows`: the backbone's last layer computes only the row its pooling reads.

The family writes that layer's forward for one row per example (`Family.last_layer_rows`, built from
`peftx.families.pooled_rows`); here it is put in the place of the layer's own forward for the task
model's forward passes, which read only that row. Called any other way (a pretraining objective
reading every position, a user's code), the layer computes every row as before. Its output keeps the
layer's shape: the computed row in its place, the layer's input elsewhere (read by nothing).

For MiniLM-L6 with [CLS] pooling that is 5/6 of the last layer's products and element-wise work, in
forward and backward: about a seventh of a step. Float rounding may differ (products of one row
against many), and dropout draws other random numbers for the smaller tensors.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager, nullcontext
from functools import partial
from types import MethodType
from typing import TYPE_CHECKING

import torch
from torch import nn

from peftx.families.pooled_rows import ONE_ROW_POOLINGS, pooled_row

if TYPE_CHECKING:
    from collections.abc import Iterator

    from peftx.families import Family
    from peftx.families.pooled_rows import RowsForward

__all__ = ["install_pooled_rows", "reading_pooled_rows"]

# On the patched layer: (rows (batch,), mask (batch, seq)) while reading one row, else None; and its own
# forward. Attributes of the layer, not of a closure, so that a copied model computes with its own layer.
_ROWS = "_peftx_pooled_rows"
_FULL = "_peftx_every_row_forward"


def install_pooled_rows(backbone: nn.Module, family: Family, pooling: str) -> str | None:
    """Give `backbone`'s last layer its one-row forward, used inside `reading_pooled_rows`.

    Returns:
        The layer's module name in `backbone`, or None where nothing applies: a pooling reading more
        than one row, a family without a one-row forward, or a layer its family declines.
    """
    if family.last_layer_rows is None or pooling not in ONE_ROW_POOLINGS:
        return None
    name = family.last_layer(backbone)
    if name is None:
        return None
    layer = backbone.get_submodule(name)
    if getattr(layer, _ROWS, False) is None:  # installed already
        return name
    rows_forward = family.last_layer_rows(layer)
    if rows_forward is None:
        return None
    setattr(layer, _ROWS, None)
    setattr(layer, _FULL, layer.forward)
    layer.forward = MethodType(partial(_forward, rows_forward=rows_forward), layer)
    return name


def _forward(layer: nn.Module, hidden: torch.Tensor, *args, rows_forward: RowsForward, **kwargs) -> torch.Tensor:
    reading = getattr(layer, _ROWS)
    if reading is None:
        return getattr(layer, _FULL)(hidden, *args, **kwargs)
    rows, mask = reading
    out = rows_forward(layer, hidden, rows, mask, kwargs)  # (batch, 1, hidden)
    return hidden.scatter(1, rows.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1]), out.to(hidden.dtype))


def reading_pooled_rows(
    backbone: nn.Module, layer_name: str | None, pooling: str, mask: torch.Tensor
) -> AbstractContextManager:
    """Within: the installed layer (`install_pooled_rows`'s name; None: nothing) computes only the row
    `pooling` reads of each example of the padded batch whose mask is `mask`."""
    if layer_name is None:
        return nullcontext()
    return _reading(backbone.get_submodule(layer_name), (pooled_row(pooling, mask), mask))


@contextmanager
def _reading(layer: nn.Module, reading: tuple[torch.Tensor, torch.Tensor]) -> Iterator[None]:
    setattr(layer, _ROWS, reading)
    try:
        yield
    finally:
        setattr(layer, _ROWS, None)
