"""The recipe schema: one typed description of a run.

Sections: `model`, `task`, `input`, `method`, `train`, `output` (plus `seed` and `name`). `task`,
`input` and `method` are plug-ins chosen by `name`; each plug-in's own config class validates its
fields. Unknown keys are errors. Fields that change how fast or where a run goes, never what it
computes, are marked `RESULT_NEUTRAL` (`sections`); the sweep's staleness check and the report read that mark.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Field, create_model, field_validator, model_validator

from peftx.families import FAMILIES
from peftx.inputs import INPUTS
from peftx.methods import METHODS
from peftx.recipe.controls import Body, Init, SelfPretrainSection, check_controls, resolve_init
from peftx.recipe.sections import RESULT_NEUTRAL, Section, TrainSection
from peftx.tasks import TASKS
from peftx.util.echo import quoted
from peftx.util.user_paths import UserPath, expand_path


class ModelSection(Section):
    """Which backbone, and how it is loaded."""

    family: str | None = None
    """bert | gpt2 | t5 | bart; inferred from the source's config when omitted."""
    source: str = "offline"
    """'offline' (all-MiniLM-L6-v2, BERT family), a local directory, or a hub id such as 't5-small'."""
    pretrained: bool = True
    """false: the same architecture with random weights (the from-scratch baseline); `init` says more."""
    init: Init = "pretrained"
    """Where the backbone's weights come from (docs/controls.md): pretrained (the checkpoint), scratch
    (random; the same as pretrained: false), shuffled (the checkpoint with every tensor's entries
    permuted by the run's seed), self_pretrained (random, then trained on the task's own training
    inputs with the family's pretraining objective: see `self_pretrain`)."""
    body: Body = "full"
    """The body between the input layer and the head (Tan et al., NeurIPS 2024): full (the backbone),
    none (nothing: mean of the input vectors), attention1 (one fresh multi-head attention layer),
    block1 (one fresh transformer block). Fresh layers train in full; the method has no body to adapt."""
    self_pretrain: SelfPretrainSection | None = None
    """The self-pretraining stage of init: self_pretrained (filled with its defaults there)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Storage dtype of the backbone's weights. auto: frozen weights in bfloat16 where training runs in
    bf16 (they need no fp32 master copy, and autocast would re-cast them every step), trained ones in
    float32; float32 everywhere else. bfloat16: every backbone weight in bfloat16, trained ones too (pure
    bf16, no fp32 master copy: updates below bf16's resolution are lost). Layer norms stay float32 under
    every setting (their CPU kernels refuse mixed dtypes; they are vectors, so it costs nothing)."""
    config_overrides: dict[str, Any] = Field(default_factory=dict)
    """Config fields to change, e.g. {num_hidden_layers: 2} for a smaller from-scratch twin."""
    pooling: str | None = None
    """How the sequence becomes one vector; None: the family's default (bert: cls, gpt2: last,
    t5/bart: decoder_start)."""
    head_dropout: float = Field(0.1, ge=0.0, lt=1.0, allow_inf_nan=False)
    """Dropout before the classification head's linear layer."""
    quantization: Literal["none", "8bit", "4bit"] = "none"
    """Store the backbone's linear layers in 8 or 4 bits (bitsandbytes); embeddings, norms, biases,
    the input layer and the head stay in `dtype`. Needs a method that keeps the body frozen."""
    quant_type: Literal["nf4", "fp4"] | None = None
    """4-bit only: nf4 (default; suits normally distributed weights) or fp4."""
    double_quant: bool | None = None
    """4-bit only: also quantize the per-block scales (default true; ~0.4 bits per weight less)."""
    compute_dtype: Literal["float32", "bfloat16"] | None = None
    """4-bit only: dtype the dequantized weights are multiplied in (default: `dtype`)."""
    # whether loading is allowed, never what is computed: result-neutral (older runs are not stale)
    trust_remote_code: bool = Field(False, json_schema_extra=RESULT_NEUTRAL)
    """Let a model directory or hub repository that ships its own Python code (an `auto_map` in its
    config) run that code. Off: such a source is refused."""
    allow_pickle: bool = Field(False, json_schema_extra=RESULT_NEUTRAL)
    """Load pickle checkpoints (`*.bin`, `*.pt`): unpickling can run any code the file holds. Off: only
    safetensors weights are loaded."""
    sha256: str | dict[str, str] | None = Field(None, json_schema_extra=RESULT_NEUTRAL)
    """Pin the pretrained weights: the sha256 of the one weights file, or {file name: sha256} for
    several (sharded) files. The digests of what was loaded are recorded in result.json either way."""

    @field_validator("config_overrides")
    @classmethod
    def _override_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            if not isinstance(key, str) or not key.isidentifier():
                raise ValueError(f"{key!r} is not a config field name")
        return v

    @field_validator("source")
    @classmethod
    def _expand_source(cls, v: str) -> str:
        # `$VAR` in a local directory, as in every path of a recipe (`~` is expanded where it is loaded)
        return str(expand_path(v)) if "$" in v else v

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, v: str | dict[str, str] | None) -> str | dict[str, str] | None:
        digests = v.values() if isinstance(v, dict) else [] if v is None else [v]
        for d in digests:
            if not (isinstance(d, str) and len(d) == 64 and all(c in "0123456789abcdefABCDEF" for c in d)):
                raise ValueError(f"expected a sha256 digest (64 hexadecimal digits), got {d!r}")
        if isinstance(v, dict):
            return {k: d.lower() for k, d in v.items()}
        return v.lower() if v is not None else None

    @model_validator(mode="before")
    @classmethod
    def _init_or_pretrained(cls, data: Any) -> Any:
        return resolve_init(data)

    @model_validator(mode="after")
    def _check(self) -> ModelSection:
        check_controls(self.init, self.body, self.self_pretrain, self.quantization, self.pooling)
        if self.sha256 is not None and not self.pretrained:
            raise ValueError("sha256 pins pretrained weights, and pretrained is false (nothing is loaded)")
        if self.quantization != "4bit":
            for key in ("quant_type", "double_quant", "compute_dtype"):
                if getattr(self, key) is not None:
                    raise ValueError(
                        f"{key} applies to quantization: 4bit only (quantization is {self.quantization!r})"
                    )
        if self.family is not None and self.family not in FAMILIES:
            raise ValueError(f"unknown family {self.family!r} (valid: {', '.join(FAMILIES.names())})")
        if self.source == "offline" and self.family not in (None, "bert"):
            raise ValueError(f"source 'offline' is a bert model, not {self.family}")
        known = self.family or ("bert" if self.source == "offline" else None)
        if self.pooling is not None and known is not None:
            poolings = FAMILIES.get(known).poolings
            if self.pooling not in poolings:
                raise ValueError(f"pooling {self.pooling!r} is not one of {known}'s: {', '.join(poolings)}")
        return self


