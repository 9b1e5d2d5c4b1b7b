"""peftx on time series beside aeon's classical methods, on the same splits, with published numbers.

For each data set (aeon's shipped ones; the kind picks the shipped recipe
`recipes/timeseries_{classification,regression,forecast}_lora.yaml` as the base) and each seed:

peftx arms (the offline MiniLM, BERT family; `--arms`):
- `lora`: the recipe (LoRA at about 2%, `patch_linear` input), pretrained body;
- `lora_scratch`: the same architecture with random weights (the from-scratch twin);
- `fpt`: the frozen body with the `fpt` preset (layer norms, positions, input layer, head);
- `fpt_scratch`: the same on random weights;
- `full`: every weight trained (`--full-lr`, default 1e-4);
- `digits`: LoRA with the `digits` input (LLMTime: values as the model's own digit tokens), pretrained;
- `digits_learned`: the same tokens through a fresh random table (is the pretrained vocabulary what helps?).

Classical methods from aeon on the same test split, fitted on the whole archive training split (the
peftx arms train on 80% of it and select their step on the other 20%): MiniRocket (classification),
ROCKET regressor (regression); for forecasting, fitted per series on everything before the test origin:
naive and seasonal-naive (the task's own baselines), ETS (aeon's AutoETS) and ARIMA (aeon's AutoARIMA).

Published numbers are printed beside them with their source; they come from other protocols and
hardware and are not re-run here.

    python scripts/bench_timeseries.py --datasets JapaneseVowels --steps 20 --seeds 0   # a small look
    python scripts/bench_timeseries.py --seeds 0,1,2                                     # the full table

Writes `<out>/results.json` (every row, the command, the machine, the scale) and `<out>/results.md`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import yaml
from filelock import FileLock, Timeout

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from peftx.errors import Interrupted  # noqa: E402
from peftx.recipe import validate_recipe  # noqa: E402
from peftx.runs.record import RunRecord  # noqa: E402
from peftx.runs.run import run  # noqa: E402
from peftx.spec.objective import LOWER_IS_BETTER, PERCENT_METRICS, format_metric  # noqa: E402
from peftx.studies.report.rows import welch_interval  # noqa: E402
from peftx.tasks import TASKS  # noqa: E402
from peftx.tasks.timeseries.files import CLASSIFICATION, FORECASTING, REGRESSION  # noqa: E402
from peftx.util.env import versions  # noqa: E402

RECIPE = {"classification": "classification", "regression": "regression", "forecasting": "forecast"}
ARMS = {
    "lora": {},
    "lora_scratch": {"model.pretrained": False},
    "fpt": {"method": {"name": "frozen", "preset": "fpt"}},
    "fpt_scratch": {"method": {"name": "frozen", "preset": "fpt"}, "model.pretrained": False},
    "full": {"method": {"name": "full"}},
    "digits": {"input": {"name": "digits", "integers": 1, "decimals": 2}},
    "digits_learned": {"input": {"name": "digits", "integers": 1, "decimals": 2, "table": "learned"}},
}
DEFAULT_ARMS = "lora,lora_scratch,fpt,digits"
# (data set) -> rows of (method, test value of the primary metric, source). Not re-run here.
PUBLISHED = {
    "JapaneseVowels": [
        ("GPT4TS (frozen GPT-2, 6 layers)", 0.986, "Zhou et al., One Fits All, NeurIPS 2023, Table 25"),
        ("TimesNet", 0.984, "ibid., Table 25"),
        ("ROCKET", 0.962, "ibid., Table 25"),
        ("XGBoost", 0.865, "ibid., Table 25"),
    ],
    "GunPoint": [
        ("1-NN Euclidean", 0.913, "UCR archive summary (Dau et al. 2019): error 0.087"),
        ("1-NN DTW, full window", 0.907, "UCR archive summary (Dau et al. 2019): error 0.093"),
    ],
}


def kind_of(dataset: str) -> str:
    return "classification" if dataset in CLASSIFICATION else "regression" if dataset in REGRESSION else "forecasting"


def arm_recipe(dataset: str, arm: str, seed: int, args: argparse.Namespace) -> dict:
    """The raw recipe of one peftx arm: the kind's shipped recipe with the data set and the arm's changes."""
    path = ROOT / "recipes" / f"timeseries_{RECIPE[kind_of(dataset)]}_lora.yaml"
    raw = yaml.safe_load(path.read_text())
    raw["task"] = {"name": "timeseries", "dataset": dataset} | (
        {k: v for k, v in raw["task"].items() if k not in ("name", "dataset")}
        if raw["task"]["dataset"] == dataset
        else {}
    )
    for key, value in ARMS[arm].items():
        if "." in key:
            section, field = key.split(".")
            raw[section][field] = value
        else:
            raw[key] = value
    if arm == "full":
        raw["train"]["lr"] = args.full_lr
    if args.steps:
        raw["train"]["steps"] = args.steps
        raw["train"]["eval_every"] = max(1, min(raw["train"]["eval_every"], args.steps // 2 or 1))
    raw["train"]["precision"] = "fp32"  # the numbers must not depend on the machine's bf16 speed
    raw["seed"] = seed
    raw["name"] = f"{dataset}_{arm}_s{seed}"
    raw["output"] = {"dir": str(Path(args.out) / "runs")}
    return raw


def peftx_row(dataset: str, arm: str, seed: int, args: argparse.Namespace) -> dict:
    """Train one arm; its test and validation metrics, trained share and time."""
    raw = arm_recipe(dataset, arm, seed, args)
    start = time.perf_counter()
    try:
        result = run(validate_recipe(raw), overwrite=True)
    except Interrupted:
        raise  # a stop request (Ctrl-C, SIGTERM) stops the table, not just this arm
    except Exception as e:  # a failed arm is a row that says so; the table goes on
        return {"dataset": dataset, "method": f"peftx {arm}", "seed": seed, "error": f"{type(e).__name__}: {e}"}
    record: RunRecord = result.record
    m = record.metrics
    return {
        "dataset": dataset,
        "method": f"peftx {arm}",
        "seed": seed,
        "steps": args.steps,
        "primary": m.primary,
        "direction": m.direction,
        "test": m.test,
        "val": m.val,
        "trainable_pct": record.budget.trainable_pct if record.budget else None,
        "truncated": record.truncated,
        "baselines": record.baselines,
        "seconds": round(time.perf_counter() - start, 1),
    }


def _padded(series: list, length: int) -> np.ndarray:
    """Series as aeon's (cases, channels, time), shorter ones padded with their last value to `length`
    (MiniRocket and ROCKET take equal lengths only)."""
    from aeon.transformations.collection.unequal_length import Padder

    cases = [np.asarray(x, dtype=np.float64).T for x in series]  # (channels, time)
    return Padder(padded_length=length, fill_value="last").fit_transform(cases)


def _seasonal_naive(history: np.ndarray, horizon: int, season: int) -> np.ndarray:
    m = season if len(history) >= season else 1
    return np.array([history[len(history) - m + j % m] for j in range(horizon)])


def classical_rows(dataset: str) -> list[dict]:
    """aeon's classical methods on the archive's own split (see the module docstring)."""
    task = TASKS.get("timeseries").model_validate({"name": "timeseries", "dataset": dataset})
    kind = kind_of(dataset)
    if kind == "forecasting":
        return forecast_rows(task)
    from aeon.classification.convolution_based import MiniRocketClassifier
    from aeon.regression.convolution_based import RocketRegressor

    data = task.load()
    objective = data.info.objective
    train = [x for s in ("train", "validation") for x in data.splits[s]["values"]]
    y_train = [y for s in ("train", "validation") for y in data.splits[s]["label"]]
    X_test, y_test = data.splits["test"]["values"], data.splits["test"]["label"]
    longest = max(len(x) for x in [*train, *X_test])
    model = MiniRocketClassifier(random_state=0) if kind == "classification" else RocketRegressor(random_state=0)
    y_fit = np.asarray(y_train) if kind == "classification" else np.asarray(y_train)[:, 0]
    start = time.perf_counter()
    model.fit(_padded(train, longest), y_fit)
    predicted = model.predict(_padded(X_test, longest))
    seconds = round(time.perf_counter() - start, 1)
    if kind == "classification":
        outputs = torch.nn.functional.one_hot(torch.as_tensor(predicted.astype(int)), objective.width).float()
    else:
        outputs = torch.as_tensor(predicted, dtype=torch.float32).reshape(-1, 1)
    metrics = objective.metrics(outputs, objective.label_tensor(y_test))
    metrics.pop("loss")
    name = "aeon MiniRocketClassifier" if kind == "classification" else "aeon RocketRegressor"
    return [{"dataset": dataset, "method": name, "primary": objective.primary, "test": metrics, "seconds": seconds}]


def forecast_rows(task) -> list[dict]:
    """Naive, seasonal naive, ETS and ARIMA per series, fitted on everything before the test origin."""
    from aeon.forecasting.stats import AutoARIMA, AutoETS

    data = task.load()
    objective = data.info.objective
    h, m = objective.horizon, objective.season
    labels = objective.label_tensor(data.splits["test"]["label"])
    series = task._series["series"].series  # whole series, in the test windows' order
    methods = {
        "naive": lambda y: np.repeat(y[-1], h),
        "seasonal naive": lambda y: _seasonal_naive(y, h, m),
        "aeon AutoETS": lambda y: AutoETS(seasonal_period=m if len(y) > 2 * m else 1).iterative_forecast(y, h),
        "aeon AutoARIMA": lambda y: AutoARIMA().iterative_forecast(y, h),
    }
    rows = []
    for name, forecast in methods.items():
        start, out, failed = time.perf_counter(), [], 0
        for x in series:
            history = x[:-h, 0]
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    guess = np.asarray(forecast(history), dtype=np.float64)
                if not np.isfinite(guess).all():
                    raise ValueError("non-finite forecast")
            except Exception:  # a model that fails on a short series falls back to the naive forecast
                guess, failed = np.repeat(history[-1], h), failed + 1
            out.append(guess)
        metrics = objective.metrics(torch.as_tensor(np.stack(out), dtype=torch.float32), labels)
        metrics.pop("loss")
        row = {"dataset": task.dataset, "method": name, "primary": objective.primary, "test": metrics}
        rows.append(row | {"seconds": round(time.perf_counter() - start, 1), "fallbacks": failed})
    return rows


def machine() -> dict:
    """The CPU, cores, GPU and package versions behind the numbers."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    return {
        "cpu": cpu or "unknown",
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "platform": platform.platform(),
        "versions": versions() | {"aeon": version("aeon")},
    }


