"""`peft`: any of peft's layer tuners (LoHa, LoKr, VeRA, OFT, BOFT, AdaLoRA, FourierFT, HRA, LN tuning,
...), configured by peft's own config class and injected into the backbone.

The recipe's `config` is the tuner's peft config (`peft_type` plus its fields), validated by that
class when the recipe is read: a field it does not have is a one-line error naming it. Targets
(`target_modules`) may name the family's linear roles (`attention`, `feed_forward`, `key_value`,
`feed_forward_out`), the `layer_norm` role (LN tuning), peft-style module names ("query": every module
whose name ends in it) or full-match regexes; none given: peft's own defaults for the architecture.
As for `lora`, the body stays frozen; the tuner's own parameters, the head (and any `train_roles` or
trained input layer) train and are saved.

Prompt-learning tuners (prefix, prompt, p-tuning, ...) change the inputs, not the layers: use peftx's
`prefix` and `prompt` methods. Tuners whose peft type has no layer tuner are refused when read.
"""

from __future__ import annotations

import difflib
import inspect
import re
import warnings
from dataclasses import fields
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator

from peftx.errors import PeftxError
from peftx.families import ParamInfo
from peftx.methods.base import MethodConfig, target_modules
from peftx.methods.registry import METHODS

# peft is imported inside the functions that use it, once a recipe names this method: reading and
# checking any other recipe, and `peftx recipe show`, import no peft (nor torch).
if TYPE_CHECKING:
    from peft import PeftConfig, PeftType

    from peftx.model.task_model import PeftxModel

# Tuners that need more than injected layers: a training-loop hook or a second model (X-LoRA), or
# several tasks at once (Poly); prompt learning is refused by peft's own `is_prompt_learning`.
UNSUPPORTED = {
    "XLORA": "it mixes several trained LoRA adapters (train those first)",
    "POLY": "it routes between adapters per task id (multi-task only)",
    "TRAINABLE_TOKENS": "peftx's input adapters embed the task's symbols (train them with input.trainable)",
    "ADAPTION_PROMPT": "it adds prompts to LLaMA-style attention only (use method prefix or prompt)",
    "CPT": "it is prompt learning for causal language modelling (use method prompt)",
    "SHADOW": "it runs a second network beside a decoder-only model's layers, which peft cannot inject",
}
# Config fields peftx sets itself (from the recipe's other sections or the model).
OWN_FIELDS = ("peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode")


def peft_type(text: str) -> PeftType:
    """The peft type named by `text` (case-insensitive, `-` as `_`: loha, LoKr, ln-tuning).

    Raises:
        ValueError: no such peft type (naming the valid ones).
    """
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING, PeftType
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    key = str(text).strip().upper().replace("-", "_")
    if key not in PeftType.__members__:
        layer_types = sorted(t.value for t in PEFT_TYPE_TO_CONFIG_MAPPING if t in PEFT_TYPE_TO_TUNER_MAPPING)
        close = difflib.get_close_matches(key, layer_types, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown peft_type {text!r} ({hint}valid: {', '.join(layer_types)})")
    return PeftType[key]


def config_fields(config_cls: type) -> list[str]:
    """The fields of a peft config class a recipe may set."""
    return [f.name for f in fields(config_cls) if f.init and f.name not in OWN_FIELDS]


def make_config(kind: PeftType, settings: dict[str, Any], targets: list[str] | None = None, **extra) -> PeftConfig:
    """peft's config of `kind` from recipe settings (and resolved `targets`).

    Raises:
        ValueError: a field the config class lacks (with the closest valid one), or a value peft refuses.
    """
    from peft import PEFT_TYPE_TO_CONFIG_MAPPING

    config_cls = PEFT_TYPE_TO_CONFIG_MAPPING[kind]
    valid = config_fields(config_cls)
    for key in settings:
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"{config_cls.__name__} has no field {key!r} ({hint}see peft's {config_cls.__name__})")
    args = dict(settings) | extra
    if targets is not None:
        args["target_modules"] = targets
    try:
        return config_cls(**args)
    except (TypeError, ValueError) as e:
        message = " ".join(str(e).split())  # peft's messages may span lines
        raise ValueError(f"{config_cls.__name__}: {message}") from None


def own_defaults(kind: PeftType, settings: dict[str, Any]) -> dict[str, Any]:
    """Fields peftx fills where a recipe leaves them out and peft has no default that builds."""
    if kind.value == "ADALORA" and settings.get("total_step") is None:
        # AdaLoRA refuses to build without one; peftx's loop does not reallocate ranks (see docs/methods.md)
        return {"total_step": 1}
    return {}


