"""Sweeps: a recipe whose values may be lists expands into a grid of runs.

A list is a grid axis wherever the schema expects a single value: `seed: [0, 1, 2]`, `train.lr:
[1e-3, 3e-4]`, a whole section (`method: [{name: lora}, {name: full}]`), or a field inside one
(`model.pretrained: [true, false]` written as `model: {pretrained: [true, false]}`). Fields that are
lists by nature (`method.targets`) stay as they are; sweep over them with an explicit `grid:` section of
dotted keys (`grid: {method.targets: [[attention], [attention, feed_forward]]}`).

A `tune:` section runs the tuning protocol: every value of one axis (`train.lr` by default) on the
first seed(s), the value chosen on validation accuracy (`peftx.studies.selection.choose`), then the other seeds
at the chosen value only:

    train: {lr: [1.0e-4, 3.0e-4, 1.0e-3]}
    seed: [0, 1, 2]
    tune: {key: train.lr, seeds: 1}

Every point runs into `<output.dir>/<sweep name>/<point name>/`. Finished points are skipped and an
unfinished one resumes from its checkpoint, so an interrupted sweep goes on where it stopped; several
workers (processes, machines on one file system) share a grid through the run directories' locks.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from peftx.errors import Diverged, Interrupted, PeftxError
from peftx.recipe import PLUGINS, find_axes, read_raw, validate_recipe
from peftx.recipe.grid import SECTIONS
from peftx.runs.directory import RunLocked
from peftx.runs.run import run
from peftx.studies.sweep_state import Point, point_state, read_tune, tuning_verdict
from peftx.training.builder import recipe_budget


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
    """Every point of the grid, validated. Raises PeftxError naming the point that is invalid."""
    axes = find_axes(raw)
    # seeds vary slowest: an interrupted sweep has every configuration at its first seeds
    axes.sort(key=lambda axis: axis[0] != "seed")
    tune = read_tune(raw, axes)
    tuning_seeds = dict(axes)["seed"][: tune.seeds] if tune else []
    label_keys = {key: _differing_keys(values) for key, values in axes}
    base = {k: v for k, v in raw.items() if k not in ("grid", "tune")}
    for key, _ in axes:  # remove the axes; each point sets them again
        head, _, tail = key.partition(".")
        if not tail:
            base.pop(head, None)
        elif isinstance(base.get(head), dict) and tail in base[head] and isinstance(base[head][tail], list):
            base[head] = {k: v for k, v in base[head].items() if k != tail}
    sweep_name = str(raw.get("name") or "sweep")
    out_dir = Path((raw.get("output") or {}).get("dir", "runs")) / sweep_name
    points, seen = [], set()
    for combo in itertools.product(*(values for _, values in axes)):
        point = copy.deepcopy(base)
        values = dict(zip((k for k, _ in axes), combo))
        for key, value in values.items():
            _set(point, key, copy.deepcopy(value))
        name = "__".join(_axis_label(key, v, label_keys[key]) for key, v in values.items()) or "point"
        unique, i = name, 2
        while unique in seen:
            unique, i = f"{name}_{i}", i + 1
        seen.add(unique)
        point["output"] = {**(point.get("output") or {}), "dir": str(out_dir), "name": unique}
        point["name"] = sweep_name
        recipe = validate_recipe(point, f"{where} [{unique}]" if axes else where)
        p = Point(unique, values, recipe)
        if tune:
            p.stage = 1 if values["seed"] in tuning_seeds else 2
            rest = {k: v for k, v in values.items() if k not in (tune.key, "seed")}
            p.config = json.dumps([str(out_dir), rest], sort_keys=True, default=str)  # one sweep's alone
        points.append(p)
    if tune:
        # configuration after configuration, each one's tuning points before its other seeds: a point
        # that waits on another worker's tuning run is passed over for the next configuration's, so no
        # worker idles, and an interrupted sweep leaves whole configurations rather than first seeds
        first = {}
        for p in points:
            first.setdefault(p.config, len(first))
        points.sort(key=lambda p: (first[p.config], p.stage))
        for p in points:
            p.tune = tune
    return points


def _set(raw: dict, key: str, value) -> None:
    head, _, tail = key.partition(".")
    if not tail:
        if isinstance(value, str) and head in PLUGINS:
            value = {"name": value}
        raw[head] = value
        return
    node = raw.setdefault(head, {})
    if not isinstance(node, dict):
        raise PeftxError(f"grid: {key}: {head} is not a section")
    _set(node, tail, value)


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
            where = Path(point.recipe.output.dir) / point.name
            if where in owner and owner[where] != str(path):
                raise PeftxError(
                    f"{path}: writes into {where.parent}, as {owner[where]} does; give one of them another `name`"
                )
            owner[where] = str(path)
            points.append(point)
    return points


def _several_sweeps(points: list[Point]) -> bool:
    return len({p.recipe.output.dir for p in points}) > 1


def _shown_name(point: Point, several: bool) -> str:
    """The point's name, after its sweep's where several sweeps share the queue (names repeat there)."""
    return f"{Path(point.recipe.output.dir).name}/{point.name}" if several else point.name


@dataclass
class PlannedPoint:
    """A point as `peftx sweep --dry-run` shows it."""

    name: str
    state: str
    trainable: int
    total: int
    trainable_pct: float


def plan(points: list[Point]) -> list[PlannedPoint]:
    """Each point's state and trainable budget (counted without weights), running nothing."""
    out = []
    several = _several_sweeps(points)
    for p in points:
        b = recipe_budget(p.recipe)
        state = point_state(p)
        if p.stage == 2 and state == "todo":
            verdict, _ = tuning_verdict(p, points)
            state = {"wait": "after tuning", "skip": "not chosen"}.get(verdict, state)
        out.append(PlannedPoint(_shown_name(p, several), state, b.trainable, b.total, b.trainable_pct))
    return out


