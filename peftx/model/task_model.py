"""`PeftxModel`: input adapter -> backbone -> pooled hidden state -> head, the head as wide as the
task's objective asks, its outputs in the targets' own units."""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import PreTrainedModel

from peftx.families import Family, ParamInfo, SpecialIds
from peftx.model.extras import MethodExtras
from peftx.model.pooled_rows import install_pooled_rows, reading_pooled_rows
from peftx.spec.index_space import VALUE
from peftx.spec.instance_norm import InstanceNorm
from peftx.spec.objective import Forecasting, Objective, Regression


class OutputScale(nn.Module):
    """The head's outputs times `scale` plus `loc`: regression targets' training mean and standard
    deviation, so the head learns standardised targets and answers in their units. Buffers, saved with
    the run's weights (`predict` needs them without the training data)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(width))
        self.register_buffer("scale", torch.ones(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.to(x.dtype) + self.loc.to(x.dtype)

    def set(self, loc: tuple[float, ...], scale: tuple[float, ...]) -> None:
        with torch.no_grad():
            self.loc.copy_(torch.tensor(loc, dtype=self.loc.dtype))
            self.scale.copy_(torch.tensor(scale, dtype=self.scale.dtype))


class PeftxModel(nn.Module):
    """A backbone of one family with a task's input layer and a head for the task's objective.

    Forecasting models normalise each example's context per channel (mean and standard deviation over
    its real positions) before the input layer, and put the head's (horizon x channels) outputs back
    in the context's units (RevIN, Kim et al., ICLR 2022, without its learned affine).

    Args:
        family: how this backbone takes `inputs_embeds`, pools, and names its parameters' roles.
        backbone: the transformers model (no LM head, no pooler).
        input_layer: adapter from a task batch to (batch, seq, hidden) embeddings.
        objective: what the head outputs (its width; regression's target scale; forecasting's
            instance normalisation).
        pooling: one of `family.poolings`.
        specials: the model's special token ids (for the decoder start token of T5/BART).
        head_dropout: dropout before the head's linear layer.
    """

    def __init__(
        self,
        family: Family,
        backbone: PreTrainedModel,
        input_layer: nn.Module,
        objective: Objective,
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
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(hidden, objective.width))
        self.output_scale = OutputScale(objective.width) if isinstance(objective, Regression) else None
        self.fit_outputs(objective)
        self.channels = len(objective.labels) if isinstance(objective, Forecasting) else None
        # Modules a method adds outside the backbone, keyed by their budget role ("prefix", "prompt").
        self.extras = MethodExtras()
        self.pooled_rows_layer: str | None = None  # see `compute_pooled_rows_only`

    def forward(
        self,
        attention_mask: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Outputs (batch, objective width) for a padded batch (right padding, mask 1 on real positions):
        logits, or values in the targets' units."""
        norm = None
        if self.channels is not None and values is not None:
            norm = InstanceNorm.of(values.float(), input_ids == VALUE)
            values = ((values.float() - norm.loc) / norm.scale).to(values.dtype)
        batch = {"input_ids": input_ids, "values": values, "attention_mask": attention_mask}
        embeds = self.input(batch)  # (batch, seq, hidden)
        if isinstance(embeds, tuple):  # a layer that changes the length (patches, digit tokens) gives its mask
            embeds, attention_mask = embeds
        for extra in self.extras.values():  # e.g. soft prompts insert vectors and extend the mask
            embeds, attention_mask = extra.transform_inputs(embeds, attention_mask)
        with reading_pooled_rows(self.backbone, self.pooled_rows_layer, self.pooling, attention_mask):
            pooled = self.family.encode(self.backbone, embeds, attention_mask, self.pooling, self.specials)
        out = self.head(pooled.to(self.head[1].weight.dtype))  # (batch, width)
        if self.output_scale is not None:
            out = self.output_scale(out)
        if norm is not None:  # (batch, horizon x channels), time-major
            out = out.float().reshape(len(out), -1, self.channels) * norm.scale + norm.loc
            out = out.flatten(1)
        return out

    def compute_pooled_rows_only(self) -> bool:
        """Have the backbone's last layer compute, in this model's forward passes, only the row the
        pooling reads (`train.skip_unpooled_rows`, `peftx.model.pooled_rows`). Returns whether it applies
        (one-row poolings of families that write the layer's one-row forward)."""
        self.pooled_rows_layer = install_pooled_rows(self.backbone, self.family, self.pooling)
        return self.pooled_rows_layer is not None

    def fit_outputs(self, objective: Objective) -> None:
        """Take a regression objective's target scale (fitted on the training split) into the head."""
        if self.output_scale is not None and isinstance(objective, Regression) and objective.scale:
            self.output_scale.set(objective.loc, objective.scale)

    @property
    def max_length(self) -> int | None:
        """Longest input sequence (framing included) the model takes: the backbone's positions less
        those a method adds in front of the backbone (soft prompts); None: unbounded."""
        limit = self.family.max_positions(self.backbone.config)
        added = sum(extra.added_positions for extra in self.extras.values())
        if limit is None:
            return None
        fit = getattr(self.input, "max_input_length", None)  # a layer that changes the length says what fits
        return limit - added if fit is None else fit(limit - added)

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
