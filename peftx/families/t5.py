"""T5 family (T5Model: encoder and decoder, no LM head).

T5 has no absolute positions: its position information is the relative-attention bias table of the
first block of each stack, which is the `position_embedding` role here. T5 has no biases anywhere.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

from peftx.families.base import DeclaredShapes, Family, SpecialIds, encoder_decoder_encode, linear, model_class, norm
from peftx.families.registry import FAMILIES

if TYPE_CHECKING:
    from transformers import T5Config


def _special_ids(config: T5Config, tokenizer) -> SpecialIds:
    # T5 appends </s> and starts the decoder from the pad token.
    return SpecialIds(pad=config.pad_token_id, bos=None, eos=config.eos_token_id, decoder_start=config.pad_token_id)


def _declare(fields: dict) -> DeclaredShapes:
    defaults = {"num_decoder_layers": fields.get("num_layers"), "feed_forward_proj": "relu"}
    c = SimpleNamespace(**(defaults | {k: v for k, v in fields.items() if v is not None}))
    d, inner = c.d_model, c.num_heads * c.d_kv
    gated = c.feed_forward_proj.startswith("gated-")
    params = {"shared.weight": (c.vocab_size, d)}  # each stack's embed_tokens is this one, tied
    attention = {}
    for stack, layers in (("encoder", c.num_layers), ("decoder", c.num_decoder_layers)):
        kinds = ["SelfAttention"] + (["EncDecAttention"] if stack == "decoder" else [])
        for i in range(layers):
            for j, kind in enumerate(kinds):
                at = f"{stack}.block.{i}.layer.{j}."
                for proj in ("q", "k", "v"):
                    params |= linear(f"{at}{kind}.{proj}", inner, d, bias=False)
                params |= linear(f"{at}{kind}.o", d, inner, bias=False)
                if i == 0 and kind == "SelfAttention":
                    params[f"{at}SelfAttention.relative_attention_bias.weight"] = (
                        c.relative_attention_num_buckets,
                        c.num_heads,
                    )
                params |= norm(f"{at}layer_norm", d, bias=False)
                attention[f"{at}{kind}"] = (c.num_heads, c.d_kv)
            ff = f"{stack}.block.{i}.layer.{len(kinds)}."
            wi = ("wi_0", "wi_1") if gated else ("wi",)
            for name in wi:
                params |= linear(f"{ff}DenseReluDense.{name}", c.d_ff, d, bias=False)
            params |= linear(f"{ff}DenseReluDense.wo", d, c.d_ff, bias=False) | norm(f"{ff}layer_norm", d, bias=False)
        params |= norm(f"{stack}.final_layer_norm", d, bias=False)
    return DeclaredShapes(c, params, attention, keep_fp32=("wo",))


_LAYER = r"(encoder|decoder)\.block\.\d+\.layer\.\d\."

FAMILY = Family(
    name="t5",
    model_types=("t5",),
    build=lambda config: model_class("T5Model")(config),
    load=lambda path, config, **kw: model_class("T5Model").from_pretrained(path, config=config, **kw),
    roles={
        "token_embedding": r"shared\.weight",
        "position_embedding": _LAYER + r"SelfAttention\.relative_attention_bias\.weight",
        "attention": _LAYER + r"(SelfAttention|EncDecAttention)\.[qkvo]\.weight",
        "feed_forward": _LAYER + r"DenseReluDense\.(wi|wi_0|wi_1|wo)\.weight",
        "layer_norm": r"(" + _LAYER + r"layer_norm|(encoder|decoder)\.final_layer_norm)\.weight",
    },
    layer_pattern=r"(encoder|decoder)\.block\.(\d+)\.",
    linear_modules={
        "attention": _LAYER + r"(SelfAttention|EncDecAttention)\.[qkvo]",
        "feed_forward": _LAYER + r"DenseReluDense\.(wi|wi_0|wi_1|wo)",
        "key_value": _LAYER + r"(SelfAttention|EncDecAttention)\.[kv]",
        "feed_forward_out": _LAYER + r"DenseReluDense\.wo",
    },
    poolings=("decoder_start", "encoder_mean"),
    encode=encoder_decoder_encode,
    special_ids=_special_ids,
    max_positions=lambda c: None,
    hidden_size=lambda c: c.d_model,
    num_layers=lambda c: {"encoder": c.num_layers, "decoder": c.num_decoder_layers},
    attention_modules={
        "encoder_self": r"encoder\.block\.\d+\.layer\.0\.SelfAttention",
        "decoder_self": r"decoder\.block\.\d+\.layer\.0\.SelfAttention",
        "cross": r"decoder\.block\.\d+\.layer\.1\.EncDecAttention",
    },
    attention_shape=lambda m: (m.n_heads, m.key_value_proj_dim),
    stacks_run={"encoder_mean": ("encoder",)},
    declare=_declare,
)

FAMILIES.register(FAMILY)
