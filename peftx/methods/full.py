"""`full`: every parameter trains (the backbone, its token and position embeddings, the head)."""

from __future__ import annotations

from typing import ClassVar, Literal

from peftx.families import ParamInfo
from peftx.methods.base import MethodConfig
from peftx.methods.registry import METHODS


class FullMethod(MethodConfig):
    """Full fine-tuning: the whole model trains. With `pretrained_vocab` inputs that includes the
    backbone's token embedding table (only the rows of the task's symbols receive gradients)."""

    name: Literal["full"] = "full"
    quantized_body_ok: ClassVar[bool] = False

    def trains(self, info: ParamInfo) -> bool:
        return True


METHODS.register(FullMethod)
