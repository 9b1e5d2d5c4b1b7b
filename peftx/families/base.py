"""What a model family is: parameter roles, how inputs enter, and how the sequence is pooled.

A family never guesses from substrings at run time: each one declares, as full-match regular
expressions over its backbone's parameter names, which parameters play which role. Methods pick roles
(`frozen` trains layer norms, `lora` targets attention matrices, ...), and the one parameter counter
reports by role.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from types import SimpleNamespace
from typing import TYPE_CHECKING

from peftx.families.pooled_rows import pick, pooled_row

if TYPE_CHECKING:  # declaring a family imports no torch: recipes are read and checked without it
    import torch
    from torch import nn
    from transformers import PretrainedConfig, PreTrainedModel

# Roles every family has in its backbone. `bias` and the layer index are attributes, not roles.
CORE_ROLES = ("token_embedding", "position_embedding", "attention", "feed_forward", "layer_norm")
# Roles of the layers peftx puts around every backbone: the task's input layer and the head
# (`PeftxModel.input`, `PeftxModel.head`). Modules a method adds have roles of their own (`adapter`,
# `prefix`, `prompt`), which only that method trains.
OUTER_ROLES = ("input", "head")
# Coarse groups used in budgets: the input layer, the pretrained body, added adapters, the head.
ROLE_GROUPS = {
    "token_embedding": "input",
    "input": "input",
    "adapter": "adapter",
    "prefix": "adapter",
    "prompt": "adapter",
    "head": "head",
}


@dataclass(frozen=True)
class ParamInfo:
    """Where one parameter sits: its role, stack (encoder/decoder) and layer index."""

    role: str
    stack: str | None = None
    layer: int | None = None
    is_bias: bool = False

    @property
    def group(self) -> str:
        return ROLE_GROUPS.get(self.role, "body")


@dataclass(frozen=True)
class SpecialIds:
    """Token ids of the model's own vocabulary used to frame and pad a sequence."""

    pad: int
    bos: int | None  # prepended (BERT [CLS], BART <s>); None: nothing prepended
    eos: int | None  # appended (BERT [SEP], T5/BART </s>); None: nothing appended
    decoder_start: int | None = None  # encoder-decoder families only


if TYPE_CHECKING:
    from peftx.families.pooled_rows import RowsForward

    Encode = Callable[[PreTrainedModel, torch.Tensor, torch.Tensor, str, SpecialIds], torch.Tensor]


@dataclass(frozen=True)
class Family:
    """A model family: everything peftx needs to know about one transformers architecture.

    Attributes:
        name: registry key ("bert", "gpt2", "t5", "bart").
        model_types: `config.model_type` values this family accepts.
        build: config -> backbone with random weights (no LM head, no pooler).
        load: (path or hub id, config) -> pretrained backbone.
        roles: role -> full-match regex over backbone parameter names.
        layer_pattern: regex whose groups are (stack, layer index) or (layer index,).
        linear_modules: role -> regex over module names of the Linear (or Conv1D) layers of that role;
            LoRA and IA3 target these. Besides `attention` and `feed_forward`: `key_value` (the key and
            value projections; GPT-2's fused q/k/v projection) and `feed_forward_out` (the feed-forward
            layer's output projection).
        poolings: pooling choices; the first is the default.
        encode: (backbone, inputs_embeds, attention_mask, pooling, specials) -> pooled (batch, hidden).
        special_ids: (config, tokenizer or None) -> SpecialIds.
        max_positions: config -> longest sequence the backbone accepts (None: unbounded).
        hidden_size: config -> width of inputs_embeds.
        attention_modules: attention kind (`encoder_self`, `decoder_self`, `cross`) -> regex over the
            names of the attention modules of that kind; each calls transformers' attention-function
            interface once per forward (prefix tuning attaches there).
        attention_shape: attention module -> (heads, head dim) of its keys and values.
        space_prefix: byte-level BPE vocabularies spell a word inside a sentence with a leading space.
        last_layer_rows: the backbone's last layer -> its forward for the pooled row alone
            (`peftx.families.pooled_rows`), or None where that layer cannot (None: no such forward;
            the family's poolings read more than one row of it).
        stacks_run: pooling -> the stacks (keys of `num_layers`) its forward pass runs; a pooling not
            listed runs every stack (T5/BART `encoder_mean` runs the encoder only).
        declare: a config.json's fields -> the backbone's parameters (`DeclaredShapes`), for budgets
            counted without building the model (None: budgets build it on the meta device).
    """

    name: str
    model_types: tuple[str, ...]
    build: Callable[[PretrainedConfig], PreTrainedModel]
    load: Callable[..., PreTrainedModel]  # (path or hub id, config, **from_pretrained kwargs)
    roles: dict[str, str]
    layer_pattern: str
    linear_modules: dict[str, str]
    poolings: tuple[str, ...]
    encode: Encode
    special_ids: Callable[[PretrainedConfig, object | None], SpecialIds]
    max_positions: Callable[[PretrainedConfig], int | None]
    hidden_size: Callable[[PretrainedConfig], int]
    num_layers: Callable[[PretrainedConfig], dict[str, int]]
    attention_modules: dict[str, str]
    attention_shape: Callable[[nn.Module], tuple[int, int]]
    space_prefix: bool = False
    last_layer_rows: Callable[[nn.Module], RowsForward | None] | None = None
    stacks_run: dict[str, tuple[str, ...]] = field(default_factory=dict)
    declare: Callable[[dict], DeclaredShapes] | None = None

    @cached_property
    def _role_res(self) -> list[tuple[str, re.Pattern]]:
        return [(role, re.compile(rx)) for role, rx in self.roles.items()]

    @cached_property
    def _layer_re(self) -> re.Pattern:
        return re.compile(self.layer_pattern)

    def classify(self, name: str) -> ParamInfo:
        """Role, stack and layer of a backbone parameter, given its plain (un-wrapped) name.

        Raises:
            KeyError: the name matches no declared role (a family definition bug).
        """
        role = next((r for r, rx in self._role_res if rx.fullmatch(name)), None)
        if role is None:
            raise KeyError(f"{self.name}: parameter {name!r} matches no role")
        stack, layer = self.locate(name)
        return ParamInfo(role=role, stack=stack, layer=layer, is_bias=name.endswith(".bias"))

    def locate(self, name: str) -> tuple[str | None, int | None]:
        """(stack, layer index) of a parameter or module name; (None, None) outside the layers."""
        m = self._layer_re.search(name)
        if not m:
            return None, None
        groups = m.groups()
        return (groups[0] if len(groups) == 2 else None), int(groups[-1])

    def last_layer(self, backbone: nn.Module) -> str | None:
        """Name of the backbone's layer module with the highest index (`layer_pattern`), or None."""
        layers = [n for n, _ in backbone.named_modules() if self._layer_re.fullmatch(n + ".")]
        return max(layers, key=lambda n: self.locate(n + ".")[1], default=None)

    def stacks(self, config: PretrainedConfig, pooling: str) -> dict[str, int]:
        """Layer count of each stack the forward pass runs with `pooling`, in forward order."""
        counts = self.num_layers(config)
        run = self.stacks_run.get(pooling, tuple(counts))
        return {stack: n for stack, n in counts.items() if stack in run}

    def attention_kinds(self, config: PretrainedConfig, pooling: str) -> list[str]:
        """The attention kinds the forward pass runs with `pooling` (`cross` runs in the decoder)."""
        run = self.stacks(config, pooling)
        return [k for k in self.attention_modules if ("encoder" if k == "encoder_self" else "decoder") in run]

    def attention_sites(self, backbone: nn.Module, kinds: list[str]) -> list[str]:
        """Names of the attention modules of the given kinds, in module order."""
        res = [re.compile(self.attention_modules[k]) for k in kinds]
        return [n for n, _ in backbone.named_modules() if any(rx.fullmatch(n) for rx in res)]

    def modules_of(self, backbone: nn.Module, roles: list[str]) -> list[str]:
        """Names of the Linear-like modules of the given roles (for LoRA / IA3 targets)."""
        unknown = [r for r in roles if r not in self.linear_modules]
        if unknown:
            raise ValueError(f"{self.name} has no linear modules of role(s) {unknown}")
        res = [re.compile(self.linear_modules[r]) for r in roles]
        return [n for n, _ in backbone.named_modules() if any(rx.fullmatch(n) for rx in res)]


