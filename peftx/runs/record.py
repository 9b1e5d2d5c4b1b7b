"""What a run leaves on disk: the one typed run record (`RunRecord`, result.json), its metrics log,
and the run directory's file names. Every reader and writer of result.json goes through `RunRecord`;
the weights file is written and read by `peftx.runs.weights` (reports and sweeps read records without
importing torch).

runs/<name>/
  recipe.yaml          the resolved recipe (every default written out)
  result.json          `RunRecord`: status, recipe, budget, metrics over time, final metrics, timings,
                       memory, processes, versions, provenance, schema version
  metrics.jsonl        training loss, lr, gradient norm and speed at every log step; validation metrics
                       at every evaluation (`MetricsLog`)
  checkpoints/         resumable checkpoints while the run is unfinished (`peftx.training.checkpoints`)
  weights.safetensors  trained parameters + the input layer's own parameters and buffers (+ the whole
                       backbone when it was built from scratch, since random weights cannot be
                       re-downloaded; quantized layers are written dequantized and quantized again
                       on loading)
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from peftx.errors import PeftxError
from peftx.training.points import EvalPoint, Point, Record, TrainPoint
from peftx.util.files import write_text_atomic

WEIGHTS = "weights.safetensors"
RESULT = "result.json"
RECIPE = "recipe.yaml"
METRICS = "metrics.jsonl"


# 1: the untyped result.json before `RunRecord` (read as version 1, same keys); 2: typed, accuracy only;
# 3: metrics by name with the objective's primary metric and its direction
SCHEMA_VERSION = 3

Status = Literal["running", "completed", "diverged", "failed", "interrupted", "pruned"]


class BudgetRecord(Record):
    """Parameters by role and group, trainable vs total (`peftx.studies.budget.Budget.to_dict`)."""

    total: int
    trainable: int
    trainable_pct: float
    by_role: dict[str, dict[str, int]] = {}
    by_group: dict[str, dict[str, int]] = {}
    quantizable: int = 0


class Metrics(Record):
    """Final metrics of a completed run: test on the selected weights, validation at the selected step.

    `test` and `val` hold the objective's metrics by name; `primary` names the one that selected the
    weights, `direction` whether higher or lower is better. Classification runs repeat accuracy as
    `test_accuracy` / `val_accuracy` (all that records before schema version 3 hold).
    """

    test_accuracy: float | None = None
    test_loss: float
    val_accuracy: float | None = None
    selected_step: int
    selection: str
    primary: str = "accuracy"
    direction: Literal["higher", "lower"] = "higher"
    test: dict[str, float] = {}
    val: dict[str, float] = {}

    def value(self, split: Literal["test", "val"] = "test", name: str | None = None) -> float | None:
        """A metric (default: the primary one) on the test split or at the selected validation step."""
        name = name or self.primary
        found = (self.test if split == "test" else self.val).get(name)
        if found is None and name == "accuracy":
            found = self.test_accuracy if split == "test" else self.val_accuracy
        return found

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "higher"


class PrunedAt(Record):
    """Where a sweep's pruner stopped a run (status 'pruned'): the evaluation's step, and why."""

    step: int
    reason: str


class Timing(Record):
    wall_seconds: float
    align_seconds: float | None = None  # the input.align stage
    train_seconds: float | None = None
    eval_seconds: float | None = None
    steps: int | None = None
    cap: int | None = None  # the steps the run would have taken without train.early_stop
    stopped: Literal["flat", "cap"] | None = None  # flat: train.early_stop ended it; cap: it ran every step
    train_examples_per_s: float | None = None  # summed over processes
    train_tokens_per_s: float | None = None


class Processes(Record):
    """How the run was spread: processes, and the batch each took per micro-step."""

    world_size: int = 1
    per_process_batch: int | None = None
    global_batch: int | None = None  # per optimizer step: per_process_batch x world_size x grad_accum
    backend: str | None = None


class RunRecord(Record):
    """What one run writes to result.json, read and written only here.

    Attributes:
        recipe: the resolved recipe (`RecipeBase.to_dict`).
        backbone: where the backbone came from (source, pretrained, family, sha256 ...).
        history: the validation evaluations during training.
    """

    schema_version: int = SCHEMA_VERSION
    name: str
    status: Status = "running"
    recipe: dict
    seed: int
    precision: str
    versions: dict[str, str] = {}
    started: str = ""
    backbone: dict = {}
    budget: BudgetRecord | None = None
    baselines: dict[str, float] = {}
    data_notes: list[str] = []
    truncated: dict[str, int] = {}
    processes: Processes = Processes()
    history: list[EvalPoint] = []
    train_log: list[TrainPoint] = []
    metrics: Metrics | None = None
    align: dict | None = None  # the input.align stage: objective, before/after, loss log, reference, seconds
    self_pretrain: dict | None = None  # model.init: self_pretrained: key, objective, steps, losses, seconds, reused
    skipped_steps: int = 0  # updates skipped for a non-finite gradient norm (train.nonfinite: skip)
    resumed: list[dict] = []  # one entry per resumption: {from_step, at}
    timing: Timing | None = None
    memory: dict[str, int] = {}
    error: str | None = None
    pruned: PrunedAt | None = None  # status 'pruned': a sweep's pruner stopped it at this evaluation

    @staticmethod
    def now() -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def write(self, run_dir: Path) -> None:
        """Write `run_dir/result.json` atomically (a reader never sees half a file)."""
        write_text_atomic(run_dir / RESULT, self.model_dump_json(indent=1))

    @classmethod
    def read(cls, run_dir: str | Path) -> RunRecord:
        """The record of a run directory.

        Raises:
            PeftxError: no result.json, or one that is not a run record (one line naming the file).
        """
        path = Path(run_dir) / RESULT
        if not path.is_file():
            raise PeftxError(f"{run_dir}: not a run directory (no {RESULT})")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PeftxError(f"{path}: not a readable result file ({type(e).__name__})") from None
        if not isinstance(data, dict):
            raise PeftxError(f"{path}: not a run record (a JSON object)")
        data.setdefault("schema_version", 1)
        if not isinstance(data["schema_version"], int) or isinstance(data["schema_version"], bool):
            raise PeftxError(f"{path}: schema_version: expected an integer, got {data['schema_version']!r}")
        if data["schema_version"] > SCHEMA_VERSION:
            raise PeftxError(f"{path}: schema_version {data['schema_version']} is newer than this peftx reads")
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            key = ".".join(str(p) for p in first["loc"]) or "(top level)"
            raise PeftxError(f"{path}: {key}: {first['msg']}") from None

    @property
    def completed(self) -> bool:
        return self.status == "completed"


class MetricsLog:
    """`metrics.jsonl`: one JSON line per log step (`kind: train`: loss, lr, grad norm, examples/s,
    tokens/s) and per evaluation (`kind: eval`), appended as the run goes (strict JSON: a non-finite
    number is written as null)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / METRICS

    def append(self, point: Point) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(_json_line(point) + "\n")

    def rewrite(self, points: Iterable[Point]) -> None:
        """Replace the file with these points (a resumed run: what its checkpoint had seen)."""
        write_text_atomic(self.path, "".join(_json_line(p) + "\n" for p in points))

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _json_line(point: Point) -> str:
    entry = {"kind": "eval" if isinstance(point, EvalPoint) else "train", **point.model_dump()}
    clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in entry.items()}
    return json.dumps(clean, allow_nan=False)


