"""`bitfit`: only the body's bias terms (and the head) train (Ben Zaken et al. 2022)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from peftx.methods.base import MethodConfig
from peftx.methods.registry import METHODS

if TYPE_CHECKING:
    from peftx.model.task_model import PeftxModel


class BitFitMethod(MethodConfig):
    """Every bias of the backbone trains: attention and feed-forward biases and layer-norm biases.

    T5, Llama and Mistral (llama family) have no bias anywhere. There `bitfit` trains the layer-norm
    (RMSNorm) scales instead (the only other per-channel vectors of the body, d_model each), so that
    the method still adapts the body with a budget of the same order; a model that has any bias
    trains its biases only (Qwen2, llama family: its query, key and value biases).
    """

    name: Literal["bitfit"] = "bitfit"

    def trained_names(self, model: PeftxModel) -> set[str]:
        body = {n: i for n, i in model.param_infos().items() if i.group == "body"}
        biases = {n for n, i in body.items() if i.is_bias}
        return biases or {n for n, i in body.items() if i.role == "layer_norm"}


METHODS.register(BitFitMethod)
