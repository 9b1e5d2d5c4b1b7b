"""`frozen`: the body stays frozen; chosen roles train (the Frozen Pretrained Transformer and kin)."""

from __future__ import annotations

from typing import ClassVar, Literal

from peftx.families import ParamInfo
from peftx.methods.base import MethodConfig
from peftx.methods.registry import METHODS

PRESETS: dict[str, tuple[str, ...]] = {
    # Lu et al. 2021: layer norms, position embeddings, the new input layer and the output head
    "fpt": ("layer_norm", "position_embedding", "input"),
    "head_only": (),
    "ln_only": ("layer_norm",),
}


class FrozenMethod(MethodConfig):
    """A frozen body with a preset of trained roles; the head always trains.

    Presets: `fpt` (layer norms + position embeddings + the task's own input layer, role `input`;
    a `pretrained_vocab` input is the backbone's token table and stays frozen unless
    `input.trainable`), `head_only`, `ln_only`. Other roles are added through `train_roles`, e.g.
    `{preset: head_only, train_roles: [bias, layer_norm]}` trains exactly those roles.
    """

    name: Literal["frozen"] = "frozen"
    preset: Literal["fpt", "head_only", "ln_only"] = "fpt"
    """fpt: layer norms + position embeddings + input layer; head_only; ln_only: layer norms."""
    budget_shown: ClassVar[tuple[str, ...]] = ("preset",)

    def trains(self, info: ParamInfo) -> bool:
        return info.role in PRESETS[self.preset]


METHODS.register(FrozenMethod)
