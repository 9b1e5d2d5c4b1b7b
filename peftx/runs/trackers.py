"""Experiment trackers (`output.trackers`), fed through accelerate's `log_with` / `init_trackers` /
`log`: accelerate's own TensorBoard, W&B and MLflow trackers, and a CSV file it has no tracker for."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

from accelerate.tracking import GeneralTracker, TensorBoardTracker

from peftx.errors import PeftxError
from peftx.training.points import Point

# the packages each tracker needs, and how to get them
NEEDS = {
    "tensorboard": (("tensorboard", "tensorboardX"), "pip install 'peftx[tensorboard]'"),
    "wandb": (("wandb",), "pip install wandb (offline: WANDB_MODE=offline)"),
    "mlflow": (("mlflow",), "pip install mlflow (a local store by default: ./mlruns)"),
}
CSV = "metrics.csv"
CSV_COLUMNS = (
    *("step", "loss", "lr", "grad_norm", "examples_per_s", "tokens_per_s", "val_accuracy", "val_loss"),
    # the other objectives' validation metrics (`peftx.spec.objective`), after the original columns
    *("val_map", "val_micro_f1", "val_macro_f1", "val_rmse", "val_mae", "val_r2", "val_mase", "val_smape", "val_mse"),
)


class CsvTracker(GeneralTracker):
    """`metrics.csv` in the run directory: one row per log step or evaluation (blank where a column does
    not apply), readable by any spreadsheet. accelerate ships no CSV tracker, hence this one."""

    name = "csv"
    requires_logging_directory = False

    def __init__(self, run_dir: Path, fresh: bool = True):
        super().__init__()
        self.path = Path(run_dir) / CSV
        self.fresh = fresh

    @property
    def tracker(self) -> Path:
        return self.path

    def store_init_configuration(self, values: dict) -> None:  # the hyperparameters are in recipe.yaml
        if self.fresh or not self.path.exists():
            with open(self.path, "w", newline="", encoding="utf-8") as f:
                csv.writer(f).writerow(CSV_COLUMNS)

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        row = {**values, "step": step}
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow(["" if row.get(c) is None else row[c] for c in CSV_COLUMNS])


def make_trackers(names: list[str], run_dir: Path, resume_step: int | None = None) -> list:
    """accelerate's `log_with` for `output.trackers` (an empty list: none).

    Args:
        resume_step: a resumed run's checkpoint step: TensorBoard drops the events logged after it
            (the run logs them again), and the CSV file is appended to.

    Raises:
        PeftxError: a tracker's package is not installed (one line saying how to install it).
    """
    out: list = []
    for name in names:
        if name in NEEDS:
            modules, how = NEEDS[name]
            if not any(importlib.util.find_spec(m) for m in modules):
                raise PeftxError(f"output.trackers: {name} needs its package ({how})")
        if name == "csv":
            out.append(CsvTracker(run_dir, fresh=resume_step is None))
        elif name == "tensorboard":
            kwargs = {"purge_step": resume_step + 1} if resume_step is not None else {}
            out.append(TensorBoardTracker("tensorboard", run_dir, **kwargs))  # <run_dir>/tensorboard/
        else:
            out.append(name)
    return out


def hyperparameters(recipe: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """The resolved recipe flattened to `section.key` scalars, as trackers take hyperparameters."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in recipe.items():
        if isinstance(value, dict):
            out.update(hyperparameters(value, f"{prefix}{key}."))
        elif isinstance(value, bool | int | float | str):
            out[prefix + key] = value
        else:  # lists, None
            out[prefix + key] = str(value)
    return out


def tracker_values(point: Point) -> dict[str, float]:
    """A training point's numbers as trackers log them: its step goes as the step, missing values not at
    all, each validation metric as `val_<name>`."""
    values = point.model_dump()
    metrics = values.pop("val_metrics", None) or {}
    flat = {k: v for k, v in values.items() if k != "step" and v is not None}
    return flat | {f"val_{name}": v for name, v in metrics.items()}
