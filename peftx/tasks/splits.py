"""Checks, reference baselines and held-out splits of a task's loaded data, used by the tasks' `load()`.

`datasets` and numpy are imported by the functions that read loaded data: every task module imports
this one when it registers, and reading a recipe imports neither.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from peftx.errors import PeftxError
from peftx.tasks.base import SPLITS

if TYPE_CHECKING:
    import datasets
    import numpy as np


def check_splits(splits: datasets.DatasetDict, task: str, where: str | Path, num_classes: int | None = None) -> None:
    """Refuse task data that would fail only once training runs: a missing or empty split, or labels
    outside 0..num_classes-1.

    Args:
        task: the task's name, for messages.
        where: the data's source (a folder or "task"), for messages.
        num_classes: check labels against it (None: the split's ClassLabel feature).

    Raises:
        PeftxError: one line naming the split.
    """
    import datasets
    import numpy as np

    for split in SPLITS:
        if split not in splits:
            raise PeftxError(f"{where}: {task} data lacks its {split} split")
        ds = splits[split]
        if len(ds) == 0:
            raise PeftxError(f"{where}: {task} {split} split is empty")
        n = num_classes
        if n is None and isinstance(ds.features.get("label"), datasets.ClassLabel):
            n = ds.features["label"].num_classes
        labels = np.asarray(ds["label"])
        if n is not None and len(labels) and (labels.min() < 0 or labels.max() >= n):
            bad = int(labels[(labels < 0) | (labels >= n)][0])
            row = int(np.argmax((labels < 0) | (labels >= n)))
            raise PeftxError(f"{where}: {task} {split} example {row}: label {bad} outside 0..{n - 1}")


def majority_accuracy(train_labels: list[int], test_labels: list[int]) -> float:
    """Accuracy on test of always predicting the most common training label."""
    top = Counter(train_labels).most_common(1)[0][0]
    return sum(y == top for y in test_labels) / max(len(test_labels), 1)


def nearest_centroid_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> float:
    """Accuracy on test of assigning each example to the class whose mean training feature vector is
    nearest (Euclidean): a cheap reference a model should beat by far."""
    import numpy as np

    classes = np.unique(train_y)
    centroids = np.stack([train_x[train_y == c].mean(0) for c in classes])  # (classes, features)
    d = (test_x**2).sum(1, keepdims=True) - 2 * test_x @ centroids.T + (centroids**2).sum(1)  # (n, classes)
    return float((classes[d.argmin(1)] == test_y).mean()) if len(test_y) else 0.0


def hold_out(
    present: dict[str, datasets.Dataset], missing: list[str], fractions: dict[str, float], seed: int
) -> dict[str, datasets.Dataset]:
    """Carve the missing splits out of train (seeded permutation) by their fractions.

    Args:
        present: the splits the data had (train among them).
        missing: the splits to carve, in order.
        fractions: split -> its share of the training rows (0.1 where not given).

    Raises:
        PeftxError: too few training rows to leave any after carving.
    """
    import numpy as np

    train = present["train"]
    order = np.random.default_rng(seed).permutation(len(train))
    out, start = dict(present), 0
    for split in missing:
        n = max(1, round(fractions.get(split, 0.1) * len(train)))
        out[split] = train.select(sorted(order[start : start + n]))
        start += n
    if start >= len(train):
        raise PeftxError(f"task: {len(train)} training rows are too few to hold out {missing}")
    out["train"] = train.select(sorted(order[start:]))
    return out
