"""The `timeseries` task: aeon's shipped data sets of each kind, one's own .ts / CSV / Parquet files,
forecasting windows as the M competitions cut them, and one-line errors for bad series files."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from peftx.cli import app
from peftx.errors import PeftxError
from peftx.spec.objective import seasonal_naive_scale
from peftx.tasks import TASKS
from peftx.tasks.timeseries.task import carve
from peftx.tasks.timeseries.windows import Windowing, cut, seasonal_naive
from tests.support.tiny import tiny_recipe

runner = CliRunner()


def config(**fields):
    return TASKS.get("timeseries").model_validate({"name": "timeseries", **fields})


def write_ts(path, rows: list[str], header: dict[str, str]) -> str:
    """A .ts file: `rows` are the data lines (channels split by ':', the label last)."""
    head = {"problemName": "x", "timeStamps": "false", "missing": "true", "univariate": "true", **header}
    path.write_text("".join(f"@{k} {v}\n" for k, v in head.items()) + "@data\n" + "".join(r + "\n" for r in rows))
    return str(path)


def class_rows(n: int, seed: int) -> list[str]:
    """Univariate series of 6-9 steps, rising ('up') or falling ('down')."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        up = i % 2 == 0
        x = np.linspace(0, 1, rng.integers(6, 10)) * (1 if up else -1) + rng.normal(0, 0.05)
        rows.append(",".join(f"{v:.3f}" for v in x) + (":up" if up else ":down"))
    return rows


# ----------------------------------------------------------------------------------------------------
# aeon's shipped data sets


def test_japanese_vowels_ragged_multichannel_classification():
    task = config(dataset="JapaneseVowels", split_seed=3)
    data = task.load()
    assert data.info.objective.kind == "classification" and data.info.labels == tuple(str(i) for i in range(1, 10))
    assert data.info.input_spec.dim == 12 and data.info.input_spec.kind == "series"
    sizes = {k: len(v) for k, v in data.splits.items()}
    assert sizes == {"train": 216, "validation": 54, "test": 370}  # the archive's 270 / 370, 20% held out
    lengths = {len(x) for x in data.splits["test"]["values"]}
    assert min(lengths) == 7 and max(lengths) == 29  # ragged, kept as they are
    counts = np.bincount(data.splits["validation"]["label"])
    assert (counts == 6).all()  # stratified: 6 of each speaker's 30
    top = np.bincount(data.splits["train"]["label"]).argmax()  # a tie here: the first class
    assert data.baselines["majority_class"] == pytest.approx(np.mean(np.asarray(data.splits["test"]["label"]) == top))


def test_covid3month_regression_and_its_mean_baseline():
    data = config(dataset="Covid3Month").load()
    objective = data.info.objective
    assert objective.kind == "regression" and objective.primary == "rmse"
    train = np.asarray(data.splits["train"]["label"])[:, 0]
    assert objective.loc[0] == pytest.approx(train.mean(), rel=1e-5)  # the target scale fitted on train
    test = np.asarray(data.splits["test"]["label"])[:, 0]
    assert data.baselines["mean_predictor"] == pytest.approx(np.sqrt(((test - train.mean()) ** 2).mean()), rel=1e-4)


def test_m1_yearly_windows_follow_the_m_competition_protocol():
    task = config(dataset="m1_yearly")
    data = task.load()
    objective = data.info.objective
    assert (objective.kind, objective.horizon, objective.season, objective.width) == ("forecasting", 6, 1, 6)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 1122, "validation": 181, "test": 181}
    from aeon.datasets import load_forecasting

    series = [np.asarray(s, dtype=float) for s in load_forecasting("m1_yearly_dataset")["series_value"]]
    for i in (0, 57, 180):  # test: each series' last 6 years; validation: the 6 before; context up to 12
        x = series[i]
        test, val = data.splits["test"][i], data.splits["validation"][i]
        assert np.allclose(test["label"][:6], x[-6:], rtol=1e-6)
        assert np.allclose(np.asarray(test["values"])[:, 0], x[-18:-6][-12:], rtol=1e-6)
        assert np.allclose(val["label"][:6], x[-12:-6], rtol=1e-6)
        assert test["label"][6] == pytest.approx(seasonal_naive_scale(x[:-6, None], 1), rel=1e-6)
    assert data.baselines == {"seasonal_naive": pytest.approx(data.baselines["seasonal_naive"])}  # season 1: one


def test_labelled_sets_can_be_forecast_not_read_as_another_kind():
    task = config(dataset="ItalyPowerDemand", objective="forecasting", horizon=4, context=8)
    assert task.describe().objective.kind == "forecasting"
    with pytest.raises(PeftxError, match="^task.objective: GunPoint is a classification data set; read it as"):
        config(dataset="GunPoint", objective="regression").describe()


