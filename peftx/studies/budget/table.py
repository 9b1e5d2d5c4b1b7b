"""`peftx budget`: trainable-parameter budgets of models x methods, and the knob setting of each
method that comes closest to a target budget without exceeding it.

Every number is counted by `peftx.model.budget`: from the families' declared shapes where they cover
the row (`declared`: no torch, milliseconds a row), else on a model built on the meta device (no
weights, no network for the standard checkpoints, whose configurations ship with peftx). A row's
budget depends only on peftx's code, the installed torch/transformers/peft/accelerate, and what the
request names, so rows are cached under `$PEFTX_CACHE/budget/`, keyed by all of these.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError, entry_points, version
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from peftx.errors import PeftxError
from peftx.model.budget import Budget
from peftx.studies.budget.declared import BudgetCounter
from peftx.studies.budget.target import Target, largest_within
from peftx.util.cache import cache_root

if TYPE_CHECKING:
    from peftx.methods import MethodConfig
    from peftx.recipe import RecipeBase

DEFAULT_MODELS = ("bert-base-uncased", "gpt2", "t5-small", "t5-base", "facebook/bart-base", "offline")
DEFAULT_METHODS = ("lora", "prefix", "prompt", "ia3", "bitfit", "frozen", "layers", "full")
DEFAULT_TASK = "listops"
# The recipe rows start from when no --recipe is given (its train section is what emitted recipes get).
DEFAULT_TEMPLATE = {
    "model": {"pretrained": True},
    "task": {"name": DEFAULT_TASK},
    "train": {"lr": 1.0e-3, "batch_size": 32, "steps": 600, "warmup": 0.06, "eval_every": 100},
    "seed": 0,
}
FROM_RECIPE = "<recipe>"  # a row's model or method as the recipe gives it
CACHE_VERSION = 2
PLUGIN_GROUPS = ("peftx.methods", "peftx.inputs", "peftx.tasks", "peftx.families")  # third-party plug-ins


@dataclass
class BudgetRequest:
    """What `peftx budget` was asked (the CLI's options, unparsed where they are names)."""

    models: list[str] | None = None  # sources; None: the recipe's model, else DEFAULT_MODELS
    methods: list[str] | None = None  # `name[:key=value...]`; None: the recipe's method, else DEFAULT_METHODS
    task: str | None = None  # task name (its defaults); None: the recipe's task, else DEFAULT_TASK
    recipe: Path | None = None  # a recipe whose model, task, input, method and train sections are the template
    overrides: list[str] = field(default_factory=list)  # --set key=value on the template
    target: Target | None = None

    def command(self, emit_dir: Path | None = None) -> str:
        """The `peftx budget` command line that makes this request."""
        parts = ["peftx budget"]
        if self.recipe is not None:
            parts.append(f"--recipe {self.recipe}")
        parts += [f"--set {o}" for o in self.overrides]
        if self.models is not None:
            parts.append(f"--models {','.join(self.models)}")
        if self.methods is not None:
            parts.append(f"--methods {','.join(self.methods)}")
        if self.task is not None:
            parts.append(f"--task {self.task}")
        if self.target is not None:
            parts.append(f"--target {str(self.target).replace(',', '')}")
        if emit_dir is not None:
            parts.append(f"--emit-recipes {emit_dir}")
        return " ".join(parts)


@dataclass
class BudgetRow:
    """One (model, method) of a budget table.

    Attributes:
        model: the source as given (hub id, 'offline', directory).
        family: bert | gpt2 | t5 | bart.
        method: method name.
        setting: the method's shown fields, e.g. "r=8", "preset=fpt".
        budget: counts of the model with the method applied.
        recipe: the raw recipe of this row (what `--emit-recipes` writes).
        knob: the field a target search varied (None: a method without a budget knob).
        status: with a target: "match" (largest knob value within it), "max" (the largest value the
            method allows is within it), "none" (even the smallest is over), "fixed" (no knob,
            within), "over" (no knob, over). Empty without a target.
        next: with "match": {"setting", "trainable", "trainable_pct"} one knob step up (over target).
    """

    model: str
    family: str
    method: str
    setting: str
    budget: Budget
    recipe: dict
    knob: str | None = None
    status: str = ""
    next: dict | None = None

    @property
    def fits(self) -> bool:
        return self.status in ("", "match", "max", "fixed")

    def to_dict(self) -> dict:
        return asdict(self) | {"budget": self.budget.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> BudgetRow:
        return cls(**(d | {"budget": Budget.from_dict(d["budget"])}))


def parse_method(spec: str, variant: str | None = None) -> dict:
    """`lora:r=16:alpha=32` -> {"name": "lora", "r": 16, "alpha": 32.0} (values read as YAML). A method
    that names a `variant` field takes its value bare first (`peft:loha:config.r=4`: variant "loha",
    and a dotted key sets a nested field).

    Raises:
        PeftxError: a setting that is not key=value (but the variant).
    """
    name, *settings = spec.strip().split(":")
    out: dict = {"name": name.strip()}
    if variant is not None and settings and "=" not in settings[0]:
        out[variant] = settings.pop(0).strip()
    for s in settings:
        key, sep, text = s.partition("=")
        if not sep or not key.strip():
            raise PeftxError(f"--methods {spec!r}: expected name:key=value, e.g. lora:r=16")
        *outer, last = key.strip().split(".")  # a dotted key sets a nested field: peft:loha:config.r=4
        node = out
        for part in outer:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(text)
    return out


def method_section(method: MethodConfig) -> dict:
    """A method's recipe section: its name, its budget knob, and the fields that differ from their
    defaults."""
    data = method.model_dump()
    knob = [method.budget_knob.field] if method.budget_knob and data[method.budget_knob.field] is not None else []
    fields = type(method).model_fields
    changed = [k for k in data if k != "name" and data[k] != fields[k].get_default(call_default_factory=True)]
    return {"name": method.name} | {k: data[k] for k in dict.fromkeys(knob + changed)}


def shown_setting(method: MethodConfig) -> str:
    """What a budget table shows of a method's settings, e.g. "r=8", "preset=fpt"."""
    section = method_section(method)
    shown = {k: getattr(method, k) for k in method.budget_shown} | {k: v for k, v in section.items() if k != "name"}
    return ", ".join(f"{k}={v}" for k, v in shown.items())


# ----------------------------------------------------------------------------------------------------
# Computing rows (imports torch, transformers, peft)


class _Template:
    """The raw recipe rows start from, with the request's task and overrides applied."""

    def __init__(self, req: BudgetRequest) -> None:
        from peftx.recipe import apply_overrides, read_raw, reject_grid  # lazy: cached rows need no schema

        if req.recipe is not None:
            raw = read_raw(req.recipe, req.overrides)
            raw.pop("name", None)  # emitted recipes are named after their files
            # models and methods are budget's own axes; others would need a table per point
            reject_grid(raw, str(req.recipe), "use --models/--methods, or a plain recipe")
        else:
            raw = apply_overrides(copy.deepcopy(DEFAULT_TEMPLATE), req.overrides)
        if req.task is not None and (raw.get("task") or {}).get("name") != req.task:
            raw["task"] = {"name": req.task}
        raw.setdefault("task", {"name": DEFAULT_TASK})
        if "train" not in raw:
            raw["train"] = copy.deepcopy(DEFAULT_TEMPLATE["train"])
        self.raw = raw
        self.where = str(req.recipe) if req.recipe is not None else "budget"

    def model_section(self, model: str) -> dict:
        section = dict(self.raw.get("model") or {})
        if model == FROM_RECIPE or model == section.get("source", "offline"):
            return section
        # another model: only what is not specific to the recipe's architecture carries over
        return {"source": model} | {
            k: section[k] for k in ("pretrained", "dtype", "head_dropout", "body") if k in section
        }

    def method_spec(self, method: str) -> dict:
        if method == FROM_RECIPE:
            return dict(self.raw["method"]) if isinstance(self.raw["method"], dict) else {"name": self.raw["method"]}
        from peftx.methods import METHODS  # lazy, as in `recipe`: cached rows need none

        name = method.split(":")[0].strip()
        spec = parse_method(method, getattr(METHODS.get(name), "budget_variant", None) if name in METHODS else None)
        own = self.raw.get("method")
        own = {"name": own} if isinstance(own, str) else own
        if own and own.get("name") == spec["name"]:
            return dict(own) | spec  # the recipe's settings of the same method, the request's on top
        return spec

    def recipe(self, model: str, method: str) -> tuple[dict, RecipeBase]:
        """(raw recipe, validated recipe) of one row."""
        from peftx.methods import METHODS  # lazy, as in `recipe`: cached rows need none
        from peftx.recipe import validate_recipe

        raw = copy.deepcopy(self.raw) | {"model": self.model_section(model), "method": self.method_spec(method)}
        name = raw["method"].get("name")
        if name not in METHODS:
            raise PeftxError(f"--methods: unknown method {name!r} (valid: {', '.join(METHODS.names())})")
        knob = METHODS.get(name).budget_knob
        if knob is not None and knob.default is not None and set(raw["method"]) == {"name"}:
            raw["method"][knob.field] = knob.default  # named without settings (layers: top=1)
        return raw, validate_recipe(copy.deepcopy(raw), self.where)


def _row(model: str, family: str, raw: dict, method: MethodConfig, budget: Budget, **extra) -> BudgetRow:
    section = method_section(method)
    # settings the recipe spelled out keep their place, even where they equal the defaults
    given = {k: v for k, v in raw["method"].items() if k not in section and getattr(method, k, None) == v}
    raw = raw | {"model": {"family": family} | raw["model"], "method": section | given}
    return BudgetRow(model, family, method.name, shown_setting(method), budget, raw, **extra)


def _matched(counter: BudgetCounter, model: str, method: MethodConfig, raw: dict, target: Target) -> BudgetRow:
    """The row of a method at the knob value closest to `target` without exceeding it."""
    family, knob = counter.family.name, method.budget_knob
    if knob is None:
        b = counter.count(method)
        return _row(model, family, raw, method, b, status="fixed" if target.fits(b) else "over")
    limit = min(knob.high, method.knob_limit(counter.base))
    budgets: dict[int, Budget] = {}

    def measure(k: int) -> float:
        if k not in budgets:
            budgets[k] = counter.count(method.with_knob(k))
        return target.measure(budgets[k])

    k = largest_within(measure, target.value, knob.low, limit)
    if k is None:  # even the smallest setting is over (or the model allows none): show the smallest
        measure(knob.low)
        low = method.with_knob(knob.low)
        return _row(model, family, raw, low, budgets[knob.low], knob=knob.field, status="none")
    matched = method.with_knob(k)
    nxt = None
    if k < limit:
        up = budgets[k + 1]
        nxt = {"setting": f"{knob.field}={k + 1}", "trainable": up.trainable, "trainable_pct": up.trainable_pct}
    status = "match" if k < limit else "max"
    return _row(model, family, raw, matched, budgets[k], knob=knob.field, status=status, next=nxt)


def compute_rows(req: BudgetRequest, pairs: list[tuple[str, str]]) -> list[BudgetRow]:
    """Count the rows of (model, method) pairs (as `plan` names them), one counter per model.

    Raises:
        PeftxError: an unknown model, method or task, or a recipe that does not validate.
    """
    template = _Template(req)
    counters: dict[str, BudgetCounter] = {}
    rows = []
    for model, method in pairs:
        raw, recipe = template.recipe(model, method)
        if model not in counters:
            counters[model] = BudgetCounter(recipe)
        counter = counters[model]
        label = recipe.model.source if model == FROM_RECIPE else model
        if req.target is not None:
            rows.append(_matched(counter, label, recipe.method, raw, req.target))
        else:
            rows.append(_row(label, counter.family.name, raw, recipe.method, counter.count(recipe.method)))
    return rows


# ----------------------------------------------------------------------------------------------------
# Planning and caching (no torch)


def _light_template(req: BudgetRequest) -> tuple[dict, bytes]:
    """The recipe file's raw mapping and bytes, read without validation ({} if it cannot be read:
    computing the rows then reports the problem)."""
    if req.recipe is None:
        return {}, b""
    try:
        data = Path(req.recipe).read_bytes()
        raw = yaml.safe_load(data)
        return (raw if isinstance(raw, dict) else {}), data
    except Exception:  # unreadable or not YAML
        return {}, b""


def plan(req: BudgetRequest) -> list[tuple[str, str]]:
    """The table's (model, method) pairs, models outer, as the request names them."""
    raw, _ = _light_template(req)
    models = req.models if req.models is not None else [FROM_RECIPE] if req.recipe else list(DEFAULT_MODELS)
    methods = req.methods if req.methods is not None else [FROM_RECIPE] if raw.get("method") else list(DEFAULT_METHODS)
    if not models or not methods:
        raise PeftxError("--models and --methods must each name at least one")
    return [(m, k) for m in models for k in methods]


@cache
def code_fingerprint() -> str:
    """Hash of what budgets depend on besides the request: peftx's sources and shipped configs, the
    versions of the libraries that build models, and installed peftx plug-ins."""
    h = hashlib.sha256(str(CACHE_VERSION).encode())
    root = Path(__file__).parents[2]  # the whole peftx package
    for path in sorted(root.rglob("*")):
        if path.suffix in (".py", ".json") and "__pycache__" not in path.parts:
            h.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    for dist in ("torch", "transformers", "peft", "accelerate", "pydantic"):
        try:
            h.update(f"{dist}={version(dist)}".encode())
        except PackageNotFoundError:
            h.update(f"{dist}=none".encode())
    for group in PLUGIN_GROUPS:
        for ep in sorted(entry_points(group=group), key=lambda ep: ep.name):
            dist = getattr(ep, "dist", None)
            h.update(f"{group}:{ep.name}={ep.value}@{dist.version if dist else ''}".encode())
    return h.hexdigest()


def row_key(req: BudgetRequest, model: str, method: str) -> str:
    """Cache key of one row: everything its numbers depend on."""
    raw, recipe_bytes = _light_template(req)
    source = (raw.get("model") or {}).get("source", "offline") if model == FROM_RECIPE else model
    local = Path(str(source)).expanduser() / "config.json"
    key = {
        "code": code_fingerprint(),
        "recipe": hashlib.sha256(recipe_bytes).hexdigest() if req.recipe is not None else None,
        "overrides": req.overrides,
        "task": req.task,
        "target": [req.target.value, req.target.percent] if req.target else None,
        "model": model,
        "model_config": hashlib.sha256(local.read_bytes()).hexdigest() if local.is_file() else None,
        "method": method,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]


def budget_table(req: BudgetRequest, use_cache: bool = True) -> list[BudgetRow]:
    """The rows of a budget table (cached rows are reused; new ones are counted and cached).

    Args:
        req: what to count.
        use_cache: read cached rows (computed rows are written either way).

    Raises:
        PeftxError: an unknown model, method or task, a recipe that does not validate.
    """
    pairs = plan(req)
    keys = [row_key(req, *p) for p in pairs]
    folder = cache_root() / "budget"
    found: dict[str, BudgetRow] = {}
    if use_cache:
        for key in keys:
            path = folder / f"{key}.json"
            if path.is_file():
                with contextlib.suppress(ValueError, KeyError, TypeError):  # an unreadable entry is recounted
                    found[key] = BudgetRow.from_dict(json.loads(path.read_text()))
    missing = [(p, k) for p, k in zip(pairs, keys) if k not in found]
    if missing:
        rows = compute_rows(req, [p for p, _ in missing])
        for (_, key), row in zip(missing, rows):
            found[key] = row
            _write(folder / f"{key}.json", row.to_dict())
    return [found[k] for k in keys]


def _write(path: Path, data: dict) -> None:
    """Write JSON atomically (a temporary file renamed into place); a read-only cache is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except OSError:
        pass