CHANGED_WEIGHTS_FLAG = "--allow-changed-weights"


def check_same_backbone(record: RunRecord, provenance: dict, allow: bool, run_dir: Path) -> str | None:
    """Compare the sha256 of the backbone's weights as the run recorded them with those just loaded:
    trained tensors on top of other frozen weights are another model, whatever the files are called.

    Args:
        record: the run's record (its `backbone.sha256`; runs from scratch record none).
        provenance: the freshly loaded backbone's provenance (its `sha256`).
        allow: accept a difference (`--allow-changed-weights`); the return value says what changed.
        run_dir: named in the message.

    Returns:
        None when the digests agree (or either side has none); else a one-line note of the change.

    Raises:
        PeftxError: the digests differ and `allow` is false (naming the flag that accepts it).
    """
    then, now = record.backbone.get("sha256"), provenance.get("sha256")
    if not then or not now or then == now:
        return None
    change = (
        f"{run_dir}: the backbone {provenance.get('source', '')!r} now loads weights with sha256 "
        f"{_digests(now)}, not the {_digests(then)} this run was trained on"
    )
    if not allow:
        raise PeftxError(f"{change}; restore them, or pass {CHANGED_WEIGHTS_FLAG} to use these")
    return change


def _digests(digests: str | dict[str, str]) -> str:
    """sha256 digest(s) shortened for a one-line message."""
    if isinstance(digests, str):
        return digests[:12] + "…"
    return ", ".join(f"{name} {d[:12]}…" for name, d in sorted(digests.items()))
