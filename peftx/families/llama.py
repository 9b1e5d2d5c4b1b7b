"""LLaMA-shaped decoders (LlamaModel, Qwen2Model, MistralModel: no LM head). One module layout: RMSNorm
before attention and before the gated feed-forward layer, rotary positions, grouped-query attention.

Rotary positions have no parameters, so the `position_embedding` role matches nothing here. Llama and
Mistral have no biases (`bitfit` then trains the RMSNorm scales, as on T5); Qwen2 has biases on its
query, key and value projections. Pools the last non-pad token by default: with causal attention it is
the only position that has seen the whole sequence.
"""

from __future__ import annotations

from transformers import AutoModel, PretrainedConfig

from peftx.families.base import Family, SpecialIds, last_token, masked_mean
from peftx.families.registry import FAMILIES


def _encode(backbone, embeds, mask, pooling, specials):
    hidden = backbone(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
    return last_token(hidden, mask) if pooling == "last" else masked_mean(hidden, mask)


def _special_ids(config: PretrainedConfig, tokenizer) -> SpecialIds:
    """BOS first (these models were trained with it, and attend to it heavily); nothing appended.

    LLaMA-shaped configs often name no pad token; padded positions are masked out, so EOS serves.
    """
    bos = config.bos_token_id
    if tokenizer is not None and getattr(tokenizer, "bos_token_id", None) is not None:
        bos = tokenizer.bos_token_id
    eos = config.eos_token_id[0] if isinstance(config.eos_token_id, list) else config.eos_token_id
    pad = config.pad_token_id if config.pad_token_id is not None else eos
    if bos is not None and bos >= config.vocab_size:
        bos = None  # a config shrunk below its own special ids (tiny test twins)
    if pad is None or pad >= config.vocab_size:
        pad = 0
    return SpecialIds(pad=pad, bos=bos, eos=None)


_LAYER = r"layers\.\d+\."

FAMILY = Family(
    name="llama",
    model_types=("llama", "qwen2", "mistral"),
    build=lambda config: AutoModel.from_config(config),
    load=lambda path, config, **kw: AutoModel.from_pretrained(path, config=config, **kw),
    roles={
        "token_embedding": r"embed_tokens\.weight",
        "position_embedding": r"(?!)",  # rotary: no parameters
        "attention": _LAYER + r"self_attn\.[qkvo]_proj\.(weight|bias)",
        "feed_forward": _LAYER + r"mlp\.(gate|up|down)_proj\.weight",
        "layer_norm": r"(" + _LAYER + r"(input|post_attention)_layernorm|norm)\.weight",
    },
    layer_pattern=r"layers\.(\d+)\.",
    linear_modules={
        "attention": _LAYER + r"self_attn\.[qkvo]_proj",
        "feed_forward": _LAYER + r"mlp\.(gate|up|down)_proj",
        "key_value": _LAYER + r"self_attn\.[kv]_proj",
        "feed_forward_out": _LAYER + r"mlp\.down_proj",
    },
    poolings=("last", "mean"),
    encode=_encode,
    special_ids=_special_ids,
    max_positions=lambda c: c.max_position_embeddings,
    hidden_size=lambda c: c.hidden_size,
    num_layers=lambda c: {"decoder": c.num_hidden_layers},
    attention_modules={"decoder_self": _LAYER + r"self_attn"},
    # Keys and values reach the attention function with the key-value heads (grouped-query attention
    # repeats them for the query heads there), so a prefix has that many heads.
    attention_shape=lambda m: (m.config.num_key_value_heads, m.head_dim),
    space_prefix=True,
)

FAMILIES.register(FAMILY)