# ----------------------------------------------------------------------------------------------------
# windows


def test_windows_cut_train_validation_test_without_overlap():
    x = np.arange(30, dtype=float).reshape(-1, 1) ** 1.5
    w = Windowing(horizon=3, context=5, season=2, min_context=2, stride=2)
    out = cut([x], w, ["s"], "src")
    test, val = out["test"][0], out["validation"][0]
    assert (test.origin, val.origin) == (27, 24)
    assert np.allclose(test.label[:3], x[27:, 0]) and np.allclose(test.context[:, 0], x[22:27, 0])
    assert test.label[3] == pytest.approx(np.abs(x[2:27] - x[:25]).mean())  # seasonal naive over the history
    origins = [win.origin for win in out["train"]]
    assert origins == list(range(3, 22, 2)) and all(o + 3 <= 24 for o in origins)  # targets end before validation
    assert len(out["train"][0].context) == 3  # a late start: a shorter context
    naive = seasonal_naive([test], 3, 2)  # repeats the last season of the context
    assert np.allclose(naive[0], [x[25, 0], x[26, 0], x[25, 0]])
    with pytest.raises(PeftxError, match=r"^s: 7 steps; validation and test windows need 8"):
        cut([x[:7]], w, ["s"], "src")


def test_carve_is_seeded_and_keeps_every_class():
    labels = ["a"] * 5 + ["b"] * 2
    keep, held = carve(labels, 7, 0.3, seed=1)
    assert carve(labels, 7, 0.3, seed=1) == (keep, held) and sorted(keep + held) == list(range(7))
    assert {labels[i] for i in keep} == {"a", "b"}
    assert sorted(labels[i] for i in held) == ["a", "a", "b"]  # 30% of each class, rounded


# ----------------------------------------------------------------------------------------------------
# one's own files


def test_ts_files_classify_and_carve_validation(tmp_path):
    header = {"classLabel": "true up down", "equalLength": "false"}
    train = write_ts(tmp_path / "train.ts", class_rows(20, 0), header)
    test = write_ts(tmp_path / "test.ts", class_rows(8, 1), header)
    data = config(data_files={"train": train, "test": test}).load()
    assert data.info.labels == ("down", "up")
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 16, "validation": 4, "test": 8}


