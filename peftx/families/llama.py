"""LLaMA-shaped decoders (LlamaModel, Qwen2Model, MistralModel: no LM head). One module layout: RMSNorm
before attention and before the gated feed-forward layer, rotary positions, grouped-query attention.

Rotary positions have no parameters, so the `position_embedding` role matches nothing here. Llama and
Mistral have no biases (`bitfit` then trains the RMSNorm scales, as on T5); Qwen2 has biases on its
query, key and value projections. Pools the last non-pad token by default: with causal attention it is
the only position that has seen the whole sequence.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import TYPE_CHECKING

from peftx.families.base import DeclaredShapes, Family, SpecialIds, last_token, linear, masked_mean, model_class, norm
from peftx.families.pooled_rows import attend, attention_takes_rows, heads, pick
from peftx.families.registry import FAMILIES

if TYPE_CHECKING:
    from transformers import PretrainedConfig

    from peftx.families.pooled_rows import RowsForward


def _encode(backbone, embeds, mask, pooling, specials):
    hidden = backbone(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
    return last_token(hidden, mask) if pooling == "last" else masked_mean(hidden, mask)


def _last_layer_rows(layer) -> RowsForward | None:
    """The decoder layer's forward for one row per example; declined under a sliding window (the row
    would see more than the window)."""
    attn = layer.self_attn
    config = attn.config
    window = getattr(attn, "sliding_window", None) or (config.model_type == "mistral" and config.sliding_window)
    return None if window or not attention_takes_rows(attn) else _rows_forward


def _rows_forward(layer, hidden, rows, mask, kwargs):
    attn = layer.self_attn
    rotate_half = sys.modules[type(attn).__module__].rotate_half  # each architecture's own

    def rotary(x, cos, sin):  # apply_rotary_pos_emb for one tensor
        return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1)

    cos, sin = kwargs["position_embeddings"]  # (batch or 1, seq, head_dim) each
    normed = layer.input_layernorm(hidden)
    query = rotary(heads(attn.q_proj(pick(normed, rows)), attn.head_dim), pick(cos, rows), pick(sin, rows))
    key = rotary(heads(attn.k_proj(normed), attn.head_dim), cos, sin)
    qkv = (query, key, heads(attn.v_proj(normed), attn.head_dim))
    out = attend(attn, qkv, mask, attn.attention_dropout if attn.training else 0.0)
    out = attn.o_proj(out) + pick(hidden, rows)
    return out + layer.mlp(layer.post_attention_layernorm(out))


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


def _declare(fields: dict) -> DeclaredShapes:
    defaults = {"attention_bias": False, "mlp_bias": False, "head_dim": None}
    c = SimpleNamespace(**(defaults | fields))
    if c.num_key_value_heads is None:
        c.num_key_value_heads = c.num_attention_heads
    h, heads, kv = c.hidden_size, c.num_attention_heads, c.num_key_value_heads
    hd = c.head_dim or h // heads
    qkv_bias = c.attention_bias or c.model_type == "qwen2"  # Qwen2 always biases q, k and v
    params = {"embed_tokens.weight": (c.vocab_size, h)}
    attention = {}
    for i in range(c.num_hidden_layers):
        at = f"layers.{i}."
        params |= linear(f"{at}self_attn.q_proj", heads * hd, h, qkv_bias)
        params |= linear(f"{at}self_attn.k_proj", kv * hd, h, qkv_bias) | linear(
            f"{at}self_attn.v_proj", kv * hd, h, qkv_bias
        )
        params |= linear(f"{at}self_attn.o_proj", h, heads * hd, c.attention_bias and c.model_type != "qwen2")
        for proj in ("gate_proj", "up_proj"):
            params |= linear(f"{at}mlp.{proj}", c.intermediate_size, h, c.mlp_bias)
        params |= linear(f"{at}mlp.down_proj", h, c.intermediate_size, c.mlp_bias)
        params |= norm(f"{at}input_layernorm", h, bias=False) | norm(f"{at}post_attention_layernorm", h, bias=False)
        attention[f"{at}self_attn"] = (kv, hd)
    return DeclaredShapes(c, params | norm("norm", h, bias=False), attention)


_LAYER = r"layers\.\d+\."

FAMILY = Family(
    name="llama",
    model_types=("llama", "qwen2", "mistral"),
    build=lambda config: model_class("AutoModel").from_config(config),
    load=lambda path, config, **kw: model_class("AutoModel").from_pretrained(path, config=config, **kw),
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
    last_layer_rows=_last_layer_rows,
    special_ids=_special_ids,
    max_positions=lambda c: c.max_position_embeddings,
    hidden_size=lambda c: c.hidden_size,
    num_layers=lambda c: {"decoder": c.num_hidden_layers},
    attention_modules={"decoder_self": _LAYER + r"self_attn"},
    # Keys and values reach the attention function with the key-value heads (grouped-query attention
    # repeats them for the query heads there), so a prefix has that many heads.
    attention_shape=lambda m: (m.config.num_key_value_heads, m.head_dim),
    space_prefix=True,
    declare=_declare,
)

FAMILIES.register(FAMILY)
