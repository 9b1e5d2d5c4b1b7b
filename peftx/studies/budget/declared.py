"""Budgets counted from the families' declared shapes, without torch: what makes `peftx budget` fast.

Building a model on the meta device (`peftx.training.builder.MetaCounter`) needs torch, transformers
and peft imported (seconds before the first row) and peft's adapters set up on every model. Yet a
budget is arithmetic over shapes: each family declares its backbone's parameters from a config.json
(`Family.declare`), the methods that add modules add them by closed formulas here, and the methods'
own code (`trained_names`, `role_selected`, the input's `trained_roles`) picks what trains, on a
stand-in model that has names and shapes only. The result is the same `Budget`, field by field, as the
meta-device count; tests/studies/budget/test_declared.py checks every family and method of the default
table, and the knob values a target search visits, against it, so the two cannot drift.

Where a recipe asks for anything these formulas do not cover (a local or hub model, config
overrides, another body or initialisation, quantization, a method or input adapter without a formula
here), `DeclaredCounter.of` or `count` returns None and the caller counts on the meta device.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from peftx.families import FAMILIES, Family, ParamInfo
from peftx.methods.base import role_selected, target_modules
from peftx.model.budget import Budget, count_parameters
from peftx.model.sources import CONFIG_DIR, STANDARD_CONFIGS
from peftx.spec.index_space import NUM_FRAMING

if TYPE_CHECKING:
    from peftx.families.base import DeclaredShapes
    from peftx.methods import MethodConfig
    from peftx.recipe import RecipeBase
    from peftx.training.builder import MetaCounter

# Model-section fields that change no parameter count (anything else non-default: count on the meta device).
COUNT_NEUTRAL = {
    *("family", "source", "pretrained", "dtype", "pooling", "head_dropout", "sha256", "allow_pickle"),
    *("init", "self_pretrain"),  # where the weights come from, never their shapes (`body` does change them)
}
# Input adapters whose parameters are known here (shared index table, linear projection, none).
INPUT_FORMULAS = ("pretrained_vocab", "pixel_vocab", "learned", "learned_from_vocab", "linear")
# Methods that add modules, and the formulas of what they add; methods that add none need no formula.
ADDING_METHODS = ("lora", "ia3", "prefix", "prompt")


@dataclass
class _Param:
    """A parameter as the counter sees it: its size and whether it trains."""

    size: int
    requires_grad: bool = False

    def numel(self) -> int:
        return self.size


class _Module:
    """A stand-in module of the declared backbone: its name is what matters, and whether it has a weight."""

    def __init__(self, has_weight: bool) -> None:
        if has_weight:
            self.weight = None


class _Backbone:
    """What methods read of a backbone: its configuration and its modules' names."""

    def __init__(self, shapes: DeclaredShapes) -> None:
        self.config = shapes.config
        names = dict.fromkeys(n.rsplit(".", i)[0] for n in shapes.params for i in range(1, n.count(".") + 1))
        self._modules = [("", _Module(False))] + [(n, _Module(f"{n}.weight" in shapes.params)) for n in names]

    def named_modules(self):
        return iter(self._modules)


class _DeclaredModel:
    """What methods read of a `PeftxModel` (family, backbone, pooling, `param_infos`), declared, not built."""

    def __init__(self, family: Family, backbone: _Backbone, pooling: str, params: dict[str, tuple[int, ParamInfo]]):
        self.family, self.backbone, self.pooling = family, backbone, pooling
        self.params = params

    def param_infos(self) -> dict[str, ParamInfo]:
        return {n: info for n, (_, info) in self.params.items()}

    def named_parameters(self):
        return ((n, _Param(size)) for n, (size, _) in self.params.items())


def _size(shape: tuple[int, ...]) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


