"""Where each point of a sweep stands: finished, diverged or still to run, and, under a `tune:` section,
whether its configuration's tuning stage has chosen its value."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from peftx.errors import PeftxError
from peftx.recipe import RecipeBase, result_defining
from peftx.runs.record import RunRecord
from peftx.studies.selection import choose


@dataclass(frozen=True)
class Tune:
    """The `tune:` section: which axis is chosen on validation, and on how many seeds."""

    key: str = "train.lr"
    seeds: int = 1


@dataclass
class Point:
    """One run of a sweep."""

    name: str
    values: dict[str, object]  # axis key -> value
    recipe: RecipeBase
    stage: int = 0  # under `tune:`: 1 tries a value on a tuning seed, 2 runs the chosen value on another
    config: str = ""  # under `tune:`: the point's values but the tuned one and the seed
    tune: Tune | None = None


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


def _read(point: Point) -> RunRecord | None:
    try:
        return RunRecord.read(Path(point.recipe.output.dir) / point.name)
    except PeftxError:  # never written, or cut short while writing
        return None


def _state(point: Point, record: RunRecord | None) -> str:
    if record is None:
        return "todo"
    if record.status == "diverged":
        return "diverged"
    if not record.completed:
        return "todo"
    same = result_defining(record.recipe) == result_defining(point.recipe.to_dict())
    return "done" if same else "stale"


def point_state(point: Point) -> str:
    """'done' (finished with this very recipe, up to result-neutral fields such as threads), 'stale'
    (finished with another recipe), 'diverged' (its settings train to NaN: rerunning repeats that),
    'todo' (never run, or unfinished: a run resumes from its checkpoint)."""
    return _state(point, _read(point))


def tuning_verdict(point: Point, points: list[Point]) -> tuple[str, str]:
    """What a stage-2 point (a later seed under `tune:`) is to do, and why: 'wait' while its
    configuration's tuning points are not all finished, 'run' once they chose its value, 'skip' once
    they chose another (or none of them completed: all diverged or failed)."""
    key = point.tune.key
    tried: dict[str, list[tuple[int, float]]] = {}
    for p in points:
        if p.stage != 1 or p.config != point.config:
            continue
        record = _read(p)  # read once: its state and its validation accuracy
        state = _state(p, record)
        if state == "todo":
            if record is None or record.status in ("running", "interrupted"):
                return "wait", "its tuning points are not finished"
            continue  # failed: it has no result to choose on
        if state == "done":
            value = json.dumps(p.values[key], default=str)
            tried.setdefault(value, []).append((p.values["seed"], record.metrics.val_accuracy))
    if not tried:
        return "skip", "no tuning point completed"
    best, _ = choose(tried)
    if best != json.dumps(point.values[key], default=str):
        return "skip", f"{key} {json.loads(best)} was chosen"
    return "run", f"{key} {json.loads(best)} was chosen"
