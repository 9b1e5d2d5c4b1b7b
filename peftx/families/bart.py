"""BART family (BartModel: encoder and decoder, no LM head).

Input embeddings enter through `shared`, BART's scaled word embedding, so `pretrained_vocab` inputs
carry the same sqrt(d_model) scale the model was trained with.
"""

from __future__ import annotations

from transformers import BartConfig, BartModel

from peftx.families.base import Family, SpecialIds, encoder_decoder_encode
from peftx.families.registry import FAMILIES


def _special_ids(config: BartConfig, tokenizer) -> SpecialIds:
    return SpecialIds(
        pad=config.pad_token_id,
        bos=config.bos_token_id,
        eos=config.eos_token_id,
        decoder_start=config.decoder_start_token_id,
    )


_LAYER = r"(encoder|decoder)\.layers\.\d+\."

FAMILY = Family(
    name="bart",
    model_types=("bart",),
    build=lambda config: BartModel(config),
    load=lambda path, config, **kw: BartModel.from_pretrained(path, config=config, **kw),
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
)

FAMILIES.register(FAMILY)
