"""Build a `PeftxModel` from a recipe: backbone, input adapter, head, method, storage dtypes. One
function, `build_model`, does it for `run`, for reloading a finished run (`predict`, `evaluate`), and on
the meta device for `validate` and the budget counter, so all construct the model the same way."""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn
from transformers import PretrainedConfig

from peftx.errors import PeftxError
from peftx.inputs import InputContext
from peftx.methods import MethodConfig, apply_method
from peftx.methods.frozen import FrozenMethod
from peftx.model.budget import Budget, model_budget
from peftx.model.loading import Backbone, build_backbone, load_backbone, load_config, resolve_family
from peftx.model.quantization import QuantSpec
from peftx.model.task_model import PeftxModel
from peftx.recipe import ModelSection, RecipeBase
from peftx.tasks import TaskInfo
from peftx.training.controls import init_backbone, replace_body, train_controls
from peftx.util.env import resolve_precision

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def storage_dtype(dtype: str) -> torch.dtype:
    """The dtype a backbone loads in for `model.dtype` ('auto' loads float32; see `store_dtypes`)."""
    return torch.float32 if dtype == "auto" else DTYPES[dtype]


# Normalisation layers whose CPU kernels take weight and bias of one dtype, and float32 ones unless the
# input is bf16 too (measured with torch 2.13, in and out of autocast; `rms_norm` and T5's own RMS
# norm, a plain product, take any mix).
_ONE_DTYPE_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)


def norm_params(model: nn.Module) -> set[str]:
    """Names of the parameters of `_ONE_DTYPE_NORMS` layers (a layer norm's weight and its bias)."""
    return {
        f"{mod_name}.{n}" if mod_name else n
        for mod_name, module in model.named_modules()
        if isinstance(module, _ONE_DTYPE_NORMS)
        for n, _ in module.named_parameters(recurse=False)
    }


def storage_plan(model: nn.Module, dtype: str, frozen_bf16: bool) -> dict[str, torch.dtype]:
    """The dtype each floating-point parameter is stored in, once the trainable set is fixed.

    Args:
        dtype: the recipe's `model.dtype`. bfloat16: everything in the backbone, adapters included (peft
            makes those of a quantized layer float32); auto / float32: trained parameters in float32
            (their own copy is the master the optimizer updates, whatever a plug-in made them).
        frozen_bf16: under `auto`, frozen parameters in bfloat16 (training runs in bf16).

    Layer norms (`_ONE_DTYPE_NORMS`) are float32 in every case. CPU autocast casts matrix products
    (linear, addmm, matmul, attention) but not `layer_norm`. A bf16 norm fails next to its own
    trained fp32 bias (bitfit, `train_roles: [bias]`), and on an fp32 residual stream (a trained
    embedding, input layer or IA3 vector adds fp32 into it). In float32 a norm takes bf16 or fp32
    input and returns the input's dtype, and a trained one keeps an fp32 master copy; norms are
    vectors, so the memory is nil. Every other op is safe with a bf16 frozen weight and an fp32
    trained bias: autocast casts both for linear layers (GPT-2's Conv1D is an addmm), embeddings
    return their table's dtype, T5's RMS norm and IA3 scale elementwise (type promotion), and
    `peftx.model.quantization` adds the bias of a quantized layer out of place.
    """
    norms = norm_params(model)
    plan = {}
    for n, p in model.named_parameters():
        if not p.is_floating_point():  # quantized codes
            continue
        if n in norms:
            plan[n] = torch.float32
        elif dtype == "bfloat16":
            if n.startswith("backbone."):
                plan[n] = torch.bfloat16
        elif p.requires_grad:
            plan[n] = torch.float32
        elif frozen_bf16:
            plan[n] = torch.bfloat16
    return plan


def store_dtypes(model: nn.Module, plan: dict[str, torch.dtype]) -> None:
    """Store each named parameter in its planned dtype (in place; a no-op where it already is)."""
    for n, p in model.named_parameters():
        if n in plan and p.dtype != plan[n]:
            p.data = p.data.to(plan[n])


def _assemble(recipe: RecipeBase, info: TaskInfo, bb: Backbone) -> PeftxModel:
    """The recipe's input layer and head around a backbone; the method is not applied yet.

    Raises:
        PeftxError: the recipe's pooling or input layer does not fit the backbone.
    """
    m = recipe.model
    pooling = m.pooling or bb.family.poolings[0]
    if pooling not in bb.family.poolings:
        raise PeftxError(
            f"model.pooling: {pooling!r} is not one of {bb.family.name}'s: {', '.join(bb.family.poolings)}"
        )
    specials = bb.family.special_ids(bb.model.config, bb.tokenizer)
    ctx = InputContext(
        family=bb.family,
        backbone=bb.model,
        tokenizer=bb.tokenizer,
        specials=specials,
        spec=info.input_spec,
        hidden_size=bb.family.hidden_size(bb.model.config),
    )
    input_layer = recipe.input.build(ctx)
    return PeftxModel(bb.family, bb.model, input_layer, info.objective, pooling, specials, m.head_dropout)


def _loaded_backbone(m: ModelSection) -> Backbone:
    """The recipe's backbone with its weights (pretrained, or random from its configuration)."""
    return load_backbone(
        m.source,
        m.pretrained,
        m.family,
        storage_dtype(m.dtype),
        m.config_overrides,
        QuantSpec.from_section(m),
        trust_remote_code=m.trust_remote_code,
        allow_pickle=m.allow_pickle,
        sha256=m.sha256,
    )


