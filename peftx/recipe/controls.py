"""The recipe side of the claims' controls (docs/controls.md): `model.init`, `model.body` and
`model.self_pretrain`, and how `model.init` and the older `model.pretrained` agree.

`model.pretrained` was the only control before `model.init`; both stay valid. Whichever one a recipe
gives decides the other: `init: pretrained | shuffled` load the checkpoint (`pretrained: true`),
`init: scratch | self_pretrained` start from random weights (`pretrained: false`). A recipe that gives
both must give them in agreement, so a resolved recipe (which writes both out) reads back the same.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Init = Literal["pretrained", "scratch", "shuffled", "self_pretrained"]
Body = Literal["full", "none", "attention1", "block1"]

# Which inits start from the checkpoint's values (the others from random weights).
LOADS_CHECKPOINT: dict[str, bool] = {"pretrained": True, "shuffled": True, "scratch": False, "self_pretrained": False}


class SelfPretrainSection(BaseModel):
    """`model.self_pretrain`: the stage that trains the whole randomly initialised backbone with its
    family's own pretraining objective on the task's training inputs before fine-tuning (Amos et al.,
    ICLR 2024, "Never Train from Scratch"). Its result is cached and shared by every run whose recipe
    agrees on the backbone, the task data, the input mapping and these fields (not the run's seed,
    method or learning rate), so a sweep makes it once."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    steps: int = Field(1000, ge=1)
    """Optimizer steps of the stage (AdamW on every backbone parameter and the stage's own output layer)."""
    lr: float = Field(5e-4, gt=0, allow_inf_nan=False)
    """Peak learning rate (linear warm-up over `warmup`, then linear decay to 0)."""
    batch_size: int = Field(32, ge=1)
    """Training sequences per step, drawn at random from the task's training split."""
    warmup: float = Field(0.06, ge=0, lt=1, allow_inf_nan=False)
    """Warm-up, a fraction of `steps`."""
    weight_decay: float = Field(0.01, ge=0, allow_inf_nan=False)
    """Decoupled weight decay of the matrices (biases and norms do not decay)."""
    seed: int = Field(0, ge=0, le=2**32 - 1)
    """Seeds the stage alone (initial weights, batches, masks, dropout): not the run's `seed`, so runs of
    several seeds share one self-pretrained body."""
    mask_prob: float = Field(0.15, gt=0, lt=1, allow_inf_nan=False)
    """Encoders (masked-token prediction) and encoder-decoders (span denoising): the fraction of a
    sequence's symbols corrupted. Decoders predict every next token and ignore it."""
    span: float = Field(3.0, ge=1, allow_inf_nan=False)
    """Encoder-decoders: mean length of a corrupted span (lengths are geometric with this mean)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """The stage's arithmetic: fp32, or bf16 autocast (faster where bf16 is; weights stay fp32). Not
    `auto`: the cached body must not depend on which machine made it."""
    eval_examples: int = Field(256, ge=1)
    """Training sequences (with fixed corruption) on which the loss is measured before and after."""
    checkpoint_every: int = Field(200, ge=1, json_schema_extra={"result_neutral": True})
    """Save the stage's progress every this many steps (and every 5 minutes), so that a stopped stage
    goes on where it stopped."""


def resolve_init(data: object) -> object:
    """Fill in whichever of `init` / `pretrained` a raw model section leaves out, and the default
    `self_pretrain` section for `init: self_pretrained` (a pydantic "before" validator's body).

    Raises:
        ValueError: the two are given and disagree (one line naming both).
    """
    if not isinstance(data, dict):
        return data
    data = dict(data)
    init, pretrained = data.get("init"), data.get("pretrained")
    if init is None:
        data["init"] = "scratch" if pretrained is False else "pretrained"
    elif isinstance(init, str) and init in LOADS_CHECKPOINT:
        if isinstance(pretrained, bool) and pretrained != LOADS_CHECKPOINT[init]:
            starts = "the checkpoint's weights" if LOADS_CHECKPOINT[init] else "random weights"
            raise ValueError(
                f"init: {init} starts from {starts} but pretrained is {str(pretrained).lower()}; "
                "give one of them (init replaces pretrained)"
            )
        if pretrained is None:
            data["pretrained"] = LOADS_CHECKPOINT[init]
    if data.get("init") == "self_pretrained" and data.get("self_pretrain") is None:
        data["self_pretrain"] = {}
    return data


def check_controls(init: str, body: str, self_pretrain: object, quantization: str, pooling: str | None) -> None:
    """Refuse model sections whose controls contradict each other or what the rest asks for.

    Raises:
        ValueError: one line naming the fields.
    """
    if self_pretrain is not None and init != "self_pretrained":
        raise ValueError(f"self_pretrain configures init: self_pretrained, and init is {init}")
    if body != "full" and init == "self_pretrained":
        raise ValueError(f"body: {body} removes the body that init: self_pretrained would pretrain")
    if quantization != "none" and (init in ("shuffled", "self_pretrained") or body != "full"):
        what = f"init: {init}" if body == "full" else f"body: {body}"
        raise ValueError(f"quantization: {quantization} applies to whole pretrained or scratch bodies, not {what}")
    if body != "full" and pooling is not None:
        raise ValueError(
            f"pooling: {pooling!r} is the full body's; body: {body} pools by the mean (leave pooling unset)"
        )
