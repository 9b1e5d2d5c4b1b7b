"""Checks of a valid recipe against its task that need neither a model nor data: what `peftx run`,
`validate` and `sweep` refuse right after the schema (importing no torch), before anything is built."""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftx.errors import PeftxError

if TYPE_CHECKING:
    from peftx.recipe.schema import RecipeBase


def check_global_batch(recipe: RecipeBase, n_train: int | None = None) -> None:
    """Refuse accumulating more micro-batches per step than the training split holds: one step would go
    round the split more than once, and `train.grad_accum: 1e9` would run for days before its first
    step. A batch_size alone beyond the split is fine (the batch is the whole split).

    Args:
        n_train: the training split's size; None: as far as it is known without loading data
            (`TaskConfig.train_size`), so that `validate` checks it; `run` checks again once loaded.

    Raises:
        PeftxError: one line naming train.grad_accum, the global batch and the split's size.
    """
    train = recipe.train
    n_train = recipe.task.train_size() if n_train is None else n_train
    if n_train is None or train.grad_accum <= 1:
        return
    global_batch = train.batch_size * train.grad_accum
    if global_batch > n_train:
        raise PeftxError(
            f"train.grad_accum: {train.grad_accum:,} x train.batch_size {train.batch_size} = {global_batch:,} "
            f"examples per step, more than the {n_train:,} of the training split "
            f"(at most {max(n_train // train.batch_size, 1):,} at this batch size)"
        )
