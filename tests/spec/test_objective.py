"""Objectives: their metrics against scikit-learn, their losses, label checks, and every objective on
every family (loss falls, only the intended parameters move)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, mean_absolute_error, r2_score

from peftx.errors import PeftxError
from peftx.spec.objective import (
    Classification,
    Forecasting,
    LabelError,
    MultiLabel,
    Regression,
    format_metric,
    objective_from_dict,
    seasonal_naive_scale,
)
from peftx.studies.selection import choose
from tests.support.helpers import build, changed, snapshot, train_steps
from tests.support.tiny import FAMILY_NAMES, tiny_recipe


def test_multilabel_metrics_equal_scikit_learn():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 4, generator=gen)
    truth = (torch.rand(50, 4, generator=gen) < 0.4).float()
    truth[:, 3] = 0  # a label with no positive is left out of mAP, as scikit-learn's warning says
    got = MultiLabel(("a", "b", "c", "d")).metrics(scores, truth)
    kept = truth[:, :3].numpy()
    assert got["map"] == pytest.approx(average_precision_score(kept, scores[:, :3].numpy(), average="macro"))
    predicted = (scores > 0).numpy()
    assert got["micro_f1"] == pytest.approx(f1_score(truth.numpy(), predicted, average="micro"))
    assert got["macro_f1"] == pytest.approx(f1_score(truth.numpy(), predicted, average="macro", zero_division=0))


def test_regression_metrics_equal_scikit_learn_and_the_loss_is_in_standard_units():
    gen = torch.Generator().manual_seed(1)
    y = torch.randn(40, 2, generator=gen) * torch.tensor([10.0, 0.1]) + 5
    pred = y + torch.randn(40, 2, generator=gen) * torch.tensor([2.0, 0.02])
    objective = Regression(("a", "b")).fitted(y)
    got = objective.metrics(pred, y)
    assert got["r2"] == pytest.approx(r2_score(y.numpy(), pred.numpy()), rel=1e-5)
    assert got["mae"] == pytest.approx(mean_absolute_error(y.numpy(), pred.numpy()), rel=1e-5)
    # errors of 20% of each target's deviation weigh alike, whatever the target's scale
    std = y.std(0, unbiased=False)
    assert objective.loss(y + 0.2 * std, y).item() == pytest.approx(0.04, rel=1e-4)


def test_forecasting_metrics_scale_by_the_seasonal_naive_error():
    history = np.array([[1.0], [3.0], [2.0], [4.0]])
    assert seasonal_naive_scale(history, 1) == pytest.approx(5 / 3)  # |2| + |1| + |2| over 3
    assert seasonal_naive_scale(np.ones((5, 1)), 1) == 1.0  # a flat history never divides by zero
    objective = Forecasting(("y",), horizon=2)
    labels = torch.tensor([[10.0, 20.0, 2.0]])  # two future values, then the scale
    got = objective.metrics(torch.tensor([[12.0, 16.0]]), labels)
    assert got["mase"] == pytest.approx((2 + 4) / 2 / 2)
    assert got["mse"] == pytest.approx((4 + 16) / 2)
    assert got["smape"] == pytest.approx((2 * 2 / 22 + 2 * 4 / 36) / 2)
    assert objective.loss(torch.tensor([[12.0, 16.0]]), labels).item() == pytest.approx((1 + 4) / 2)


def test_labels_that_do_not_fit_the_objective_name_the_example():
    with pytest.raises(LabelError, match="example 1: label 5 outside 0..2"):
        MultiLabel(("a", "b", "c")).label_tensor([[0], [5]])
    with pytest.raises(LabelError, match="example 0: 2 target"):
        Regression(("y",)).label_tensor([[1.0, 2.0]])
    with pytest.raises(LabelError, match="finite"):
        Regression(("y",)).label_tensor([float("nan")])
    with pytest.raises(LabelError, match="positive scale"):
        Forecasting(("y",), horizon=1).label_tensor([[1.0, 0.0]])


def test_every_objective_round_trips_through_task_json():
    for objective in (
        Classification(("a", "b")),
        MultiLabel(("a", "b")),
        Regression(("y",), (1.5,), (2.0,)),
        Forecasting(("x", "y"), horizon=3, season=12, loss_kind="mae"),
    ):
        assert objective_from_dict(json.loads(json.dumps(objective.to_dict()))) == objective
        # the primary metric comes first: displays and trackers show it without knowing the objective
        assert objective.direction in ("higher", "lower")


def test_lower_is_better_metrics_choose_the_smallest_mean():
    tried = {1e-3: [(0, 0.5), (1, 0.7)], 3e-4: [(0, 0.9), (1, 0.8)]}
    assert choose(tried)[0] == 3e-4
    assert choose(tried, higher_is_better=False)[0] == 1e-3
    assert format_metric("accuracy", 0.5) == "50.00%" and format_metric("rmse", 0.123456) == "0.1235"


# ---- every objective on every family --------------------------------------------------------------


def _regression_rows(n: int, seed: int) -> list[tuple[str, float]]:
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        x = rng.normal(size=(int(rng.integers(4, 9)), 2))
        rows.append((json.dumps(x.round(3).tolist()), float(3 * x[:, 0].mean() + 10)))
    return rows


MULTI = {"a": "x;y", "b": "y", "c": "x;z", "d": ""}  # a symbol's labels (d: none)


def _multilabel_rows(n: int, seed: int) -> list[tuple[str, str]]:
    symbols = np.random.default_rng(seed).choice(list(MULTI), size=n)
    return [(str(s), MULTI[s]) for s in symbols]


def objective_task(objective: str, tmp_path) -> dict:
    """A `sequences` task section over a small CSV for `objective` (regression: vectors, a target that
    is a mean of the inputs; multilabel: a set of labels per symbol, `MULTI`)."""
    path = tmp_path / f"{objective}.csv"
    rows = _regression_rows(160, 0) if objective == "regression" else _multilabel_rows(160, 0)
    lines = ["sequence,label"] + [f'"{x.replace(chr(34), chr(34) * 2)}",{y}' for x, y in rows]
    path.write_text("\n".join(lines) + "\n")
    task = {"name": "sequences", "data_files": str(path), "objective": objective}
    if objective == "regression":
        task["inputs"] = "vectors"
    else:
        task["label_separator"] = ";"
    return task


@pytest.mark.parametrize("objective", ["regression", "multilabel"])
@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_each_objective_trains_on_each_family(family, objective, tmp_path):
    task = objective_task(objective, tmp_path)
    inputs = {"name": "linear"} if objective == "regression" else {"name": "learned"}
    _, data, model, split = build(tiny_recipe(family, tmp_path, task=task, input=inputs))
    assert model.head[1].out_features == data.info.objective.width
    before, loss_before = snapshot(model), _fixed_loss(model, split)
    train_steps(model, split, steps=60, lr=1e-2)
    assert _fixed_loss(model, split) < loss_before - 0.02  # well beyond eval-mode noise: none here
    moved = changed(before, model)
    assert moved and all("lora_" in n or n.startswith(("head.", "input.")) for n in moved)


def _fixed_loss(model, split) -> float:
    """The objective's loss on the first 64 training examples, in eval mode."""
    model.eval()
    batch = split.collate(list(range(64)))
    labels = batch.pop("labels")
    with torch.no_grad():
        loss = split.objective.loss(model(**batch), labels).item()
    model.train()
    return loss


def test_a_regression_head_starts_at_the_training_mean(tmp_path):
    _, data, model, split = build(tiny_recipe("bert", tmp_path, task=objective_task("regression", tmp_path)))
    objective = data.info.objective
    assert objective.loc[0] == pytest.approx(float(torch.cat([split.labels]).mean()), rel=1e-4)
    assert model.output_scale.loc.item() == pytest.approx(objective.loc[0])
    bad = objective_task("regression", tmp_path)
    (tmp_path / "regression.csv").write_text('sequence,label\n"[[1,2]]",x\n"[[1,2]]",2\n')
    with pytest.raises(PeftxError, match=r"regression.csv:2: column 'label': target 'x' is not a number"):
        build(tiny_recipe("bert", tmp_path, task=bad))