# A run name is one directory under output.dir: no separators, no '.' or '..', nothing hidden.
RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._=+,@-]*")


def check_run_name(v: str | None) -> str | None:
    """A plain name (letters, digits and `._=+,@-`, not starting with a dot), or ValueError."""
    if v is not None and (not isinstance(v, str) or not RUN_NAME.fullmatch(v) or len(v) > 200):
        raise ValueError(
            f"{quoted(v)} is not a plain run name (letters, digits and ._=+,@- only, not starting with '.', "
            "at most 200 characters)"
        )
    return v


Tracker = Literal["csv", "tensorboard", "wandb", "mlflow"]


class OutputSection(Section):
    dir: UserPath = Field(Path("runs"), json_schema_extra=RESULT_NEUTRAL)
    """Runs are written to <dir>/<name>/ (`~` and `$VAR` expanded, as in every path of a recipe)."""
    name: str | None = Field(None, json_schema_extra=RESULT_NEUTRAL)
    """Run name; default: the recipe's `name`, else the recipe file's stem."""
    trackers: list[Tracker] = Field(default_factory=list, json_schema_extra=RESULT_NEUTRAL)
    """Experiment trackers fed at every log step and evaluation, through accelerate: csv (metrics.csv in
    the run directory), tensorboard (event files in the run directory), wandb, mlflow (each needs its
    package; their offline modes work without a network). metrics.jsonl is written whatever this says."""

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        return check_run_name(v)

    @field_validator("trackers")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"trackers listed twice: {v}")
        return v


