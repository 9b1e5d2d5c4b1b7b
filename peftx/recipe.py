"""The recipe schema: one typed, validated description of a run, loaded from YAML.

Sections: `model`, `task`, `input`, `method`, `train`, `output` (plus `seed` and `name`). `task`,
`input` and `method` are plug-ins chosen by `name`; each plug-in's own config class validates its
fields. Unknown keys are errors. `--set a.b=value` overrides are parsed as YAML values and validated the
same way. Every user mistake becomes a `PeftxError` whose one line names the file and the key path.
"""

from __future__ import annotations

import difflib
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from peftx.errors import PeftxError
from peftx.families import FAMILIES
from peftx.inputs import INPUTS, InputConfig
from peftx.methods import METHODS, MethodConfig
from peftx.tasks import TASKS, TaskConfig


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(Section):
    """Which backbone, and how it is loaded."""

    family: str | None = None
    """bert | gpt2 | t5 | bart; inferred from the source's config when omitted."""
    source: str = "offline"
    """'offline' (all-MiniLM-L6-v2, BERT family), a local directory, or a hub id such as 't5-small'."""
    pretrained: bool = True
    """false: the same architecture with random weights (the from-scratch baseline)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Storage dtype of the backbone's weights. auto: frozen weights in bfloat16 where training runs in
    bf16 (they need no fp32 master copy, and autocast would re-cast them every step), trained ones in
    float32; float32 everywhere else."""
    config_overrides: dict[str, Any] = Field(default_factory=dict)
    """Config fields to change, e.g. {num_hidden_layers: 2} for a smaller from-scratch twin."""
    pooling: str | None = None
    """How the sequence becomes one vector; None: the family's default (bert: cls, gpt2: last,
    t5/bart: decoder_start)."""
    head_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    quantization: Literal["none", "8bit", "4bit"] = "none"
    """Store the backbone's linear layers in 8 or 4 bits (bitsandbytes); embeddings, norms, biases,
    the input layer and the head stay in `dtype`. Needs a method that keeps the body frozen."""
    quant_type: Literal["nf4", "fp4"] | None = None
    """4-bit only: nf4 (default; suits normally distributed weights) or fp4."""
    double_quant: bool | None = None
    """4-bit only: also quantize the per-block scales (default true; ~0.4 bits per weight less)."""
    compute_dtype: Literal["float32", "bfloat16"] | None = None
    """4-bit only: dtype the dequantized weights are multiplied in (default: `dtype`)."""

    @model_validator(mode="after")
    def _check(self) -> ModelSection:
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


class TrainSection(Section):
    """The training loop."""

    optimizer: Literal["adamw", "adamw8bit", "lion8bit", "paged_adamw8bit"] = "adamw"
    """adamw (torch); the others are bitsandbytes' 8-bit optimizers: state in 8 bits (about 2 bytes per
    trained parameter instead of 8). Lion usually wants a 3-10x smaller lr; paged_adamw8bit pages its
    state to CPU memory under GPU memory pressure (on a CPU it is plain adamw8bit)."""
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    batch_size: int = Field(32, ge=1)
    grad_accum: int = Field(1, ge=1)
    """Micro-batches per optimizer step."""
    steps: int | None = Field(None, ge=1)
    """Optimizer steps; give either steps or epochs."""
    epochs: float | None = Field(None, gt=0)
    warmup: float = Field(0.06, ge=0)
    """Warm-up length: a fraction of all steps if < 1, else a number of steps."""
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    """Learning-rate decay after warm-up."""
    clip_grad_norm: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast where the hardware multiplies bf16 fast (CUDA with bf16, CPUs with
    AVX512-BF16 or AMX), else fp32."""
    eval_every: int = Field(200, ge=1)
    """Evaluate on the validation split every this many steps (and at the end)."""
    eval_batch_size: int = Field(256, ge=1)
    """Most examples in an evaluation batch."""
    eval_batch_tokens: int | None = Field(4096, ge=1)
    """Most padded tokens in an evaluation batch (batches are cut from length-sorted examples, so long
    examples come in smaller batches: less padding; None: always eval_batch_size examples)."""
    select: Literal["best", "last"] = "best"
    """Which weights the final test uses: best validation accuracy, or the last step."""
    group_by_length: bool = True
    """Batch sequences of similar length together (less padding)."""
    log_every: int = Field(10, ge=1)
    gradient_checkpointing: bool = False
    """Recompute each layer's activations in the backward pass instead of keeping them: far less
    memory for activations, about one more forward pass of time."""
    # Speed options (peftx/speed.py). Each gives the plain path's loss; tests/test_speed.py checks it.
    fused_lora: bool = True
    """Run each LoRA layer as one product with the merged weight W + s·B·A and take the LoRA gradients
    in BLAS's fast layout (same result to float rounding; ~1.25x faster LoRA steps on CPU)."""
    fast_dropout: bool | None = None
    """Draw dropout masks 16 bits per element instead of one Bernoulli draw each (same distribution,
    probability quantised to 1/65536; ~1.15x faster steps on CPU). None: on for CPUs, off for GPUs,
    whose own dropout is already fast. Off under gradient_checkpointing (its recomputed forward must
    draw the same masks)."""
    pad_to_multiple: int | None = Field(None, ge=1)
    """Round each padded batch width up to a multiple of this. None: 8 on GPUs (tensor-core shapes), 1 on
    CPUs, where rounding only adds work."""
    threads: int | str | None = None
    """Threads for CPU math (torch.set_num_threads); None: PyTorch's default, one per core. On a machine
    shared with other jobs one thread can be 2x faster; auto times both every 100 steps and keeps the
    faster (reproducible to float rounding only)."""
    compile: bool = False
    """torch.compile the model (dynamic shapes). Fuses element-wise work; costs minutes of compiling up
    front, so it pays only on long runs (see README, Speed)."""

    @field_validator("threads")
    @classmethod
    def _threads(cls, v: int | str | None) -> int | str | None:
        if v is not None and v != "auto" and not (isinstance(v, int) and v >= 1):
            raise ValueError(f"expected a number of threads (1 or more), 'auto' or null, got {v!r}")
        return v

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainSection:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps or epochs")
        return self