def summarise(rows: list[dict]) -> list[dict]:
    """One line per (data set, method): the mean and spread over seeds of the test and validation primary."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    out = []
    for (dataset, method), rs in groups.items():
        ok = [r for r in rs if "error" not in r]
        if not ok:
            out.append({"dataset": dataset, "method": method, "error": rs[0]["error"]})
            continue
        p = ok[0]["primary"]
        tests = [r["test"][p] for r in ok]
        vals = [r["val"][p] for r in ok if r.get("val")]
        out.append(
            {
                "dataset": dataset,
                "method": method,
                "primary": p,
                "seeds": len(ok),
                "test": statistics.fmean(tests),
                "test_sd": statistics.stdev(tests) if len(tests) > 1 else None,
                "val": statistics.fmean(vals) if vals else None,
                "trainable_pct": ok[0].get("trainable_pct"),
                "seconds": statistics.fmean(r["seconds"] for r in ok),
            }
        )
    return out


def markdown(summary: list[dict], meta: dict) -> str:
    lines = [
        f"Scale: {meta['scale']}. Command: `{meta['command']}`.",
        f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores"
        + (f", GPU {meta['machine']['gpu']}" if meta["machine"]["gpu"] else ", no GPU")
        + f"; torch {meta['machine']['versions'].get('torch', '?')}, aeon {meta['machine']['versions']['aeon']}.",
        "",
        "| data set | method | trained | test (primary) | validation | seeds | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        if "error" in s:
            lines.append(f"| {s['dataset']} | {s['method']} | | failed: {s['error'][:80]} | | | |")
            continue
        p = s["primary"]
        test = format_metric(p, s["test"]) + (f" ± {format_metric(p, s['test_sd'])}" if s.get("test_sd") else "")
        trained = f"{s['trainable_pct']:.2f}%" if s.get("trainable_pct") is not None else "-"
        val = format_metric(p, s["val"]) if s.get("val") is not None else "-"
        cells = [
            s["dataset"],
            s["method"],
            trained,
            f"{p} {test}",
            val,
            str(s.get("seeds", "-")),
            f"{s['seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    published = [(d, *row) for d in dict.fromkeys(s["dataset"] for s in summary) for row in PUBLISHED.get(d, [])]
    if published:
        lines += ["", "Published (other protocols and hardware; not re-run here):", ""]
        lines += ["| data set | method | test accuracy | source |", "|---|---|---|---|"]
        lines += [f"| {d} | {m} | {100 * v:.1f}% | {src} |" for d, m, v, src in published]
    return "\n".join(lines) + "\n"


def claims(summary: list[dict], rows: list[dict]) -> list[str]:
    """The table's three questions per data set, each a difference of test means with its 95% interval:
    pretrained vs scratch (`lora` - `lora_scratch`, `fpt` - `fpt_scratch`), the model's own digit tokens vs
    a trained projection (`digits` - `lora`), and peftx vs each classical method (`lora` - method; the
    classical fits are deterministic, so a one-sample interval over the peftx seeds)."""
    tests: dict[tuple[str, str], list[float]] = {}
    for r in rows:
        if "error" not in r:
            tests.setdefault((r["dataset"], r["method"]), []).append(r["test"][r["primary"]])
    primary = {s["dataset"]: s["primary"] for s in summary if "primary" in s}
    lines = []
    for dataset, p in primary.items():
        pairs = [
            ("peftx lora", "peftx lora_scratch"),
            ("peftx fpt", "peftx fpt_scratch"),
            ("peftx digits", "peftx lora"),
        ]
        pairs += [("peftx lora", m) for (d, m) in tests if d == dataset and not m.startswith("peftx")]
        for a, b in pairs:
            xa, xb = tests.get((dataset, a)), tests.get((dataset, b))
            if not xa or not xb:
                continue
            diff, lo, hi = welch_interval(xa, xb) if len(xb) > 1 else one_sample_interval(xa, xb[0])
            better = "lower is better" if p in LOWER_IS_BETTER else "higher is better"
            scale = 100 if p in PERCENT_METRICS else 1
            unit = " points" if scale == 100 else ""
            ci = "n/a (one seed)" if math.isnan(lo) else f"[{scale * lo:+.4g}, {scale * hi:+.4g}]"
            verdict = "" if math.isnan(lo) or lo <= 0 <= hi else " — excludes 0"
            cells = [dataset, f"{a} − {b}", f"{p} ({better})", f"{scale * diff:+.4g}{unit}", ci + verdict]
            lines.append("| " + " | ".join(cells) + f" | {len(xa)}, {len(xb)} |")
    if not lines:
        return []
    head = ["| data set | difference | metric | mean | 95% interval | runs |", "|---|---|---|---|---|---|"]
    return [
        "",
        "Claims (test means; Welch intervals between peftx arms, one-sample against a classical fit):",
        "",
        *head,
        *lines,
    ]


def one_sample_interval(xs: list[float], fixed: float, level: float = 0.95) -> tuple[float, float, float]:
    """mean(xs) - fixed and its t interval over xs (NaN bounds for one value)."""
    diff = statistics.fmean(xs) - fixed
    if len(xs) < 2:
        return diff, float("nan"), float("nan")
    from scipy import stats

    ci = stats.ttest_1samp(xs, fixed).confidence_interval(level)
    return diff, float(ci.low - fixed), float(ci.high - fixed)


def earlier(out: Path) -> tuple[list[dict], list[str]]:
    """Rows and commands of earlier invocations with the same --out: the table accumulates across calls
    (other data sets, arms or seeds), and a row already measured is not run again (delete results.json
    to redo)."""
    path = out / "results.json"
    if not path.is_file():
        return [], []
    data = json.loads(path.read_text())
    return data["rows"], [c for c in data.get("commands") or [data.get("command")] if c]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="JapaneseVowels,Covid3Month,m1_yearly")
    parser.add_argument("--arms", default=DEFAULT_ARMS, help=f"comma-separated, of {', '.join(ARMS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=None, help="train.steps of every arm (default: the recipe's)")
    parser.add_argument("--full-lr", type=float, default=1e-4)
    parser.add_argument("--no-classical", action="store_true")
    parser.add_argument("--out", default="runs/bench_timeseries")
    args = parser.parse_args(argv)
    datasets = args.datasets.split(",")
    unknown = [d for d in datasets if d not in (*CLASSIFICATION, *REGRESSION, *FORECASTING)]
    if unknown:
        parser.error(f"unknown data set(s) {unknown}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out / "results.lock")
    try:
        lock.acquire(timeout=0)  # two invocations on one --out would each rewrite the other's rows away
    except Timeout:
        parser.error(f"another bench_timeseries.py is writing to {out}; wait for it or use another --out")
    measure(out, datasets, [int(s) for s in args.seeds.split(",")], args, command(argv))
    print((out / "results.md").read_text())


def measure(out: Path, datasets: list[str], seeds: list[int], args: argparse.Namespace, this_command: str) -> None:
    """Run the rows not yet in `out`'s results, writing the table after each."""
    rows, commands = earlier(out)
    done = {(r["dataset"], r["method"], r.get("seed"), r.get("steps")) for r in rows if "error" not in r}
    rows = [r for r in rows if "error" not in r]  # a failed arm is tried again
    commands = [*commands, this_command]
    for dataset in datasets:
        if not args.no_classical and not any(d == dataset and s is None for d, _, s, _ in done):
            rows += classical_rows(dataset)
        for arm in args.arms.split(","):
            for seed in seeds:
                if (dataset, f"peftx {arm}", seed, args.steps) in done:
                    continue
                rows.append(peftx_row(dataset, arm, seed, args))
                print(json.dumps(rows[-1])[:300], flush=True)
                write(out, rows, commands, args)
    write(out, rows, commands, args)


def command(argv: list[str] | None) -> str:
    return shlex.join(["python", "scripts/bench_timeseries.py", *(argv if argv is not None else sys.argv[1:])])


def write(out: Path, rows: list[dict], commands: list[str], args: argparse.Namespace) -> None:
    """results.json and results.md from every row so far (written after each run: an interrupted table
    loses at most the run in progress)."""
    commands = list(dict.fromkeys(commands))
    seeds = sorted({r["seed"] for r in rows if r.get("seed") is not None})
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    steps = args.steps or "the recipes'"
    meta = {
        "command": " && ".join(commands),
        "commands": commands,
        "machine": machine(),
        "scale": f"{len(datasets)} data set(s), {len(seeds)} seed(s), {steps} steps per peftx arm",
    }
    summary = summarise(rows)
    (out / "results.json").write_text(json.dumps({**meta, "summary": summary, "rows": rows}, indent=1, default=str))
    (out / "results.md").write_text(markdown(summary, meta) + "\n".join(claims(summary, rows)) + "\n")


if __name__ == "__main__":
    main()