@dataclass(frozen=True)
class DeclaredShapes:
    """A backbone's parameters declared from its configuration, without torch (`Family.declare`).

    `peftx budget` counts from these; tests/studies/budget/test_declared.py checks every family's
    against the model built on the meta device, name by name, so the two cannot drift.

    Attributes:
        config: the config's fields, with the defaults transformers fills for those the family reads.
        params: name -> shape of every parameter as the backbone's `named_parameters()` lists them (a
            tied weight once); weight matrices as (out_features, in_features), whatever their stored
            layout (GPT-2's Conv1D stores (in, out)).
        attention: attention module name -> (heads, head_dim) of its keys and values.
        keep_fp32: module names quantization leaves in full precision (`_keep_in_fp32_modules`).
    """

    config: SimpleNamespace
    params: dict[str, tuple[int, ...]]
    attention: dict[str, tuple[int, int]]
    keep_fp32: tuple[str, ...] = ()


def linear(name: str, out_features: int, in_features: int, bias: bool = True) -> dict[str, tuple[int, ...]]:
    """The parameters of one linear layer, for `DeclaredShapes.params`."""
    return {f"{name}.weight": (out_features, in_features)} | ({f"{name}.bias": (out_features,)} if bias else {})


def norm(name: str, width: int, bias: bool = True) -> dict[str, tuple[int, ...]]:
    """The parameters of one layer norm (RMS norms have no bias), for `DeclaredShapes.params`."""
    return {f"{name}.weight": (width,)} | ({f"{name}.bias": (width,)} if bias else {})


def model_class(name: str) -> type:
    """The transformers model class called `name`, imported when a family first builds or loads one."""
    import transformers

    return getattr(transformers, name)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the sequence of (batch, seq, hidden), counting only positions where mask is 1."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (batch, seq, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)


def last_token(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden state of the last non-pad position of each row (right padding): (batch, hidden)."""
    return pick(hidden, pooled_row("last", mask)).squeeze(1)


def encoder_decoder_encode(
    backbone: PreTrainedModel,
    embeds: torch.Tensor,
    mask: torch.Tensor,
    pooling: str,
    specials: SpecialIds,
) -> torch.Tensor:
    """Pool an encoder-decoder (T5, BART).

    `decoder_start` (default) runs the decoder on its start token alone and returns its hidden
    state: that one position cross-attends to the whole encoder output, so every pretrained part of
    the model (decoder and cross-attention included) takes part, at the cost of a one-token decoder
    pass. `encoder_mean` runs only the encoder and mean-pools it (half the compute; decoder unused).
    """
    if pooling == "encoder_mean":
        out = backbone.get_encoder()(inputs_embeds=embeds, attention_mask=mask)
        return masked_mean(out.last_hidden_state, mask)
    import torch  # at call time: see the imports above

    start = torch.full((embeds.shape[0], 1), specials.decoder_start, dtype=torch.long, device=embeds.device)
    out = backbone(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=start, use_cache=False)
    return out.last_hidden_state[:, 0]