@dataclass
class SweepOutcome:
    """What one worker of a sweep did: points it ran to the end, and those that failed or diverged."""

    completed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)


POLL_SECONDS = 2.0  # how often a worker looks again at a point another worker holds


def run_sweep(
    points: list[Point], overwrite: bool = False, display_factory=None, log=print, poll: float = POLL_SECONDS
) -> SweepOutcome:
    """Run every point not yet finished, in order; any number of workers may run the same grid at once.

    Each point runs under its run directory's lock, so a point another worker holds is passed over and
    looked at again once this worker has nothing else to do: if that worker finished it, it is done;
    if it died, its point is free again, and resumes here from its last checkpoint. A worker returns
    when every point is finished (completed, failed or diverged).

    Args:
        overwrite: redo finished points too (and points finished with a different recipe); meant for
            one worker.
        display_factory: () -> RunDisplay for each run (None: quiet).
        log: one-line progress messages.

    Raises:
        PeftxError: a point finished with a different recipe (without `overwrite`), or a user error
            in a point (which would repeat in every point).
        Interrupted: SIGINT or SIGTERM: the current point wrote its checkpoint; the sweep stops.
    """
    stale = [p for p in points if point_state(p) == "stale"]
    if stale and not overwrite:
        where = Path(stale[0].recipe.output.dir) / stale[0].name
        raise PeftxError(f"{where}: finished with a different recipe; pass --overwrite to redo it, or rename the sweep")
    out = SweepOutcome()
    finished: set[int] = set()  # points (by id: names repeat across sweeps) done by this worker, in this call
    index = {id(p): i for i, p in enumerate(points, start=1)}
    several = _several_sweeps(points)
    pending = list(points)
    while pending:
        held = []
        for point in pending:
            tag = f"[{index[id(point)]}/{len(points)}] {_shown_name(point, several)}"
            action = _next_action(point, points, overwrite, finished, tag, log)
            if action == "run" and _run_point(point, tag, overwrite, display_factory, log, out):
                finished.add(id(point))
            elif action != "skip":  # held by another worker, or waiting on its tuning points
                held.append(point)
        if held:
            log(f"{len(held)} point(s) held by other workers: {', '.join(p.name for p in held)}; waiting for them")
            time.sleep(poll)
        pending = held
    return out


