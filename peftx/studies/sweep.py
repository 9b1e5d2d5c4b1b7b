"""Sweeps: a recipe whose values may be lists expands into a grid of runs, or, with a `search:` section,
into runs whose values a sampler draws; either way the sweep is an Optuna study (`peftx.studies.study`).

A list is a grid axis wherever the schema expects a single value: `seed: [0, 1, 2]`, `train.lr:
[1e-3, 3e-4]`, a whole section (`method: [{name: lora}, {name: full}]`), or a field inside one
(`model.pretrained: [true, false]` written as `model: {pretrained: [true, false]}`). Fields that are
lists by nature (`method.targets`) stay as they are; sweep over them with an explicit `grid:` section of
dotted keys (`grid: {method.targets: [[attention], [attention, feed_forward]]}`).

A `tune:` section runs the tuning protocol: every value of one axis (`train.lr` by default) on the
first seed(s), the value chosen on the validation metric (`peftx.studies.selection.choose`), then the
other seeds at the chosen value only; with a `prune:` section the first stage is a pruned search (runs
that fall behind their configuration's others stop early) and the later seeds run to their end:

    train: {lr: [1.0e-4, 3.0e-4, 1.0e-3]}
    seed: [0, 1, 2]
    tune: {key: train.lr, seeds: 1}
    prune: {kind: asha}

Every point runs into `<output.dir>/<sweep name>/<point name>/`. Finished points count as done (a run
finished before its study existed is told to the study from its record), and an unfinished one resumes
from its checkpoint, so an interrupted sweep goes on where it stopped. Any number of workers, on any
machines that share the study's storage, run one sweep together (`peftx.studies.sweep_worker`).
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from pathlib import Path

from peftx.errors import PeftxError
from peftx.recipe import find_axes, read_raw, validate_recipe
from peftx.recipe.grid import SECTIONS, SWEEP_KEYS, read_prune, read_search, set_key
from peftx.studies.sweep_state import Point, SweepSpec, objective_direction, read_tune

# A sweep's points in one place (the CLI and scripts import them from here). What `--dry-run` shows
# of them is `peftx.studies.sweep_plan.plan`; running them, `peftx.studies.sweep_worker.run_sweep`.
# This module imports no run, no study, no budget counter and no torch: `peftx validate` answers at once.
__all__ = ["Point", "expand", "find_axes", "load_sweep", "load_sweeps"]


def _label(value, keys: list[str] | None = None) -> str:
    """Short, path-safe text for an axis value; for mappings, only `keys` (those that differ
    between the axis' values) are spelled out."""
    if isinstance(value, dict):
        parts = []
        for k in keys if keys is not None else list(value):
            v = value.get(k)
            if v is None:
                continue
            if isinstance(v, bool):
                parts.append(k if v else f"no-{k}")
            elif k in ("name", "family", "source", "preset"):
                parts.append(str(v))
            elif not isinstance(v, dict | list):
                parts.append(f"{k}{v}")
        text = "-".join(parts)
    elif isinstance(value, list):
        text = "+".join(_label(v) for v in value)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-") or "x"


def _differing_keys(values: list) -> list[str] | None:
    """Scalar keys whose values differ between the mappings of one axis (None: not mappings)."""
    if not all(isinstance(v, dict) for v in values):
        return None
    keys = list(dict.fromkeys(k for v in values for k in v))
    return [k for k in keys if len({json.dumps(v.get(k), sort_keys=True) for v in values}) > 1]


def _axis_label(key: str, value, keys: list[str] | None) -> str:
    """`seed=0`, `lr=0.001` for fields; the differing fields alone for a whole section (`lora-r8`)."""
    if "." not in key and key in SECTIONS:
        return _label(value, keys)
    return f"{key.rsplit('.', 1)[-1]}={_label(value, keys)}"


def expand(raw: dict, where: str = "<sweep>") -> list[Point]:
    """Every point of the grid, validated (a `search:` sweep: the one point its trials start from).

    Raises:
        PeftxError: naming the point that is invalid, or the sweep section that is.
    """
    axes = find_axes(raw)
    search, prune = read_search(raw), read_prune(raw)
    if search is not None and (axes or "tune" in raw):
        lists = ", ".join(k for k, _ in axes) or "tune"
        raise PeftxError(
            f"search: a sweep draws its values or lists them, not both ({lists}); list values as "
            "`{type: categorical, choices: [...]}` under search.params"
        )
    # seeds vary slowest: an interrupted sweep has every configuration at its first seeds
    axes.sort(key=lambda axis: axis[0] != "seed")
    tune = read_tune(raw, axes)
    base = _without_axes({k: v for k, v in raw.items() if k not in SWEEP_KEYS}, axes)
    name = str(raw.get("name") or "sweep")
    out_dir = Path((raw.get("output") or {}).get("dir", "runs")) / name
    spec = SweepSpec(name, out_dir, where, base=base, tune=tune, prune=prune, search=search)
    points = _search_start(spec) if search is not None else _grid(spec, axes)
    direction = (search and search.direction) or objective_direction(points[0].recipe)
    spec = SweepSpec(name, out_dir, where, base=base, tune=tune, prune=prune, search=search, direction=direction)
    for p in points:
        p.sweep = spec
    return points


def _without_axes(base: dict, axes: list[tuple[str, list]]) -> dict:
    """The raw recipe with its axes removed (each point sets them again)."""
    for key, _ in axes:
        head, _, tail = key.partition(".")
        if not tail:
            base.pop(head, None)
        elif isinstance(base.get(head), dict) and tail in base[head] and isinstance(base[head][tail], list):
            base[head] = {k: v for k, v in base[head].items() if k != tail}
    return base


def _grid(spec: SweepSpec, axes: list[tuple[str, list]]) -> list[Point]:
    tune = spec.tune
    tuning_seeds = dict(axes)["seed"][: tune.seeds] if tune else []
    label_keys = {key: _differing_keys(values) for key, values in axes}
    points, seen = [], set()
    for combo in itertools.product(*(values for _, values in axes)):
        point = copy.deepcopy(spec.base)
        values = dict(zip((k for k, _ in axes), combo))
        for key, value in values.items():
            set_key(point, key, copy.deepcopy(value))
        name = "__".join(_axis_label(key, v, label_keys[key]) for key, v in values.items()) or "point"
        unique, i = name, 2
        while unique in seen:
            unique, i = f"{name}_{i}", i + 1
        seen.add(unique)
        point["output"] = {**(point.get("output") or {}), "dir": str(spec.dir), "name": unique}
        point["name"] = spec.name
        recipe = validate_recipe(point, f"{spec.where} [{unique}]" if axes else spec.where)
        params = {k: v if isinstance(v, bool | int | float) else _label(v, label_keys[k]) for k, v in values.items()}
        p = Point(unique, values, recipe, params=params)
        if tune:
            p.stage = 1 if values["seed"] in tuning_seeds else 2
            rest = {k: v for k, v in values.items() if k not in (tune.key, "seed")}
            p.config = json.dumps([str(spec.dir), rest], sort_keys=True, default=str)  # one sweep's alone
        points.append(p)
    if tune:
        # configuration after configuration, each one's tuning points before its other seeds: workers
        # take the later seeds of a configuration whose tuning is done before the next one's tuning
        first = {}
        for p in points:
            first.setdefault(p.config, len(first))
        points.sort(key=lambda p: (first[p.config], p.stage))
        for p in points:
            p.tune = tune
    return points


def _search_start(spec: SweepSpec) -> list[Point]:
    """A search's starting point: its recipe with every drawn key at its first value, after checking
    each key's ends (and each choice) make a valid recipe."""
    params = spec.search.params
    probes = {k: [p.low, p.high] if p.type != "categorical" else p.choices for k, p in params.items()}
    start = {k: values[0] for k, values in probes.items()}
    first = None
    for key, values in probes.items():
        for value in values:
            raw = copy.deepcopy(spec.base)
            for k, v in {**start, key: value}.items():
                set_key(raw, k, v)
            raw["output"] = {**(raw.get("output") or {}), "dir": str(spec.dir), "name": "search"}
            raw["name"] = spec.name
            recipe = validate_recipe(raw, f"{spec.where} [search.params.{key}={value}]")
            first = first or recipe
    return [Point("search", dict(start), first)]


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> list[Point]:
    """Read a sweep recipe and expand it into validated points (a plain recipe is one point)."""
    return expand(read_raw(path, overrides), str(path))


def load_sweeps(paths: list[Path], overrides: list[str] | None = None) -> list[Point]:
    """The points of several sweep recipes, file after file: one queue that workers go through, so a
    worker whose current sweep waits (another worker holds its last tuning point) runs the next one's
    points meanwhile.

    Raises:
        PeftxError: two files that would write into the same run directories (same name and output.dir).
    """
    points, owner = [], {}
    for path in paths:
        for point in load_sweep(path, overrides):
            where = point.run_dir
            if where in owner and owner[where] != str(path):
                raise PeftxError(
                    f"{path}: writes into {where.parent}, as {owner[where]} does; give one of them another `name`"
                )
            owner[where] = str(path)
            points.append(point)
    return points
