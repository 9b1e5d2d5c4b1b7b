"""`prefix`: trained key/value prefixes in every chosen attention layer (Li & Liang 2021), for
classification on every family.

peft's prefix tuning passes prefixes as past key values, which transformers 5 no longer accepts for
classification (and BERT never did). peftx instead hands each attention module its prefix through
transformers' attention-function interface (`peftx.methods.prefix_attention`): after the module's
own key/value projections, the prefix is prepended per head, the mask widened, and T5's relative
position bias given zero for the prefix positions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from peftx.errors import PeftxError
from peftx.families import ParamInfo
from peftx.methods.base import BudgetKnob, MethodConfig
from peftx.methods.registry import METHODS

if TYPE_CHECKING:
    from peftx.model.task_model import PeftxModel

AttentionKind = Literal["encoder_self", "decoder_self", "cross"]


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
        # torch and transformers when a model is built: reading a recipe imports neither
        from peftx.methods.prefix_attention import ATTENTION, Prefixes

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