class DeclaredCounter:
    """Counts one recipe's model under methods from declared shapes, as `MetaCounter` does by building it.

    Use `DeclaredCounter.of(recipe)`, which returns None where the formulas do not cover the recipe.
    """

    def __init__(self, recipe: RecipeBase, family: Family, shapes: DeclaredShapes) -> None:
        self.recipe, self.family, self.shapes = recipe, family, shapes
        self.pooling = recipe.model.pooling or family.poolings[0]
        self.hidden = family.hidden_size(shapes.config)
        self._backbone = _Backbone(shapes)
        params = {f"backbone.{n}": (_size(s), family.classify(n)) for n, s in shapes.params.items()}
        params |= self._input_params()
        width = recipe.task.describe().objective.width
        params |= {"head.1.weight": (width * self.hidden, ParamInfo("head"))}
        params |= {"head.1.bias": (width, ParamInfo("head", is_bias=True))}
        self._params = params
        self.base = _DeclaredModel(family, self._backbone, self.pooling, params)

    @classmethod
    def of(cls, recipe: RecipeBase) -> DeclaredCounter | None:
        """A counter for `recipe`'s model, or None where its budget needs the model built."""
        m = recipe.model
        changed = {
            k for k, f in type(m).model_fields.items() if getattr(m, k) != f.get_default(call_default_factory=True)
        }
        if changed - COUNT_NEUTRAL or m.source not in STANDARD_CONFIGS or recipe.input.name not in INPUT_FORMULAS:
            return None
        fields = json.loads((CONFIG_DIR / STANDARD_CONFIGS[m.source]).read_text())
        family = next(
            (FAMILIES.get(n) for n in FAMILIES.names() if fields["model_type"] in FAMILIES.get(n).model_types), None
        )
        if family is None or family.declare is None or (m.family is not None and m.family != family.name):
            return None
        return cls(recipe, family, family.declare(fields))

    def _input_params(self) -> dict[str, tuple[int, ParamInfo]]:
        """The input layer's parameters (role `input`): a table over the shared indices, a projection."""
        inp, spec = self.recipe.input, self.recipe.task.describe().input_spec
        if inp.name in ("learned", "learned_from_vocab"):
            return {"input.embed.weight": ((NUM_FRAMING + len(spec.symbols)) * self.hidden, ParamInfo("input"))}
        if inp.name == "linear":
            out = {"input.proj.weight": (spec.dim * self.hidden, ParamInfo("input"))}
            out["input.proj.bias"] = (self.hidden, ParamInfo("input", is_bias=True))
            if inp.framing == "learned":
                out["input.framing.embed.weight"] = (NUM_FRAMING * self.hidden, ParamInfo("input"))
            return out
        return {}  # the backbone's own token embeddings (pretrained_vocab, pixel_vocab)

    def _added(self, method: MethodConfig) -> dict[str, tuple[int, ParamInfo]] | None:
        """The parameters `method` adds (None: a method whose additions have no formula here)."""
        if not type(method).adds_modules:
            return {}
        if method.name not in ADDING_METHODS:
            return None
        if method.name == "prompt":
            return {"extras.prompt.vectors": (method.length * self.hidden, ParamInfo("prompt"))}
        if method.name == "prefix":
            return self._prefix(method)
        targets = target_modules(self.base, method.targets)
        if any(len(self.shapes.params[f"{t}.weight"]) != 2 for t in targets):
            return None  # a regex that picks a norm or an embedding: what peft makes of it, peft says
        out = {}
        for module in targets:
            fan_out, fan_in = self.shapes.params[f"{module}.weight"]
            stack, layer = self.family.locate(module)
            info = ParamInfo("adapter", stack, layer)
            if method.name == "lora":  # A (r, in), B (out, r); DoRA: a magnitude per output
                out[f"backbone.{module}.lora_A.default.weight"] = (method.r * fan_in, info)
                out[f"backbone.{module}.lora_B.default.weight"] = (fan_out * method.r, info)
                if method.use_dora:
                    out[f"backbone.{module}.lora_magnitude_vector.default.weight"] = (fan_out, info)
            else:  # ia3: a vector over the inputs of feed-forward targets, over the outputs of others
                feed_forward = self.family.linear_modules["feed_forward"]
                out[f"backbone.{module}.ia3_l.default"] = (
                    fan_in if re.fullmatch(feed_forward, module) else fan_out,
                    info,
                )
        return out

    def _prefix(self, method: MethodConfig) -> dict[str, tuple[int, ParamInfo]]:
        """Keys and values per attention site, or the reparameterisation MLP that makes them."""
        sites = method.sites(self.base)
        info = ParamInfo("prefix")
        if method.reparam_hidden is None:
            return {
                f"extras.prefix.kv.{i}": (2 * h * method.length * d, info)
                for i, (h, d) in enumerate(self.shapes.attention[s] for s in sites)
            }
        width, inner = sum(2 * h * d for h, d in (self.shapes.attention[s] for s in sites)), method.reparam_hidden
        return {
            "extras.prefix.embedding": (method.length * self.hidden, info),
            "extras.prefix.mlp_in.weight": (inner * self.hidden, info),
            "extras.prefix.mlp_in.bias": (inner, info),
            "extras.prefix.mlp_out.weight": (width * inner, info),
            "extras.prefix.mlp_out.bias": (width, info),
        }

    def count(self, method: MethodConfig) -> Budget | None:
        """The budget of the model with `method` applied, or None where `method` has no formula here."""
        added = self._added(method)
        if added is None:
            return None
        model = _DeclaredModel(self.family, self._backbone, self.pooling, self._params | added)
        extra = set(method.train_roles) | self.recipe.input.trained_roles() | {"head"}
        trainable = method.trained_names(model) | {
            n for n, info in model.param_infos().items() if role_selected(info, extra)
        }
        named = {n: (_Param(size, n in trainable), info) for n, (size, info) in model.params.items()}
        return count_parameters(named, self.shapes.keep_fp32)


def declared_budget(recipe: RecipeBase) -> Budget | None:
    """`recipe`'s budget from declared shapes (no torch), or None where its model must be built to count."""
    counter = DeclaredCounter.of(recipe)
    return counter.count(recipe.method) if counter is not None else None


class BudgetCounter:
    """Counts one recipe's model under methods: from declared shapes where they cover the method, else
    on the meta device (`MetaCounter`, which imports torch: only then)."""

    def __init__(self, recipe: RecipeBase) -> None:
        self.recipe = recipe
        self.declared = DeclaredCounter.of(recipe)
        self._meta: MetaCounter | None = None

    @property
    def meta(self) -> MetaCounter:
        if self._meta is None:
            from peftx.training.builder import MetaCounter  # torch: only for rows declared shapes miss

            self._meta = MetaCounter(self.recipe)
        return self._meta

    @property
    def family(self):  # noqa: ANN201  (a Family)
        return self.declared.family if self.declared is not None else self.meta.family

    @property
    def base(self):  # noqa: ANN201  (what `knob_limit` reads of a model)
        return self.declared.base if self.declared is not None else self.meta.base

    def count(self, method: MethodConfig) -> Budget:
        budget = self.declared.count(method) if self.declared is not None else None
        return budget if budget is not None else self.meta.count(method)
