"""`prompt`: trained soft-prompt vectors inserted into `inputs_embeds` (Lester et al. 2021).

peft's prompt tuning refuses T5/BART classification under transformers 5; peftx inserts the vectors
itself: `SoftPrompt` (`peftx.methods.soft_prompt`) is a `MethodExtra`, and `PeftxModel.forward` passes
the embeddings through its `transform_inputs`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from peftx.families import ParamInfo
from peftx.methods.base import BudgetKnob, MethodConfig
from peftx.methods.registry import METHODS

if TYPE_CHECKING:
    from peftx.model.task_model import PeftxModel


class PromptMethod(MethodConfig):
    """Prompt tuning: `length` trained input vectors; the body stays frozen.

    Placement: right after the start token where the family frames sequences with one (BERT
    [CLS], BART <s>), so the start token keeps position 0, its usual position and the one BERT's
    `cls` pooling reads; at the very start otherwise (GPT-2, T5). Padding stays on the right, so
    GPT-2's `last` pooling still finds the last real token and `mean` pooling averages the prompt
    with the sequence. The model's longest input shrinks by `length` positions.
    """

    name: Literal["prompt"] = "prompt"
    length: int = Field(20, ge=1)
    """Soft-prompt vectors (length x hidden trained parameters)."""
    init: Literal["vocab", "random"] = "vocab"
    """vocab: embeddings of randomly drawn vocabulary tokens (as the model embeds them); random:
    normal with the embedding table's standard deviation."""
    budget_knob: ClassVar[BudgetKnob] = BudgetKnob("length", low=1, high=512)

    def knob_limit(self, model: PeftxModel) -> int:
        """At most half the model's positions: the other half stays for the input."""
        positions = model.family.max_positions(model.backbone.config)
        return self.budget_knob.high if positions is None else min(self.budget_knob.high, positions // 2)

    adds_modules: ClassVar[bool] = True

    def prepare(self, model: PeftxModel) -> None:
        import torch  # when a model is built: reading a recipe imports no torch

        from peftx.methods.soft_prompt import SoftPrompt

        embed = model.backbone.get_input_embeddings()
        with torch.no_grad():
            if self.init == "vocab":
                ids = torch.randint(0, embed.num_embeddings, (self.length,), device=embed.weight.device)
                init = embed(ids).float()  # through the module: BART's scaled embedding scales here too
            else:
                std = embed(torch.arange(embed.num_embeddings, device=embed.weight.device)).float().std()
                init = torch.randn(self.length, embed.embedding_dim, device=embed.weight.device) * std
        offset = 1 if model.specials.bos is not None else 0
        model.extras["prompt"] = SoftPrompt(init, offset)

    def trains(self, info: ParamInfo) -> bool:
        return info.role == "prompt"


METHODS.register(PromptMethod)