def _next_action(point: Point, points: list[Point], overwrite: bool, finished: set[int], tag: str, log) -> str:
    """'run', 'skip' (finished, or not to run after its tuning stage) or 'hold' (its configuration's
    tuning points are still running elsewhere)."""
    state = point_state(point)
    if state in ("done", "diverged") and not (overwrite and id(point) not in finished):
        if id(point) not in finished:
            log(f"{tag}: {state}, skipped")
        return "skip"
    if point.stage == 2 and id(point) not in finished:
        verdict, why = tuning_verdict(point, points)
        if verdict == "wait":
            return "hold"
        if verdict == "skip":
            log(f"{tag}: not run ({why})")
            finished.add(id(point))
            return "skip"
    return "run"


def _run_point(point: Point, tag: str, overwrite: bool, display_factory, log, out: SweepOutcome) -> bool:
    """Run one point, noting how it ended in `out`; False: another worker holds it now."""
    display = display_factory() if display_factory else None

    def started(plan: str) -> None:
        log(f"{tag} (resumed)" if plan == "resume" else tag)

    try:
        result = run(point.recipe, overwrite=overwrite, resume=not overwrite, display=display, on_start=started)
    except RunLocked:
        return False
    except Interrupted:  # SIGINT / SIGTERM: the point wrote its checkpoint; the whole sweep stops
        raise
    except Diverged as e:  # this point's settings (its lr), not the sweep's: the rest go on
        log(f"{tag}: {e}")
        out.diverged.append(point.name)
    except PeftxError:
        raise
    except Exception as e:  # a crash in one point is recorded in its result.json; the rest go on
        log(f"{tag}: failed: {type(e).__name__}: {e}")
        out.failed.append(point.name)
    else:
        if result.record.completed:
            out.completed.append(point.name)
    return True


def run_workers(recipes: list[Path], overrides: list[str], workers: int, points: list[Point], log=print) -> int:
    """`peftx sweep R... --workers N`: N worker processes on the grids (each a plain `peftx sweep R...`).

    N is capped by the points left to run (a worker with no point would only hold memory), and the cap
    is said in one line. On a machine with at least N GPUs each worker sees one (`CUDA_VISIBLE_DEVICES`);
    on CPUs each gets an equal share of the cores. SIGINT and SIGTERM are passed on to every worker (each
    checkpoints its point). A worker killed by a signal is named in one line.

    Args:
        points: the grids' points (`load_sweeps`), to count those left.
        log: one-line messages.

    Returns:
        The largest exit code of the workers, a worker killed by signal N counting as 128 + N (137 for
        SIGKILL), as a shell reports it.
    """
    left = sum(point_state(p) not in ("done", "diverged") for p in points)
    if workers > max(left, 1):
        log(f"--workers {workers}: {left} point(s) left to run, starting {max(left, 1)} worker(s)")
        workers = max(left, 1)
    command = [sys.executable, "-m", "peftx", "sweep", *map(str, recipes), "--quiet"]
    for item in overrides:
        command += ["--set", item]
    gpus = torch.cuda.device_count()
    procs = []
    for i in range(workers):
        env = dict(os.environ)
        if gpus >= workers:
            env["CUDA_VISIBLE_DEVICES"] = str(i)
        elif gpus == 0:
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
        procs.append(subprocess.Popen(command, env=env))

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [p.wait() for p in procs]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for i, (p, code) in enumerate(zip(procs, codes), start=1):
        if code < 0:  # Popen's way of saying "killed by signal -code"
            name = _signal_name(-code)
            log(f"worker {i} of {workers} (pid {p.pid}) was killed by {name}; its point resumes on the next sweep")
    return max(128 - code if code < 0 else code for code in codes)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