def _meta_backbone(m: ModelSection, config: PretrainedConfig | None) -> Backbone:
    """The recipe's backbone on the meta device, from its configuration alone (no tokenizer)."""
    config = load_config(m.source, m.config_overrides, m.trust_remote_code) if config is None else config
    config = copy.deepcopy(config)  # methods may change the config (the caller's copy is kept as read)
    fam = resolve_family(m.source, config, m.family)
    with torch.device("meta"):
        # in float32, as `auto` and `float32` load; the storage plan then stores each parameter as a
        # loaded one is stored (a `bfloat16` backbone in bf16)
        backbone = build_backbone(fam, config, m.source)
    provenance = {"source": m.source, "pretrained": m.pretrained, "model_type": config.model_type}
    return Backbone(fam, backbone, tokenizer=None, provenance=provenance)


def _apply(model: PeftxModel, recipe: RecipeBase, method: MethodConfig, precision: str) -> None:
    """Apply `method` to an assembled model and store each parameter in the dtype the run keeps it in."""
    if not train_controls(model, recipe, method):  # an ablated body has nothing for the method to adapt
        apply_method(model, method, recipe.input.trained_roles())
    m = recipe.model
    # `auto` loaded float32, so that trained weights start exact
    frozen_bf16 = m.dtype == "auto" and m.quantization == "none" and precision == "bf16"
    store_dtypes(model, storage_plan(model, m.dtype, frozen_bf16))


def build_model(
    recipe: RecipeBase,
    info: TaskInfo,
    precision: str | None = None,
    *,
    meta: bool = False,
    config: PretrainedConfig | None = None,
) -> tuple[PeftxModel, dict]:
    """The recipe's model with its method applied (trainable set fixed) and its parameters stored as
    the run stores them: the one assembly behind `run`, `predict`/`evaluate`, `validate` and `budget`.

    Args:
        precision: the run's resolved precision ('fp32' | 'bf16'; a session passes the one it resolved);
            None: resolved here from `train.precision`.
        meta: build on the meta device from the model's configuration alone: no weights, tokenizer,
            download or memory (`validate`, `budget`). The parameters' names, shapes, dtypes and
            trainable flags are those of the real model.
        config: with `meta`, the model's configuration already read with its overrides (a copy is
            built); None: read here.

    Returns:
        (model, provenance of the backbone for result.json; with `meta`, its source and type only).

    Raises:
        PeftxError: the backbone or its configuration cannot be had, or the recipe's choices do not fit it.
    """
    bb = _meta_backbone(recipe.model, config) if meta else _loaded_backbone(recipe.model)
    init_backbone(bb, recipe, info, meta)  # model.init: shuffled or self-pretrained weights
    with torch.device("meta") if meta else contextlib.nullcontext():
        model = _assemble(recipe, info, bb)
        replace_body(model, recipe)  # model.body: an ablation
        _apply(model, recipe, recipe.method, precision or resolve_precision(recipe.train.precision))
    bb.provenance["family"] = bb.family.name
    return model, bb.provenance


# What MetaCounter's shared model is built with: a method that adds no modules and trains only the
# head. Methods that add none then each choose what trains on that one model.
_BARE_METHOD = FrozenMethod(preset="head_only")


class MetaCounter:
    """Counts one recipe's model under any method without weights or downloads (`build_model` on the
    meta device).

    A 220M-parameter model costs no memory. The configuration is read once (it ships with peftx for
    the standard checkpoints); methods that add no modules (they only choose what trains) share one
    built model, which each applies to in turn.

    `torch.device("meta")` is used rather than accelerate's `init_empty_weights`: the latter
    re-registers every parameter, which unties T5's and BART's shared token embeddings under
    transformers 5, so they would be counted three times.

    Args:
        recipe: a validated recipe; its method is ignored (methods are passed to `count`).

    Raises:
        PeftxError: the model's configuration cannot be had, or its family is not supported.
    """

    def __init__(self, recipe: RecipeBase) -> None:
        m = recipe.model
        self.recipe = recipe
        self.info = recipe.task.describe()
        self.precision = resolve_precision(recipe.train.precision)
        self.config = load_config(m.source, m.config_overrides, m.trust_remote_code)
        self.family = resolve_family(m.source, self.config, m.family)
        self._shared: PeftxModel | None = None

    def build(self, method: MethodConfig) -> PeftxModel:
        """A new meta-device model with `method` applied."""
        recipe = self.recipe.model_copy(update={"method": method})
        return build_model(recipe, self.info, self.precision, meta=True, config=self.config)[0]

    @property
    def base(self) -> PeftxModel:
        """The shared model, with no modules added (for methods that add none, and for knob limits)."""
        if self._shared is None:
            self._shared = self.build(_BARE_METHOD)
        return self._shared

    def model(self, method: MethodConfig) -> PeftxModel:
        """A meta-device model with `method` applied."""
        if type(method).adds_modules:
            return self.build(method)
        with torch.device("meta"):
            _apply(self.base, self.recipe, method, self.precision)
        return self.base

    def count(self, method: MethodConfig) -> Budget:
        """The budget of the model with `method` applied."""
        return model_budget(self.model(method))


def recipe_budget(recipe: RecipeBase) -> Budget:
    """The budget of a recipe's model, without loading or allocating weights."""
    return model_budget(build_model(recipe, recipe.task.describe(), meta=True)[0])
