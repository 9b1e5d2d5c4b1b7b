"""Which values of a raw recipe are grid axes (a sweep), by the schema's own field types.

A list is a grid axis wherever the schema expects a single value: `seed: [0, 1, 2]`, `train.lr:
[1e-3, 3e-4]`, a whole section (`method: [{name: lora}, {name: full}]`), or a field inside one
(`model: {pretrained: [true, false]}`). Fields that are lists by nature (`method.targets`) are not
axes; an explicit `grid:` section of dotted keys sweeps them.

Also the sweep's own sections, checked here so that a typo is named with its key before anything
runs: `search:` (ranges a sampler draws from, and a trial budget) and `prune:` (which pruner stops runs
that fall behind).
"""

from __future__ import annotations

import typing
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, TypeAdapter, ValidationError, model_validator

from peftx.errors import PeftxError
from peftx.recipe.schema import PLUGINS, recipe_class

SECTIONS = ("model", "task", "input", "method", "train", "output")
# The sections a sweep recipe may hold besides the recipe's own: `grid:` (explicit axes), `tune:` (the
# learning-rate protocol, `peftx.studies.sweep_state`), `search:` (sampled values) and `prune:` (stopping
# runs that fall behind). A point's recipe never holds them.
SWEEP_KEYS = ("grid", "tune", "search", "prune")


def _is_list_type(annotation) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set, frozenset):
        return True
    return any(_is_list_type(a) for a in typing.get_args(annotation)) if origin is not None else False


def _section_class(section: str, value: dict):
    """The config class that validates a section as written (None: an unknown plug-in name)."""
    if section in PLUGINS:
        name = value.get("name")
        return PLUGINS[section].get(name) if isinstance(name, str) and name in PLUGINS[section] else None
    return recipe_class().model_fields[section].annotation


def find_axes(raw: dict) -> list[tuple[str, list]]:
    """(dotted key, values) of every grid axis of a raw recipe, in the order written.

    Raises:
        PeftxError: a malformed `grid:` section or an empty axis.
    """
    axes: list[tuple[str, list]] = []
    for key in ("name", "output"):  # one sweep writes under one name and one output.dir
        if isinstance(raw.get(key), list):
            raise PeftxError(f"{key}: a list here is no grid axis (a sweep has one {key}; each point is named for you)")
    if isinstance(raw.get("output"), dict) and isinstance(raw["output"].get("dir"), list):
        raise PeftxError("output.dir: a list here is no grid axis (every point of a sweep runs under one output.dir)")
    for key, value in raw.items():
        if key == "grid":
            if not isinstance(value, dict) or not all(isinstance(v, list) and v for v in value.values()):
                raise PeftxError("grid: expected a mapping of dotted keys to non-empty lists")
            axes.extend(value.items())
        elif key in SECTIONS and isinstance(value, list):
            axes.append((key, value))
        elif key in SECTIONS and isinstance(value, dict):
            fields = getattr(_section_class(key, value), "model_fields", {})
            for sub, v in value.items():
                if isinstance(v, list) and sub in fields and not _is_list_type(fields[sub].annotation):
                    axes.append((f"{key}.{sub}", v))
                elif isinstance(v, list) and sub == "name" and key in PLUGINS:
                    axes.append((f"{key}.{sub}", v))  # `method: {name: [lora, full]}`: one plug-in per point
        elif key in SWEEP_KEYS:  # read by the sweep itself (`tune: [...]` is refused there, not swept)
            continue
        elif isinstance(value, list):
            axes.append((key, value))
    for key, values in axes:
        if not values:
            raise PeftxError(f"{key}: an empty list gives an empty sweep")
    return axes


def reject_grid(raw: dict, where: str, instead: str) -> None:
    """Refuse a raw recipe that holds grid axes where one run is expected.

    Args:
        where: the file, for the message.
        instead: what to do instead, e.g. "run it with `peftx sweep FILE`".

    Raises:
        PeftxError: naming the axes.
    """
    axes = find_axes(raw)
    if axes:
        raise PeftxError(f"{where}: holds grid axes ({', '.join(k for k, _ in axes)}); {instead}")
    sections = [k for k in SWEEP_KEYS if k in raw]
    if sections:
        raise PeftxError(f"{where}: holds sweep sections ({', '.join(sections)}); {instead}")


def set_key(raw: dict, key: str, value) -> None:
    """Set a dotted key in a raw recipe (a plug-in section given by its name becomes `{name: ...}`):
    how a grid point or a search's draw sets its values.

    Raises:
        PeftxError: the key passes through a value that is not a section.
    """
    head, _, tail = key.partition(".")
    if not tail:
        if isinstance(value, str) and head in PLUGINS:
            value = {"name": value}
        raw[head] = value
        return
    node = raw.setdefault(head, {})
    if not isinstance(node, dict):
        raise PeftxError(f"{key}: {head} is not a section")
    set_key(node, tail, value)


class _SweepSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class FloatRange(_SweepSection):
    """A float from `low` to `high` (on a log scale with `log: true`)."""

    type: Literal["float"]
    low: float
    high: float
    log: bool = False
    step: float | None = Field(None, gt=0)
    """Only multiples of `step` above `low` (not with `log`)."""

    @model_validator(mode="after")
    def _check(self) -> FloatRange:
        _check_range(self.low, self.high, self.log, self.step)
        return self


class IntRange(_SweepSection):
    """An integer from `low` to `high`, both included (on a log scale with `log: true`)."""

    type: Literal["int"]
    low: int
    high: int
    log: bool = False
    step: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> IntRange:
        _check_range(self.low, self.high, self.log, self.step if self.step != 1 else None)
        return self