class PeftTunerMethod(MethodConfig):
    """Any peft layer tuner; `config` is its peft config (peft_type plus that class's fields)."""

    name: Literal["peft"] = "peft"
    tuner: str | None = None
    """The peft type (loha, lokr, vera, oft, boft, adalora, fourierft, hra, ln_tuning, ...), or give
    `config.peft_type`."""
    config: dict[str, Any] = Field(default_factory=dict)
    """Fields of the tuner's peft config class, e.g. {r: 8, alpha: 16} for LoHa; `target_modules`
    names roles, module names or regexes (default: peft's for the architecture)."""
    adds_modules: ClassVar[bool] = True
    budget_variant: ClassVar[str] = "tuner"  # `peftx budget --methods peft:loha` sets this field

    @model_validator(mode="after")
    def _valid_config(self) -> PeftTunerMethod:
        from peft import PEFT_TYPE_TO_CONFIG_MAPPING, PromptLearningConfig
        from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

        given = self.config.get("peft_type")
        if (self.tuner is None) == (given is None):
            raise ValueError("give the tuner once: tuner: loha, or config: {peft_type: LOHA}")
        kind = peft_type(self.tuner if self.tuner is not None else given)
        if kind.value in UNSUPPORTED:
            raise ValueError(f"peft_type {kind.value} is not supported: {UNSUPPORTED[kind.value]}")
        prompt_learning = issubclass(PEFT_TYPE_TO_CONFIG_MAPPING[kind], PromptLearningConfig)
        if kind not in PEFT_TYPE_TO_TUNER_MAPPING or prompt_learning:
            raise ValueError(
                f"peft_type {kind.value} is prompt learning, not a layer tuner: use method prefix or prompt"
            )
        settings = {k: v for k, v in self.config.items() if k not in ("peft_type", "target_modules")}
        # module names and roles are resolved per model later; here only the field names and values count
        make_config(kind, settings, **own_defaults(kind, settings))
        return self

    @property
    def kind(self) -> PeftType:
        return peft_type(self.tuner if self.tuner is not None else self.config["peft_type"])

    def resolve_targets(self, model: PeftxModel) -> list[str] | None:
        """Backbone module names picked by `config.target_modules` (None: peft's defaults)."""
        given = self.config.get("target_modules")
        if given is None:
            # peft knows no layer norms of BERT-type models; the family's role names them
            return self.resolve_targets_of(model, ["layer_norm"]) if self.kind.value == "LN_TUNING" else None
        return self.resolve_targets_of(model, [given] if isinstance(given, str) else list(given))

    def resolve_targets_of(self, model: PeftxModel, targets: list[str]) -> list[str]:
        """Module names picked by roles, peft-style names or regexes.

        Raises:
            PeftxError: a target that matches no module.
        """
        family = model.family
        names: set[str] = set()
        modules = [n for n, m in model.backbone.named_modules() if n]
        for t in targets:
            if t == "layer_norm":
                rx = re.compile(family.roles["layer_norm"])
                hits = {n for n in modules if any(rx.fullmatch(f"{n}.{p}") for p in ("weight", "bias"))}
            elif t in family.linear_modules:
                hits = set(target_modules(model, [t], "method.config.target_modules"))
            else:  # peft's rule (a name or a dotted suffix of it), else a full-match regex
                hits = {n for n in modules if n == t or n.endswith("." + t)}
                if not hits:
                    try:
                        rx = re.compile(t)
                    except re.error as e:
                        raise PeftxError(f"method.config.target_modules: {t!r} is not a regex ({e})") from None
                    hits = {n for n in modules if rx.fullmatch(n)}
            if not hits:
                raise PeftxError(f"method.config.target_modules: {t!r} matches no module of {family.name}")
            names |= hits
        return sorted(names)

    def peft_config(self, model: PeftxModel) -> PeftConfig:
        """The tuner's peft config for this model's backbone (targets resolved, GPT-2's Conv1D noted)."""
        from peft import PEFT_TYPE_TO_CONFIG_MAPPING
        from transformers.pytorch_utils import Conv1D

        settings = {k: v for k, v in self.config.items() if k not in ("peft_type", "target_modules")}
        targets = self.resolve_targets(model)
        config_cls = PEFT_TYPE_TO_CONFIG_MAPPING[self.kind]
        extra = own_defaults(self.kind, settings)
        if "fan_in_fan_out" in config_fields(config_cls) and "fan_in_fan_out" not in settings and targets:
            modules = dict(model.backbone.named_modules())
            extra["fan_in_fan_out"] = any(isinstance(modules[n], Conv1D) for n in targets)
        try:
            return make_config(self.kind, settings, targets, **extra)
        except ValueError as e:
            raise PeftxError(f"method.config: {e}") from None

    def prepare(self, model: PeftxModel) -> None:
        from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

        config = self.peft_config(model)
        tuner_cls = PEFT_TYPE_TO_TUNER_MAPPING[self.kind]
        # `inject_adapter_in_model` refuses tuners with state shared across layers (VeRA's projections)
        # because it cannot return that state; the tuner object builds it and every layer holds it, and
        # the layers are all peftx keeps (the shared projections are rebuilt from their seed on reload).
        kwargs = {"adapter_name": "default"}
        if "low_cpu_mem_usage" in inspect.signature(tuner_cls.__init__).parameters:
            kwargs["low_cpu_mem_usage"] = False
        try:
            with warnings.catch_warnings():  # LN tuning's norms are not linear layers; peft says so per norm
                warnings.filterwarnings("ignore", message="Unsupported layer type", category=UserWarning)
                tuner_cls(model.backbone, config, **kwargs)
        except (ValueError, TypeError, NotImplementedError) as e:
            message = " ".join(str(e).split())
            raise PeftxError(f"method.config: peft {self.kind.value} on {model.family.name}: {message}") from None
        if not any(info.role == "adapter" for info in model.param_infos().values()):
            raise PeftxError(
                f"method.config: peft {self.kind.value} added no trainable parameters to {model.family.name} "
                "(name target_modules it supports)"
            )

    def trains(self, info: ParamInfo) -> bool:
        return info.role == "adapter"

    def trained_names(self, model: PeftxModel) -> set[str]:
        """The tuner's parameters that peft itself left trainable (not its frozen state, such as
        AdaLoRA's rank counts)."""
        infos = model.param_infos()
        return {n for n, p in model.named_parameters() if infos[n].role == "adapter" and p.requires_grad}


METHODS.register(PeftTunerMethod)
