"""`prompt`: trained soft-prompt vectors inserted into `inputs_embeds` (Lester et al. 2021).

peft's prompt tuning refuses T5/BART classification under transformers 5; peftx inserts the vectors
itself: `SoftPrompt` is a `MethodExtra`, and `PeftxModel.forward` passes the embeddings through its
`transform_inputs`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from peftx.families import ParamInfo
from peftx.methods.base import BudgetKnob, MethodConfig
from peftx.methods.registry import METHODS
from peftx.model.extras import ExportedExtra, MethodExtra

if TYPE_CHECKING:
    from peftx.model.task_model import PeftxModel


class SoftPrompt(MethodExtra):
    """`length` trained vectors inserted at position `offset` of every sequence (mask extended).

    Args:
        init: (length, hidden) initial vectors.
        offset: where they go: 1 behind a start token the family frames sequences with (BERT's
            [CLS], BART's <s>), else 0 (GPT-2, T5).
    """

    def __init__(self, init: torch.Tensor, offset: int) -> None:
        super().__init__()
        self.vectors = nn.Parameter(init.clone())  # (length, hidden)
        self.offset = offset

    @property
    def added_positions(self) -> int:
        """Positions this module adds to every sequence (the model's longest input shrinks by as many)."""
        return self.vectors.shape[0]

    def transform_inputs(self, embeds: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, seq, hidden), (batch, seq) -> (batch, length + seq, hidden), (batch, length + seq)."""
        batch, at = embeds.shape[0], self.offset
        prompt = self.vectors.to(embeds.dtype).expand(batch, -1, -1)  # (batch, length, hidden)
        ones = torch.ones(batch, self.added_positions, dtype=mask.dtype, device=mask.device)
        embeds = torch.cat([embeds[:, :at], prompt, embeds[:, at:]], dim=1)
        mask = torch.cat([mask[:, :at], ones, mask[:, at:]], dim=1)
        return embeds, mask

    def export_spec(self) -> ExportedExtra:
        """Kind "prompt": the vectors and their offset, which the exported template inserts itself."""
        return ExportedExtra(kind="prompt", tensors={"vectors": self.vectors}, settings={"prompt_offset": self.offset})


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
