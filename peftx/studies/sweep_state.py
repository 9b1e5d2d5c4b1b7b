"""What a sweep is made of and where each of its points stands: the sweep's settings (`SweepSpec`), its
points, the one number a run is judged on (`objective_value`), a point's state from its run directory,
under a `tune:` section whether its configuration's tuning stage has chosen its value (from run
directories alone: it opens no study). What `peftx sweep --dry-run` shows is `peftx.studies.sweep_plan`."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from peftx.errors import PeftxError
from peftx.recipe import RecipeBase, result_defining
from peftx.recipe.grid import AshaPrune, HyperbandPrune, MedianPrune, NoPrune, SearchSection
from peftx.runs.record import Metrics, RunRecord
from peftx.spec.objective import LOWER_IS_BETTER
from peftx.studies.selection import choose
from peftx.training.points import EvalPoint

Direction = Literal["maximize", "minimize"]


def objective_value(point: EvalPoint | Metrics) -> tuple[float | None, Direction]:
    """The validation metric a sweep reports at each evaluation, ranks completed runs by and tunes on,
    and whether higher or lower is better: the one place that says which metric that is.

    Args:
        point: an evaluation during training, or a completed run's final metrics (the selected step's).

    Returns:
        (value, 'maximize' | 'minimize'); value None where the point lacks the metric.
    """
    if isinstance(point, EvalPoint):  # the task's primary metric comes first among `val_metrics`
        if not point.val_metrics:
            return point.val_accuracy, "maximize"
        name = next(iter(point.val_metrics))
        return point.val_metrics[name], "minimize" if name in LOWER_IS_BETTER else "maximize"
    return point.value("val"), "maximize" if point.higher_is_better else "minimize"


def objective_direction(recipe: RecipeBase) -> Direction:
    """The direction of `objective_value` for a sweep's runs, known before any has run (a study is
    created with it): the task's objective's (`peftx.spec.objective`)."""
    return "maximize" if recipe.task.describe().objective.higher_is_better else "minimize"


@dataclass(frozen=True)
class Tune:
    """The `tune:` section: which axis is chosen on validation, and on how many seeds."""

    key: str = "train.lr"
    seeds: int = 1


@dataclass(frozen=True, eq=False)  # one object per sweep recipe, its points' key
class SweepSpec:
    """One sweep recipe's settings beside its points.

    Attributes:
        name: the sweep's name (its study's name).
        dir: `<output.dir>/<name>`: its points' run directories, and its journal file by default.
        where: the recipe file, for messages.
        base: the raw recipe without its axes and sweep sections (a search sets its sampled values on it).
    """

    name: str
    dir: Path
    where: str
    base: dict = field(default_factory=dict)
    tune: Tune | None = None
    prune: AshaPrune | HyperbandPrune | MedianPrune | NoPrune = NoPrune(kind="none")
    search: SearchSection | None = None
    direction: Direction = "maximize"


@dataclass
class Point:
    """One run of a sweep (for a `search:` sweep: the template its trials' runs start from)."""

    name: str
    values: dict[str, object]  # axis key -> value
    recipe: RecipeBase
    stage: int = 0  # under `tune:`: 1 tries a value on a tuning seed, 2 runs the chosen value on another
    config: str = ""  # under `tune:`: the point's values but the tuned one and the seed
    tune: Tune | None = None
    params: dict[str, object] = field(default_factory=dict)  # axis key -> the value as its trial shows it
    sweep: SweepSpec | None = None

    @property
    def run_dir(self) -> Path:
        return Path(self.recipe.output.dir) / self.name


def read_tune(raw: dict, axes: list[tuple[str, list]]) -> Tune | None:
    """The raw recipe's `tune:` section checked against its grid axes (None: no section).

    Raises:
        PeftxError: a malformed section, a key that is no axis, or too few seeds to go on with.
    """
    section = raw.get("tune")
    if section is None:
        return None
    if not isinstance(section, dict) or set(section) - {"key", "seeds"}:
        raise PeftxError("tune: expected a mapping with `key` (an axis, default train.lr) and `seeds` (default 1)")
    tune = Tune(**section)
    found = dict(axes)
    if not isinstance(tune.key, str) or tune.key not in found or tune.key == "seed":
        names = ", ".join(k for k in found if k != "seed") or "none"
        raise PeftxError(f"tune.key: {tune.key!r} is not an axis of this sweep (its axes: {names})")
    if not isinstance(tune.seeds, int) or isinstance(tune.seeds, bool) or tune.seeds < 1:
        raise PeftxError(f"tune.seeds: expected a number of seeds (1 or more), got {tune.seeds!r}")
    if "seed" not in found or len(found["seed"]) <= tune.seeds:
        raise PeftxError(
            f"tune: needs a seed axis with more than tune.seeds ({tune.seeds}) seeds to run the chosen value on"
        )
    return tune


def read_record(point: Point) -> RunRecord | None:
    """The point's run record (None: never written, or cut short while writing)."""
    try:
        return RunRecord.read(point.run_dir)
    except PeftxError:
        return None


def record_state(point: Point, record: RunRecord | None) -> str:
    """`point_state` for a record already read."""
    if record is None:
        return "todo"
    if record.status in ("diverged", "pruned"):
        return record.status
    if not record.completed:
        return "todo"
    same = result_defining(record.recipe) == result_defining(point.recipe.to_dict())
    return "done" if same else "stale"


def point_state(point: Point) -> str:
    """'done' (finished with this very recipe, up to result-neutral fields such as threads), 'stale'
    (finished with another recipe), 'diverged' (its settings train to NaN: rerunning repeats that),
    'pruned' (a sweep's pruner stopped it), 'todo' (never run, or unfinished: a run resumes from its
    checkpoint)."""
    return record_state(point, read_record(point))


# How a tuning point ended, for `tuning_verdict`: ('wait', None) not finished (it may still give a
# result), ('done', value) completed with its validation metric, ('none', None) finished without a
# result to choose on (failed, diverged, pruned).
Outcome = tuple[str, float | None]


def disk_outcome(point: Point) -> Outcome:
    """A tuning point's outcome as its run directory tells it."""
    record = read_record(point)
    state = record_state(point, record)
    if state == "done":
        return "done", objective_value(record.metrics)[0]
    if state == "todo" and (record is None or record.status in ("running", "interrupted")):
        return "wait", None
    return "none", None


def tuning_verdict(
    point: Point, points: list[Point], outcome: Callable[[Point], Outcome] = disk_outcome
) -> tuple[str, str]:
    """What a stage-2 point (a later seed under `tune:`) is to do, and why: 'wait' while its
    configuration's tuning points are not all finished, 'run' once they chose its value, 'skip' once
    they chose another (or none of them completed: all diverged, failed or were pruned).

    Args:
        outcome: how a tuning point ended (by default from its run directory; a sweep's workers ask
            their study).
    """
    key = point.tune.key
    tried: dict[str, list[tuple[int, float]]] = {}
    for p in points:
        if p.stage != 1 or p.config != point.config:
            continue
        state, value = outcome(p)
        if state == "wait":
            return "wait", "its tuning points are not finished"
        if state == "done" and value is not None:
            tried.setdefault(json.dumps(p.values[key], default=str), []).append((p.values["seed"], value))
    if not tried:
        return "skip", "no tuning point completed"
    maximize = point.sweep is None or point.sweep.direction == "maximize"
    best, _ = choose(tried, higher_is_better=maximize)
    if best != json.dumps(point.values[key], default=str):
        return "skip", f"{key} {json.loads(best)} was chosen"
    return "run", f"{key} {json.loads(best)} was chosen"


def several_sweeps(points: list[Point]) -> bool:
    return len({p.recipe.output.dir for p in points}) > 1


def shown_name(point: Point, several: bool) -> str:
    """The point's name, after its sweep's where several sweeps share the queue (names repeat there)."""
    return f"{Path(point.recipe.output.dir).name}/{point.name}" if several else point.name