class RecipeBase(Section):
    name: str | None = Field(None, json_schema_extra=RESULT_NEUTRAL)
    """Recipe name; the run's name unless `output.name` is set (default: the file's stem)."""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    """Seeds data order, initialisation and dropout."""
    model: ModelSection = ModelSection()
    train: TrainSection
    output: OutputSection = OutputSection()

    @field_validator("name")
    @classmethod
    def _plain_name(cls, v: str | None) -> str | None:
        return check_run_name(v)

    @model_validator(mode="after")
    def _quantized_body_stays_frozen(self) -> RecipeBase:
        method = getattr(self, "method", None)  # the plug-in sections live on the generated subclass
        quant = self.model.quantization
        if quant == "none" or method is None:
            return self
        if not type(method).quantized_body_ok:
            raise ValueError(
                f"method.name: {method.name!r} trains the body's weights, which model.quantization: {quant} "
                "stores frozen; use a method that keeps the body frozen (e.g. lora) or model.quantization: none"
            )
        body = sorted({"attention", "feed_forward"} & set(method.train_roles))
        if body:
            raise ValueError(
                f"method.train_roles: {body} are quantized weights with model.quantization: {quant} and cannot "
                "train (biases can: use the role 'bias')"
            )
        return self

    @property
    def run_name(self) -> str:
        return self.output.name or self.name or "run"

    def to_dict(self) -> dict:
        """The resolved recipe as plain data (as written to result.json)."""
        return self.model_dump(mode="json")


def _plugin_union(classes: list[type[BaseModel]]) -> Any:
    if len(classes) == 1:
        return classes[0]
    return Annotated[Union[tuple(classes)], Field(discriminator="name")]


@cache
def _recipe_class(tasks: tuple, inputs: tuple, methods: tuple) -> type[RecipeBase]:
    return create_model(
        "Recipe",
        __base__=RecipeBase,
        task=(_plugin_union([TASKS.get(n) for n in tasks]), ...),
        input=(_plugin_union([INPUTS.get(n) for n in inputs]) | None, None),
        method=(_plugin_union([METHODS.get(n) for n in methods]), ...),
    )


def recipe_class() -> type[RecipeBase]:
    """The Recipe model over the plug-ins registered now (third-party ones included)."""
    return _recipe_class(tuple(TASKS.names()), tuple(INPUTS.names()), tuple(METHODS.names()))


PLUGINS = {"task": TASKS, "input": INPUTS, "method": METHODS}


def _marked(mark: str, cls: type[BaseModel] | None = None, prefix: str = "") -> dict[str, object]:
    """Dotted key -> the mark's value, for the recipe fields whose schema extra holds `mark`.

    Plug-in sections (task, input, method) are walked through their registered config classes.
    """
    cls = cls or RecipeBase
    keys: dict[str, object] = {}
    for name, field in cls.model_fields.items():
        extra = field.json_schema_extra
        if isinstance(extra, dict) and mark in extra:
            keys[prefix + name] = extra[mark]
        elif isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys |= _marked(mark, field.annotation, f"{prefix}{name}.")
    if not prefix:
        for section, registry in PLUGINS.items():
            for plugin in registry.names():
                found = _marked(mark, registry.get(plugin), f"{section}.")
                keys |= {key: value for key, value in found.items() if key not in keys}
    return keys


def result_neutral_keys() -> tuple[str, ...]:
    """Dotted keys of the recipe fields marked `RESULT_NEUTRAL` (threads, where output goes, names)."""
    return tuple(_marked("result_neutral"))


def result_defining(recipe: dict) -> dict:
    """A resolved recipe (as `RecipeBase.to_dict` gives it) without its result-neutral fields, and with
    the value before they existed for fields `added_later` that a recorded recipe lacks: two runs whose
    result-defining recipes are equal compute the same thing."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in recipe.items()}
    for key in result_neutral_keys():
        head, _, tail = key.partition(".")
        if not tail:
            out.pop(head, None)
        elif isinstance(out.get(head), dict):
            out[head].pop(tail, None)
    for key, before in _marked("absent_means").items():
        head, _, tail = key.partition(".")
        if tail and isinstance(out.get(head), dict):
            out[head].setdefault(tail, before)
    return out