class OutputSection(Section):
    dir: Path = Path("runs")
    """Runs are written to <dir>/<name>/."""
    name: str | None = None
    """Run name; default: the recipe's `name`, else the recipe file's stem."""


class RecipeBase(Section):
    name: str | None = None
    seed: int = 0
    model: ModelSection = ModelSection()
    train: TrainSection
    output: OutputSection = OutputSection()

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
    return Annotated[Union[tuple(classes)], Field(discriminator="name")]  # noqa: UP007


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


Recipe = RecipeBase  # for type hints; instances come from `recipe_class()`
PLUGINS = {"task": TASKS, "input": INPUTS, "method": METHODS}


def _format_error(err: dict, where: str, raw: dict) -> str:
    loc = [str(p) for p in err["loc"]]
    # A discriminated union puts the chosen plug-in's name in the path: method.lora.r -> method.r
    if len(loc) >= 2 and loc[0] in PLUGINS and isinstance(raw.get(loc[0]), dict) and raw[loc[0]].get("name") == loc[1]:
        loc.pop(1)
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        parent = _section_fields(loc[:-1], raw)
        hint = difflib.get_close_matches(loc[-1], parent, n=1)
        return f"{where}: {key}: unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
    if err["type"] == "missing":
        return f"{where}: {key}: required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    shown = f" (got {value!r})" if not isinstance(value, dict | list) and err["type"] != "value_error" else ""
    if not key:  # a check across sections: its message starts with the keys it is about
        return f"{where}: {msg}{shown}"
    return f"{where}: {key}: {msg}{shown}"


def _section_fields(loc: list[str], raw: dict) -> list[str]:
    """Field names valid at `loc`, for 'did you mean' hints."""
    cls: Any = recipe_class()
    for part in loc:
        if part in PLUGINS:
            name = raw.get(part, {}).get("name") if isinstance(raw.get(part), dict) else None
            cls = PLUGINS[part].get(name) if name in PLUGINS[part] else None
        else:
            field = cls.model_fields.get(part) if cls else None
            cls = field.annotation if field is not None and isinstance(field.annotation, type) else None
        if cls is None:
            return []
    return list(cls.model_fields) if hasattr(cls, "model_fields") else []


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` overrides (values parsed as YAML) to a raw recipe dict, in place."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise PeftxError(f"--set {item!r}: expected KEY=VALUE, e.g. train.lr=3e-4")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise PeftxError(f"--set {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def validate_recipe(raw: Any, where: str = "<recipe>") -> RecipeBase:
    """Validate a raw recipe dict. Raises PeftxError (one line, naming `where` and the key path)."""
    if not isinstance(raw, dict):
        raise PeftxError(f"{where}: a recipe is a mapping of sections, got {type(raw).__name__}")
    for section, registry in PLUGINS.items():
        valid = ", ".join(registry.names())
        value = raw.get(section)
        if value is None:
            continue
        if isinstance(value, str):  # shorthand: `method: lora`
            raw[section] = value = {"name": value}
        if not isinstance(value, dict):
            raise PeftxError(f"{where}: {section}: expected a mapping with a 'name'")
        if "name" not in value:
            raise PeftxError(f"{where}: {section}.name: required key is missing (valid: {valid})")
        if value["name"] not in registry:
            raise PeftxError(f"{where}: {section}.name: unknown {registry.kind} {value['name']!r} (valid: {valid})")
    try:
        recipe = recipe_class().model_validate(raw)
    except ValidationError as e:
        errors = e.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise PeftxError(_format_error(errors[0], where, raw) + more) from None
    if recipe.input is None:
        recipe = recipe.model_copy(update={"input": INPUTS.get(recipe.task.default_input())()})
    return recipe


def read_raw(path: str | Path, overrides: list[str] | None = None) -> dict:
    """A recipe file as a raw mapping, with `--set` overrides applied and `name` defaulting to the
    file's stem. Raises PeftxError on a missing file, a YAML syntax error or a non-mapping."""
    path = Path(path)
    if not path.is_file():
        raise PeftxError(f"{path}: no such recipe file")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark else ""
        raise PeftxError(f"{path}{at}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise PeftxError(f"{path}: a recipe is a mapping of sections, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    return apply_overrides(raw, overrides or [])


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> RecipeBase:
    """Read, override and validate a recipe file (one run).

    Args:
        path: a YAML file.
        overrides: `a.b=value` strings applied before validation.

    Returns:
        The validated recipe; `name` defaults to the file's stem.

    Raises:
        PeftxError: missing file, YAML syntax error, grid axes (a sweep), or an invalid recipe (one
            line, naming the key).
    """
    from peftx.sweep import find_axes

    raw = read_raw(path, overrides)
    axes = find_axes(raw)
    if axes:
        keys = ", ".join(k for k, _ in axes)
        raise PeftxError(f"{path}: holds grid axes ({keys}); run it with `peftx sweep {path}`")
    return validate_recipe(raw, str(path))


def dump_recipe(recipe: RecipeBase) -> str:
    """YAML of a resolved recipe (every default written out)."""
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


__all__ = ["Recipe", "TaskConfig", "InputConfig", "MethodConfig", "load_recipe", "validate_recipe", "dump_recipe"]
