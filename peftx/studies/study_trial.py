"""One trial of a sweep's study: the pruner that may stop it, what it reports at each evaluation, and,
for a `search:` sweep, the run its sampled values make.

A trial's pruner compares it only with the trials of its *group* (the user attribute `group`): under
`tune:`, the tuning runs of one configuration (LoRA's rates against each other, never against BitFit's);
in a plain grid, the points that differ only in learning rate and seed; in a search, every trial.
Optuna's pruners compare a trial with every trial of its study, so each is handed a view of the study
that holds its group alone (`_GroupStorage`), which every pruner, Hyperband's brackets included, reads
through.
"""

from __future__ import annotations

import copy
import json
from hashlib import sha1

import optuna
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner, NopPruner, SuccessiveHalvingPruner
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.trial import FrozenTrial

from peftx.errors import Pruned
from peftx.recipe import validate_recipe
from peftx.recipe.grid import Choices, FloatRange, IntRange, SearchSection, set_key
from peftx.studies.sweep_state import Point, SweepSpec, objective_value
from peftx.training.points import EvalPoint

# user attributes every trial of a sweep carries (shown by optuna-dashboard)
POINT, RUN_DIR, STAGE, GROUP = "point", "run_dir", "stage", "group"
DIVERGED, ERROR, INTERRUPTED, DUPLICATE_OF = "diverged", "error", "interrupted", "duplicate_of"
PRUNED_AT = "pruned"


def group_of(point: Point) -> str | None:
    """The group a point's trial is pruned within (None: never pruned: a tuned value's later seeds)."""
    if point.stage == 2:
        return None
    if point.sweep is not None and point.sweep.search is not None:
        return "search"
    if point.stage == 1:
        rest = point.config
    else:
        rest = json.dumps({k: v for k, v in point.values.items() if k not in ("train.lr", "seed")}, default=str)
    return sha1(rest.encode()).hexdigest()[:12]


class _GroupStorage:
    """A study's storage as a pruner of one group sees it: every trial-reading call keeps that group's
    trials; everything else (the pruners' own bookkeeping, in the trials' system attributes) passes
    through."""

    def __init__(self, storage, group: str):
        self._storage, self._group = storage, group

    def get_all_trials(self, study_id, deepcopy=True, states=None):
        trials = self._storage.get_all_trials(study_id, deepcopy=deepcopy, states=states)
        return [t for t in trials if t.user_attrs.get(GROUP) == self._group]

    def __getattr__(self, name):
        return getattr(self._storage, name)


class GroupedPruner(BasePruner):
    """`inner` applied to a trial's group alone (see the module's docstring)."""

    def __init__(self, inner: BasePruner, storage):
        self.inner, self._storage = inner, storage

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        group = trial.user_attrs.get(GROUP)
        if group is None:
            return False
        view = optuna.Study(study.study_name, _GroupStorage(self._storage, group), pruner=self.inner)
        return self.inner.prune(view, trial)


def make_pruner(spec: SweepSpec, recipe, storage) -> BasePruner:
    """The sweep's `prune:` section as an Optuna pruner over each trial's group.

    Args:
        recipe: a point's recipe (its evaluation interval and steps set the default rungs).
        storage: the study's storage.
    """
    cfg = spec.prune
    first = cfg.min_resource if getattr(cfg, "min_resource", None) else recipe.train.eval_every
    if cfg.kind == "asha":
        inner = SuccessiveHalvingPruner(
            min_resource=first,
            reduction_factor=cfg.reduction_factor,
            min_early_stopping_rate=cfg.min_early_stopping_rate,
            bootstrap_count=cfg.bootstrap_count,
        )
    elif cfg.kind == "hyperband":
        inner = HyperbandPruner(
            min_resource=first,
            max_resource=cfg.max_resource or recipe.train.steps or "auto",
            reduction_factor=cfg.reduction_factor,
            bootstrap_count=cfg.bootstrap_count,
        )
    elif cfg.kind == "median":
        inner = MedianPruner(
            n_startup_trials=cfg.n_startup_trials,
            n_warmup_steps=cfg.n_warmup_steps,
            interval_steps=cfg.interval_steps,
            n_min_trials=cfg.n_min_trials,
        )
    else:
        return NopPruner()
    return GroupedPruner(inner, storage)


def make_sampler(spec: SweepSpec, worker: int) -> BaseSampler | None:
    """A `search:` sweep's sampler (None for a grid, whose trials are queued with their values).
    Workers add their index to the seed: with one seed they would all draw the same values."""
    search = spec.search
    if search is None:
        return None
    seed = None if search.seed is None else search.seed + worker
    if search.sampler == "random":
        return RandomSampler(seed=seed)
    # constant_liar: a running trial counts as a poor one, so parallel workers do not draw alike
    return TPESampler(seed=seed, constant_liar=True)


class TrialReporter:
    """A run's `on_eval` hook: reports each evaluation's validation metric to the run's trial, and
    stops the run (`Pruned`) when the study's pruner says it falls behind its group.

    Args:
        trial: the run's trial.
        prune: whether the pruner may stop it (a tuned value's later seeds run to their end).
        kind: the pruner's name, for the reason recorded.
    """

    def __init__(self, trial: optuna.Trial, prune: bool, kind: str):
        self.trial, self.prune, self.kind = trial, prune, kind

    def __call__(self, point: EvalPoint) -> None:
        value, direction = objective_value(point)
        if value is None:
            return
        self.trial.report(value, point.step)
        if self.prune and self.trial.should_prune():
            reason = (
                f"{self.kind}: validation {value:.4g} at step {point.step} is behind its group's "
                f"(the study {'maximizes' if direction == 'maximize' else 'minimizes'} it)"
            )
            self.trial.set_user_attr(PRUNED_AT, {"step": point.step, "reason": reason})
            raise Pruned(point.step, reason)


def suggest(trial: optuna.Trial, key: str, spec: FloatRange | IntRange | Choices):
    """A `search.params` entry drawn for a trial (a retried trial keeps its value)."""
    if isinstance(spec, FloatRange):
        return trial.suggest_float(key, spec.low, spec.high, log=spec.log, step=spec.step)
    if isinstance(spec, IntRange):
        return trial.suggest_int(key, spec.low, spec.high, log=spec.log, step=spec.step)
    return trial.suggest_categorical(key, spec.choices)


def searched_point(trial: optuna.Trial, spec: SweepSpec) -> Point:
    """The run a `search:` trial stands for: its values drawn (or, for a retried trial, kept), set on
    the sweep's base recipe, validated; named after the trial (`trial-0007`) unless it resumes one.

    Raises:
        PeftxError: the drawn values make an invalid recipe (one line naming the trial's values).
    """
    search: SearchSection = spec.search
    values = {key: suggest(trial, key, param) for key, param in search.params.items()}
    name = trial.user_attrs.get(POINT) or f"trial-{trial.number:04d}"
    raw = copy.deepcopy(spec.base)
    for key, value in values.items():
        set_key(raw, key, value)
    raw["output"] = {**(raw.get("output") or {}), "dir": str(spec.dir), "name": name}
    raw["name"] = spec.name
    shown = ", ".join(f"{k}={v}" for k, v in values.items())
    recipe = validate_recipe(raw, f"{spec.where} [{name}: {shown}]")
    return Point(name, values, recipe, params=values, sweep=spec, tune=None)
