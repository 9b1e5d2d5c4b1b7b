"""T5 family (T5Model: encoder and decoder, no LM head).

T5 has no absolute positions: its position information is the relative-attention bias table of the
first block of each stack, which is the `position_embedding` role here. T5 has no biases anywhere.
"""

from __future__ import annotations

from transformers import T5Config, T5Model

from peftx.families.base import Family, SpecialIds, encoder_decoder_encode
from peftx.families.registry import FAMILIES


def _special_ids(config: T5Config, tokenizer) -> SpecialIds:
    # T5 appends </s> and starts the decoder from the pad token.
    return SpecialIds(pad=config.pad_token_id, bos=None, eos=config.eos_token_id, decoder_start=config.pad_token_id)


_LAYER = r"(encoder|decoder)\.block\.\d+\.layer\.\d\."

FAMILY = Family(
    name="t5",
    model_types=("t5",),
    build=lambda config: T5Model(config),
    load=lambda path, config, **kw: T5Model.from_pretrained(path, config=config, **kw),
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
)

FAMILIES.register(FAMILY)
