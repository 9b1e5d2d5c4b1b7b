"""Body ablations (`model.body`), after Tan et al., NeurIPS 2024, "Are Language Models Actually Useful
for Time Series Forecasting?": the pretrained body between the input layer and the head replaced by
nothing (`none`), by one fresh multi-head attention layer (`attention1`, their "LLM2Attn") or by one
fresh transformer block (`block1`, their "LLM2Trsf").

What stays: the recipe's input layer, built from the full backbone as always (the model's own token
embedding table is kept, under its own name and role, because `pretrained_vocab` looks symbols up in
it), and the head. What goes: every layer of the backbone, its position embeddings and its norms.
As in Tan et al.'s replacements, the fresh layers add no position information of their own and see
the whole sequence (no causal mask, also for decoder families).

The fresh layers are PyTorch's own, at the family's width and head count:
- `attention1`: `nn.MultiheadAttention` (queries, keys, values, output projection, with biases), a
  residual connection and a LayerNorm after it: 4h² + 4h + 2h parameters for width h.
- `block1`: `nn.TransformerEncoderLayer` (post-norm, GELU), the attention above plus a feed-forward
  layer as wide as the family's (f): 4h² + 4h + 2hf + f + h + 4h parameters.
- `none`: no parameters.
Every ablated body pools by the masked mean of its output vectors: the family's poolings (BERT's
[CLS], a decoder's last token, an encoder-decoder's decoder start) are positions whose meaning comes
from the body that is gone; without a body the first or last position would see nothing else.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PretrainedConfig, PreTrainedModel

from peftx.families.base import Family, masked_mean

if TYPE_CHECKING:
    from peftx.model.task_model import PeftxModel

ABLATED_BODIES = ("none", "attention1", "block1")
ABLATION_DROPOUT = 0.1  # dropout of the fresh layers (the standard models' own)
_ATTN = r"layer\.self_attn\.(in_proj_weight|in_proj_bias|out_proj\.(weight|bias))"


class AttentionLayer(nn.Module):
    """One post-norm multi-head self-attention sublayer: LayerNorm(x + Dropout(MHA(x)))."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(width, heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor, src_key_padding_mask: torch.Tensor) -> torch.Tensor:
        a, _ = self.self_attn(x, x, x, key_padding_mask=src_key_padding_mask, need_weights=False)
        return self.norm(x + self.dropout(a))  # (batch, seq, hidden)


class AblatedBody(nn.Module):
    """What replaces the backbone: the kept token embedding (registered under its name in the backbone)
    and at most one fresh layer. Called with (inputs_embeds, attention_mask), returns (batch, seq, hidden).

    Args:
        kind: one of `ABLATED_BODIES`.
        backbone: the full backbone it replaces (its token embedding is kept, its config read).
        family: the backbone's family.
    """

    def __init__(self, kind: str, backbone: PreTrainedModel, family: Family) -> None:
        super().__init__()
        self.kind = kind
        self.config: PretrainedConfig = backbone.config
        embed = backbone.get_input_embeddings()
        self._embed_path = next(n for n, m in backbone.named_modules() if m is embed)
        _register_at(self, self._embed_path, embed)
        width, heads = family.hidden_size(self.config), self.config.num_attention_heads
        if kind == "attention1":
            self.layer = AttentionLayer(width, heads, ABLATION_DROPOUT)
        elif kind == "block1":
            self.layer = nn.TransformerEncoderLayer(
                width, heads, ffn_width(family, backbone), ABLATION_DROPOUT, activation="gelu", batch_first=True
            )
        else:
            self.layer = None
        self.checkpointed = False

    def get_input_embeddings(self) -> nn.Module:
        return self.get_submodule(self._embed_path)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """Recompute the fresh layer's activations in the backward pass (`train.gradient_checkpointing`)."""
        self.checkpointed = True

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.layer is None:
            return inputs_embeds
        pad = attention_mask == 0  # (batch, seq): True where padded
        if self.checkpointed and self.training:
            return checkpoint(self.layer, inputs_embeds, src_key_padding_mask=pad, use_reentrant=False)
        return self.layer(inputs_embeds, src_key_padding_mask=pad)


def _register_at(root: nn.Module, path: str, module: nn.Module) -> None:
    """Register `module` at the dotted `path` under `root`, making empty containers on the way."""
    *parents, last = path.split(".")
    node = root
    for part in parents:
        if not hasattr(node, part):
            node.add_module(part, nn.Module())
        node = getattr(node, part)
    node.add_module(last, module)


def ffn_width(family: Family, backbone: nn.Module) -> int:
    """Width of the family's feed-forward layer: the input width of its output projection."""
    name = family.modules_of(backbone, ["feed_forward_out"])[0]
    module = backbone.get_submodule(name)
    return module.nx if hasattr(module, "nx") else module.in_features  # GPT-2's Conv1D | nn.Linear


def _encode(backbone: AblatedBody, embeds: torch.Tensor, mask: torch.Tensor, pooling: str, specials) -> torch.Tensor:
    return masked_mean(backbone(embeds, mask), mask)  # (batch, hidden)


def ablated_family(family: Family, kind: str) -> Family:
    """The family as an ablated body presents it: the kept token embedding in its role, the fresh
    layer's parameters in the attention, feed-forward and layer-norm roles, mean pooling, no layers
    for methods to pick (they are not applied to an ablated body)."""
    return dataclasses.replace(
        family,
        roles={
            "token_embedding": family.roles["token_embedding"],
            "position_embedding": r"(?!)",
            "attention": _ATTN,
            "feed_forward": r"layer\.linear[12]\.(weight|bias)",
            "layer_norm": r"layer\.norm[12]?\.(weight|bias)",
        },
        layer_pattern=r"(?!)",
        linear_modules={
            "attention": r"layer\.self_attn\.out_proj",
            "feed_forward": r"layer\.linear[12]",
            "key_value": r"(?!)",
            "feed_forward_out": r"layer\.linear2",
        },
        poolings=("mean",),
        encode=_encode,
        num_layers=lambda c: {"encoder": 0 if kind == "none" else 1},
        attention_modules={},
        stacks_run={},
    )


def expected_body_parameters(kind: str, width: int, ffn: int) -> int:
    """The fresh layer's parameter count (the documented formulas above)."""
    attention = 4 * width * width + 4 * width
    if kind == "attention1":
        return attention + 2 * width
    if kind == "block1":
        return attention + 2 * width * ffn + ffn + width + 4 * width
    return 0


def ablate(model: PeftxModel, kind: str) -> None:
    """Replace `model`'s backbone by the ablated body `kind` (in place; the input layer, built from the
    full backbone, and the head stay). Fresh layers are made on the current default device."""
    body = AblatedBody(kind, model.backbone, model.family)
    model.family = ablated_family(model.family, kind)
    model.backbone = body
    model.pooling = "mean"


def train_ablated(model: PeftxModel, roles: set[str]) -> set[str]:
    """Fix the trainable set of an ablated model: the fresh layer in full, plus the parameters of
    `roles` (the head, the input adapter's roles, `method.train_roles`; `bias` picks every bias, as
    `peftx.methods.role_selected` reads it). No method is applied: there is no pretrained body to adapt.

    Returns:
        The trainable parameter names.
    """
    infos = model.param_infos()
    trainable = {
        n
        for n, info in infos.items()
        if n.startswith("backbone.layer.") or info.role in roles or ("bias" in roles and info.is_bias)
    }
    for n, p in model.named_parameters():
        p.requires_grad_(n in trainable)
    return trainable