class Choices(_SweepSection):
    """One of `choices` (numbers, strings, booleans; a plug-in section by its name)."""

    type: Literal["categorical"]
    choices: list[StrictBool | StrictInt | float | str | None] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Choices:
        if len(set(map(repr, self.choices))) < len(self.choices):
            raise ValueError("choices: a value is listed twice")
        return self


def _check_range(low: float, high: float, log: bool, step: float | None) -> None:
    if low > high:
        raise ValueError(f"low ({low}) is above high ({high})")
    if log and low <= 0:
        raise ValueError(f"log: needs low above 0, got {low}")
    if log and step is not None:
        raise ValueError("step and log: choose one")


SearchParam = Annotated[FloatRange | IntRange | Choices, Field(discriminator="type")]


class SearchSection(_SweepSection):
    """`search:`: values sampled from ranges rather than listed; each trial is one run."""

    trials: int = Field(ge=1)
    """How many runs the search may take, over every worker (a retry of a killed worker's run is not one
    more)."""
    params: dict[str, SearchParam] = Field(min_length=1)
    """Dotted recipe keys (`train.lr`, `method.r`) and the range each is drawn from."""
    sampler: Literal["tpe", "random"] = "tpe"
    """tpe: Optuna's TPE (models which values did well); random: independent draws."""
    seed: int | None = None
    """The sampler's seed (each worker adds its index); None: fresh draws every time."""
    direction: Literal["maximize", "minimize"] | None = None
    """Whether the validation metric is to be raised or lowered; None: the metric's own direction."""


class AshaPrune(_SweepSection):
    """Asynchronous successive halving: at each rung (`min_resource` x `reduction_factor`^k steps) a run
    goes on only if it is in the best 1/`reduction_factor` of its group's runs that reached that rung."""

    kind: Literal["asha"]
    min_resource: int | None = Field(None, ge=1)
    """Steps before the first rung; None: the first evaluation (train.eval_every)."""
    reduction_factor: int = Field(4, ge=2)
    min_early_stopping_rate: int = Field(0, ge=0)
    bootstrap_count: int = Field(0, ge=0)
    """Runs that must reach a rung before any is promoted past it."""


class HyperbandPrune(_SweepSection):
    """Hyperband: several successive-halving brackets with different first rungs."""

    kind: Literal["hyperband"]
    min_resource: int | None = Field(None, ge=1)
    """Steps before the first rung; None: the first evaluation (train.eval_every)."""
    max_resource: int | None = Field(None, ge=1)
    """The longest a run may go; None: train.steps (Optuna's 'auto' where the recipe gives epochs)."""
    reduction_factor: int = Field(3, ge=2)
    bootstrap_count: int = Field(0, ge=0)


class MedianPrune(_SweepSection):
    """Stop a run whose best value so far is worse than the median of its group's runs at that step."""

    kind: Literal["median"]
    n_startup_trials: int = Field(5, ge=0)
    """Runs of the group that finish before any is pruned."""
    n_warmup_steps: int = Field(0, ge=0)
    """Steps of each run before it may be pruned."""
    interval_steps: int = Field(1, ge=1)
    n_min_trials: int = Field(1, ge=1)


class NoPrune(_SweepSection):
    """Every run goes to its end (or `train.early_stop`)."""

    kind: Literal["none"]


PruneSection = Annotated[AshaPrune | HyperbandPrune | MedianPrune | NoPrune, Field(discriminator="kind")]
_KINDS = {"type": "float, int, categorical", "kind": "asha, hyperband, median, none"}
_TAGS = {tag for tags in _KINDS.values() for tag in tags.split(", ")}


def read_search(raw: dict) -> SearchSection | None:
    """The raw recipe's `search:` section, validated (None: no section).

    Raises:
        PeftxError: one line naming the key (`search.params.train.lr.low: ...`).
    """
    section = raw.get("search")
    return None if section is None else _validated(TypeAdapter(SearchSection), section, "search")


def read_prune(raw: dict) -> AshaPrune | HyperbandPrune | MedianPrune | NoPrune:
    """The raw recipe's `prune:` section, validated (no section: `kind: none`).

    Raises:
        PeftxError: one line naming the key (`prune.reduction_factor: ...`).
    """
    section = raw.get("prune")
    if section is None:
        return NoPrune(kind="none")
    if isinstance(section, str):  # `prune: asha`
        section = {"kind": section}
    return _validated(TypeAdapter(PruneSection), section, "prune")


def _validated(adapter: TypeAdapter, section, name: str):
    try:
        return adapter.validate_python(section)
    except ValidationError as e:
        errors = e.errors()
        # a misspelt key also leaves a required one missing: name the misspelling
        first = next((err for err in errors if err["type"] == "extra_forbidden"), errors[0])
    # a discriminated union puts the chosen kind in the path: prune.asha.reduction_factor -> prune.reduction_factor
    loc = [name, *(str(p) for p in first["loc"] if str(p) not in _TAGS)]
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    elif first["type"] in ("union_tag_invalid", "union_tag_not_found"):
        field = first["ctx"]["discriminator"].strip("'")
        got = first["ctx"].get("tag")
        loc.append(field)
        msg = f"expected one of {_KINDS[field]}" + (f", got {got!r}" if got is not None else " (required)")
    elif not isinstance(first.get("input"), dict | list):
        msg += f" (got {first.get('input')!r})"
    raise PeftxError(f"{'.'.join(loc)}: {msg}") from None
