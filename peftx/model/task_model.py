"""`PeftxModel`: input adapter -> backbone -> pooled hidden state -> classification head."""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import PreTrainedModel

from peftx.families import Family, ParamInfo, SpecialIds
from peftx.model.extras import MethodExtras


class PeftxModel(nn.Module):
    """A backbone of one family with a task's input layer and a classification head.

    Args:
        family: how this backbone takes `inputs_embeds`, pools, and names its parameters' roles.
        backbone: the transformers model (no LM head, no pooler).
        input_layer: adapter from a task batch to (batch, seq, hidden) embeddings.
        num_classes: width of the head.
        pooling: one of `family.poolings`.
        specials: the model's special token ids (for the decoder start token of T5/BART).
        head_dropout: dropout before the head's linear layer.
    """

    def __init__(
        self,
        family: Family,
        backbone: PreTrainedModel,
        input_layer: nn.Module,
        num_classes: int,
        pooling: str,
        specials: SpecialIds,
        head_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.family = family
        self.pooling = pooling
        self.specials = specials
        self.backbone = backbone
        self.input = input_layer
        hidden = family.hidden_size(backbone.config)
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(hidden, num_classes))
        # Modules a method adds outside the backbone, keyed by their budget role ("prefix", "prompt").
        self.extras = MethodExtras()

    def forward(
        self,
        attention_mask: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (batch, num_classes) for a padded batch (right padding, mask 1 on real positions)."""
        batch = {"input_ids": input_ids, "values": values, "attention_mask": attention_mask}
        embeds = self.input(batch)  # (batch, seq, hidden)
        for extra in self.extras.values():  # e.g. soft prompts insert vectors and extend the mask
            embeds, attention_mask = extra.transform_inputs(embeds, attention_mask)
        pooled = self.family.encode(self.backbone, embeds, attention_mask, self.pooling, self.specials)
        return self.head(pooled.to(self.head[1].weight.dtype))  # (batch, num_classes)

    @property
    def max_length(self) -> int | None:
        """Longest input sequence (framing included) the model takes: the backbone's positions less
        those a method adds in front of the backbone (soft prompts); None: unbounded."""
        limit = self.family.max_positions(self.backbone.config)
        added = sum(extra.added_positions for extra in self.extras.values())
        return None if limit is None else limit - added

    def param_infos(self) -> dict[str, ParamInfo]:
        """Role, stack and layer of every parameter, keyed by its name in this module."""
        adapter_params = set()
        for mod_name, module in self.backbone.named_modules():
            if isinstance(module, BaseTunerLayer):
                # trained adapter weights, and adapter state some tuners keep as frozen parameters
                # (AdaLoRA's `ranknum`)
                for attr in (*module.adapter_layer_names, *module.other_param_names):
                    holder = getattr(module, attr, None)
                    if isinstance(holder, nn.Module):
                        for pn, _ in holder.named_parameters():
                            adapter_params.add(f"{mod_name}.{attr}.{pn}")
        infos = {}
        for name, _ in self.named_parameters():
            top, _, rest = name.partition(".")
            if top == "backbone":
                plain = rest.replace(".base_layer.", ".")
                info = self.family.classify(plain) if rest not in adapter_params else None
                if info is None:  # an adapter weight inside the backbone: placed by the layer it adapts
                    stack, layer = self.family.locate(plain)
                    info = ParamInfo(role="adapter", stack=stack, layer=layer)
                infos[name] = info
            elif top == "extras":
                infos[name] = ParamInfo(role=rest.partition(".")[0])
            else:  # "input" or "head"
                infos[name] = ParamInfo(role=top, is_bias=name.endswith(".bias"))
        return infos
