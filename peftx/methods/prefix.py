"""`prefix`: trained key/value prefixes in every chosen attention layer (Li & Liang 2021), for
classification on every family.

peft's prefix tuning passes prefixes as past key values, which transformers 5 no longer accepts for
classification (and BERT never did). peftx instead hands each attention module its prefix through
transformers' attention-function interface (`peftx.methods.prefix_attention`): after the module's
own key/value projections, the prefix is prepended per head, the mask widened, and T5's relative
position bias given zero for the prefix positions.
"""

from __future__ import annotations

import functools
import itertools
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from peftx.errors import PeftxError
from peftx.families import ParamInfo
from peftx.methods.base import BudgetKnob, MethodConfig
from peftx.methods.prefix_attention import ATTENTION, PREFIX_ATTR
from peftx.methods.registry import METHODS
from peftx.model.extras import ExportedExtra, MethodExtra

if TYPE_CHECKING:
    from peftx.model.task_model import PeftxModel

AttentionKind = Literal["encoder_self", "decoder_self", "cross"]


class Prefixes(MethodExtra):
    """Key/value prefixes of a list of attention modules ("sites"); lives in `model.extras["prefix"]`.

    Without reparameterisation each site holds its own (2, heads, length, head_dim) tensor. With it,
    a shared (length, hidden) embedding goes through an MLP (hidden -> reparam_hidden -> tanh ->
    every site's keys and values); the MLP is what trains and what a run saves, so a reloaded run
    recomputes exactly the same prefixes.

    Args:
        sites: names of the attention modules, in order.
        shapes: (heads, head_dim) of each site.
        length: prefix positions per site.
        hidden: width of the reparameterisation embedding (the model's hidden size).
        reparam_hidden: MLP width, or None for direct prefixes.
        init_std: standard deviation of the direct prefixes' normal initialisation.
    """

    def __init__(
        self,
        sites: list[str],
        shapes: list[tuple[int, int]],
        length: int,
        hidden: int,
        reparam_hidden: int | None,
        init_std: float,
    ) -> None:
        super().__init__()
        self.sites = list(sites)
        self.shapes = list(shapes)
        self.length = length
        self.reparam = reparam_hidden is not None
        if not self.reparam:
            self.kv = nn.ParameterList(
                nn.Parameter(torch.randn(2, heads, length, head_dim) * init_std) for heads, head_dim in shapes
            )
        else:
            widths = [2 * heads * head_dim for heads, head_dim in shapes]
            self.bounds = [0, *itertools.accumulate(widths)]  # plain ints: works on the meta device too
            self.embedding = nn.Parameter(torch.randn(length, hidden))
            self.mlp_in = nn.Linear(hidden, reparam_hidden)
            self.mlp_out = nn.Linear(reparam_hidden, self.bounds[-1])

    def site(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(keys, values) of one site, each (heads, length, head_dim)."""
        heads, head_dim = self.shapes[index]
        if not self.reparam:
            kv = self.kv[index]  # (2, heads, length, head_dim)
        else:
            lo, hi = self.bounds[index], self.bounds[index + 1]
            inner = torch.tanh(self.mlp_in(self.embedding))  # (length, reparam_hidden)
            flat = F.linear(inner, self.mlp_out.weight[lo:hi], self.mlp_out.bias[lo:hi])  # (length, 2*heads*hd)
            kv = flat.view(self.length, 2, heads, head_dim).permute(1, 2, 0, 3)  # (2, heads, length, head_dim)
        return kv[0], kv[1]

    def export_spec(self) -> ExportedExtra:
        """Its state; the prefixes act inside attention, which the exported template cannot apply."""
        return ExportedExtra(
            kind=None,
            tensors=dict(self.state_dict()),
            needs_peftx="act inside the attention, which plain transformers cannot",
        )

    def attach(self, modules: list[nn.Module]) -> None:
        """Give each site module its prefix source (a plain callable: not a registered submodule)."""
        for index, module in enumerate(modules):
            setattr(module, PREFIX_ATTR, functools.partial(self.site, index))


class PrefixMethod(MethodConfig):
    """Prefix tuning: `length` trained key/value positions in front of every chosen attention.

    `attentions` picks the attention kinds that get prefixes: `encoder_self` (BERT, and the T5/BART
    encoder), `decoder_self` (GPT-2, and the T5/BART decoder), `cross` (T5/BART decoder attending
    to the encoder). Default: every kind the forward pass runs, so T5/BART with `decoder_start`
    pooling get all three (as peft's seq2seq prefix tuning), with `encoder_mean` the encoder's only.
    Every query sees every prefix position (the decoder's causal mask included); in T5 the prefix
    positions get zero relative-position bias. The body stays frozen.
    """

    name: Literal["prefix"] = "prefix"
    length: int = Field(16, ge=1)
    """Prefix positions per attention layer: more positions, more capacity (2 x length x hidden each)."""
    attentions: list[AttentionKind] | None = None
    """Which attentions get prefixes (T5/BART): encoder_self, decoder_self, cross; null: all that run."""
    reparam_hidden: int | None = Field(None, ge=1)
    """Width of the reparameterisation MLP (e.g. 512); null: train the prefixes directly."""
    init_std: float = Field(1.0, gt=0)
    """Scale of the direct prefixes' normal initialisation (pretrained keys have std near 1)."""
    budget_knob: ClassVar[BudgetKnob] = BudgetKnob("length", low=1, high=1024)

    def sites(self, model: PeftxModel) -> list[str]:
        """Names of the attention modules that get prefixes.

        Raises:
            PeftxError: an attention kind the family lacks, or one the pooling does not run.
        """
        family = model.family
        running = family.attention_kinds(model.backbone.config, model.pooling)
        kinds = self.attentions if self.attentions is not None else running
        missing = [k for k in kinds if k not in family.attention_modules]
        if missing:
            have = ", ".join(family.attention_modules)
            raise PeftxError(f"method.attentions: {family.name} has no {missing} attention (it has: {have})")
        idle = [k for k in kinds if k not in running]
        if idle:
            raise PeftxError(f"method.attentions: {idle} does not run with pooling {model.pooling!r}")
        if not kinds:
            raise PeftxError("method.attentions: name at least one attention kind")
        return family.attention_sites(model.backbone, kinds)

    adds_modules: ClassVar[bool] = True

    def prepare(self, model: PeftxModel) -> None:
        names = self.sites(model)
        modules = dict(model.backbone.named_modules())
        prefixes = Prefixes(
            names,
            [model.family.attention_shape(modules[n]) for n in names],
            self.length,
            model.family.hidden_size(model.backbone.config),
            self.reparam_hidden,
            self.init_std,
        )
        model.extras["prefix"] = prefixes
        prefixes.attach([modules[n] for n in names])
        model.backbone.set_attn_implementation(ATTENTION)
        bypassed = [n for n in names if getattr(modules[n], "config", None) is None]
        bypassed += [n for n in names if n not in bypassed and modules[n].config._attn_implementation != ATTENTION]
        if bypassed:  # a transformers change: the prefix would be silently ignored
            raise PeftxError(f"method: prefix cannot reach {model.family.name} attention {bypassed[0]!r}")

    def trains(self, info: ParamInfo) -> bool:
        return info.role == "prefix"


METHODS.register(PrefixMethod)