def test_wide_csv_rows_may_end_early(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text("id,label,t1,t2,t3,t4\na,0.5,1,2,3,4\nb,1.5,1,2,,\nc,2.5,4,3,2,1\nd,3.5,1,1,1,1\ne,4.5,0,0,0,0\n")
    task = config(data_files=str(path), validation=0.2, test=0.2)
    assert task.describe().objective.kind == "regression"  # non-integer numbers
    data = task.load()
    lengths = sorted(len(x) for s in data.splits.values() for x in s["values"])
    assert lengths == [2, 4, 4, 4, 4]


def test_long_parquet_multichannel_forecasting(tmp_path):
    rows = []
    for sid in ("s1", "s2"):
        for t in range(20):
            rows.append({"id": sid, "time": 19 - t, "a": float(t), "b": 10.0 + t * (sid == "s2")})
    path = tmp_path / "long.parquet"
    pd.DataFrame(rows).to_parquet(path)
    task = config(data_files=str(path), horizon=2, context=4)
    info = task.describe()
    assert info.labels == ("a", "b") and info.objective.width == 4 and info.input_spec.dim == 2
    data = task.load()
    first = data.splits["test"][0]
    # sorted by time: s1's 'a' falls 19 -> 0; its last two steps are the test target, time-major
    assert first["label"][:4] == [1.0, 10.0, 0.0, 10.0]
    assert np.asarray(first["values"]).shape == (4, 2)


def test_missing_values_are_refused_or_interpolated(tmp_path):
    header = {"classLabel": "true up down", "equalLength": "false"}
    rows = class_rows(10, 0)
    rows[3] = "0.1,?,0.3,0.4:up"
    path = write_ts(tmp_path / "gaps.ts", rows, header)
    with pytest.raises(PeftxError, match=r"gaps.ts: series 4, channel 1, step 2: nan is not a finite number \(task"):
        config(data_files=str(path)).describe()
    data = config(data_files=str(path), missing="interpolate", validation=0.2, test=0.2).load()
    filled = [x for s in data.splits.values() for x in s["values"] if len(x) == 4 and x[0][0] == pytest.approx(0.1)]
    assert filled and filled[0][1][0] == pytest.approx(0.2)


# ----------------------------------------------------------------------------------------------------
# bad files: one line, exit 2


def _validate(tmp_path, task: dict) -> tuple[int, str]:
    raw = tiny_recipe("bert", tmp_path, task=task, input={"name": "patch_linear", "patch_len": 2, "stride": 1})
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = runner.invoke(app, ["validate", str(path)])
    return result.exit_code, result.output


def bad_files(tmp_path) -> dict[str, tuple[dict, str]]:
    ok = {"classLabel": "true up down", "equalLength": "false"}
    multi = {**ok, "univariate": "false", "dimensions": "2"}
    inf_rows = class_rows(6, 0)
    inf_rows[2] = "0.1,inf,0.3:up"
    two = [r.replace(":", ":" + r.split(":")[0] + ":", 1) for r in class_rows(4, 1)]  # 2 channels
    regress = {**ok, "classLabel": "false", "targetLabel": "true"}
    return {
        "ragged channels": (
            {"data_files": write_ts(tmp_path / "rag.ts", ["1,2,3:4,5:up", "1,2:3,4:down"], multi)},
            r"rag.ts: cannot read as a .ts file \(Channel 1 in case 1 has a different number of observations",
        ),
        "infinity": (
            {"data_files": write_ts(tmp_path / "inf.ts", inf_rows, ok), "missing": "interpolate"},
            r"inf.ts: series 3, channel 1, step 2: inf is not a finite number$",
        ),
        "wrong dimension": (
            {
                "data_files": {
                    "train": write_ts(tmp_path / "one.ts", class_rows(6, 0), ok),
                    "test": write_ts(tmp_path / "two.ts", two, multi),
                }
            },
            r"two.ts: series 1: 2 channel\(s\), the training series have 1$",
        ),
        "label type": (
            {"data_files": write_ts(tmp_path / "cls.ts", class_rows(6, 0), ok), "objective": "regression"},
            r"cls.ts: series 1: target 'up' is not a number \(task objective: regression\)$",
        ),
        "regression target": (
            {"data_files": write_ts(tmp_path / "reg.ts", ["1,2,3:abc"], regress)},
            r"reg.ts: cannot read as a .ts file \(could not convert string to float",
        ),
        "not a number": (
            {"data_files": _csv(tmp_path / "bad.csv", "id,label,t1,t2\na,up,1,x\n")},
            r"bad.csv:2: column 't2': 'x' is not a number$",
        ),
        "two labels": (
            {"data_files": _csv(tmp_path / "long.csv", "id,time,v,label\na,0,1,up\na,1,2,down\n")},
            r"long.csv: series a: column 'label' holds 2 labels",
        ),
        "no labels to classify": (
            {"data_files": _csv(tmp_path / "nolab.csv", "id,t1,t2\na,1,2\n"), "objective": "classification"},
            r"task.objective: classification needs labels; .*nolab.csv has none$",
        ),
    }


def _csv(path, text: str) -> str:
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "case",
    [
        "ragged channels",
        "infinity",
        "wrong dimension",
        "label type",
        "regression target",
        "not a number",
        "two labels",
        "no labels to classify",
    ],
)
def test_bad_series_files_are_one_line_exit_2(tmp_path, case):
    section, message = bad_files(tmp_path)[case]
    code, output = _validate(tmp_path, {"name": "timeseries", **section})
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in output, output
    assert re.search(message, lines[0]), lines[0]


def test_recipe_mistakes_are_caught_when_read():
    with pytest.raises(ValueError, match="give one of dataset"):
        config()
    with pytest.raises(ValueError, match="unknown series file type '.txt'"):
        config(data_files="a.txt")
    with pytest.raises(ValueError, match="dataset"):
        config(dataset="NotASet")


def test_predict_inputs_parse_and_keep_the_last_context():
    task = config(dataset="airline")
    x = task.parse(" ".join(str(v) for v in range(50)))
    assert x.shape == (36, 1) and x[0, 0] == 14 and x[-1, 0] == 49
    with pytest.raises(PeftxError, match="2 channel"):
        task.parse("[[1, 2], [3, 4]]")
    assert math.isclose(float(task.parse("[1.5, 2.5]")[1, 0]), 2.5)


def test_predict_files_in_the_task_format(tmp_path):
    header = {"classLabel": "true up down", "equalLength": "false"}
    train = write_ts(tmp_path / "train.ts", class_rows(12, 0), header)
    task = config(data_files=train)
    texts, targets = task.read_inputs(Path(write_ts(tmp_path / "p.ts", class_rows(3, 5), header)))
    assert targets == ["up", "down", "up"]
    assert [len(task.parse(t)) for t in texts] == [len(r.split(":")[0].split(",")) for r in class_rows(3, 5)]
    assert task.read_inputs(tmp_path / "inputs.txt") is None  # lines of numbers instead
