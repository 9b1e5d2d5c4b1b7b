"""BART family (BartModel: encoder and decoder, no LM head).

Input embeddings enter through `shared`, BART's scaled word embedding, so `pretrained_vocab` inputs
carry the same sqrt(d_model) scale the model was trained with.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

from peftx.families.base import DeclaredShapes, Family, SpecialIds, encoder_decoder_encode, linear, model_class, norm
from peftx.families.registry import FAMILIES

if TYPE_CHECKING:
    from transformers import BartConfig


def _special_ids(config: BartConfig, tokenizer) -> SpecialIds:
    return SpecialIds(
        pad=config.pad_token_id,
        bos=config.bos_token_id,
        eos=config.eos_token_id,
        decoder_start=config.decoder_start_token_id,
    )


_POSITION_OFFSET = 2  # BART's learned positions keep two rows before position 0


def _declare(fields: dict) -> DeclaredShapes:
    c = SimpleNamespace(**fields)
    d = c.d_model
    params = {"shared.weight": (c.vocab_size, d)}  # each stack's embed_tokens is this one, tied
    attention = {}
    for stack in ("encoder", "decoder"):
        params[f"{stack}.embed_positions.weight"] = (c.max_position_embeddings + _POSITION_OFFSET, d)
        heads, ffn = getattr(c, f"{stack}_attention_heads"), getattr(c, f"{stack}_ffn_dim")
        kinds = ["self_attn"] + (["encoder_attn"] if stack == "decoder" else [])
        for i in range(getattr(c, f"{stack}_layers")):
            at = f"{stack}.layers.{i}."
            for kind in kinds:
                for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
                    params |= linear(f"{at}{kind}.{proj}", d, d)
                params |= norm(f"{at}{kind}_layer_norm", d)
                attention[f"{at}{kind}"] = (heads, d // heads)
            params |= linear(f"{at}fc1", ffn, d) | linear(f"{at}fc2", d, ffn) | norm(f"{at}final_layer_norm", d)
        params |= norm(f"{stack}.layernorm_embedding", d)
    return DeclaredShapes(c, params, attention)


_LAYER = r"(encoder|decoder)\.layers\.\d+\."

FAMILY = Family(
    name="bart",
    model_types=("bart",),
    build=lambda config: model_class("BartModel")(config),
    load=lambda path, config, **kw: model_class("BartModel").from_pretrained(path, config=config, **kw),
    roles={
        "token_embedding": r"shared\.weight",
        "position_embedding": r"(encoder|decoder)\.embed_positions\.weight",
        "attention": _LAYER + r"(self_attn|encoder_attn)\.(q|k|v|out)_proj\.(weight|bias)",
        "feed_forward": _LAYER + r"fc[12]\.(weight|bias)",
        "layer_norm": r"(("
        + _LAYER
        + r"(self_attn_layer_norm|encoder_attn_layer_norm|final_layer_norm))|(encoder|decoder)\.layernorm_embedding)"
        + r"\.(weight|bias)",
    },
    layer_pattern=r"(encoder|decoder)\.layers\.(\d+)\.",
    linear_modules={
        "attention": _LAYER + r"(self_attn|encoder_attn)\.(q|k|v|out)_proj",
        "feed_forward": _LAYER + r"fc[12]",
        "key_value": _LAYER + r"(self_attn|encoder_attn)\.(k|v)_proj",
        "feed_forward_out": _LAYER + r"fc2",
    },
    poolings=("decoder_start", "encoder_mean"),
    encode=encoder_decoder_encode,
    special_ids=_special_ids,
    max_positions=lambda c: c.max_position_embeddings,
    hidden_size=lambda c: c.d_model,
    num_layers=lambda c: {"encoder": c.encoder_layers, "decoder": c.decoder_layers},
    attention_modules={
        "encoder_self": r"encoder\.layers\.\d+\.self_attn",
        "decoder_self": r"decoder\.layers\.\d+\.self_attn",
        "cross": r"decoder\.layers\.\d+\.encoder_attn",
    },
    attention_shape=lambda m: (m.num_heads, m.head_dim),
    space_prefix=True,
    stacks_run={"encoder_mean": ("encoder",)},
    declare=_declare,
)

FAMILIES.register(FAMILY)
