"""BERT family (BertModel without its pooler). Pools the [CLS] position by default, or the mean."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

from peftx.families.base import DeclaredShapes, Family, SpecialIds, linear, masked_mean, model_class, norm
from peftx.families.pooled_rows import attend, attention_takes_rows, heads, pick
from peftx.families.registry import FAMILIES

if TYPE_CHECKING:
    from transformers import BertConfig

    from peftx.families.pooled_rows import RowsForward


def _encode(backbone, embeds, mask, pooling, specials):
    hidden = backbone(inputs_embeds=embeds, attention_mask=mask).last_hidden_state  # (batch, seq, hidden)
    return hidden[:, 0] if pooling == "cls" else masked_mean(hidden, mask)


def _last_layer_rows(layer) -> RowsForward | None:
    """BertLayer's forward for one row per example (an encoder layer: no cross-attention)."""
    return None if layer.is_decoder or not attention_takes_rows(layer.attention.self) else _rows_forward


def _rows_forward(layer, hidden, rows, mask, kwargs):
    attn = layer.attention.self
    query = pick(hidden, rows)  # (batch, 1, hidden)
    qkv = (heads(attn.query(query), attn.attention_head_size),)
    qkv += tuple(heads(proj(hidden), attn.attention_head_size) for proj in (attn.key, attn.value))
    out = attend(attn, qkv, mask, attn.dropout.p if attn.training else 0.0)
    out = layer.attention.output(out, query)
    return layer.output(layer.intermediate(out), out)


def _special_ids(config: BertConfig, tokenizer) -> SpecialIds:
    if tokenizer is not None:
        return SpecialIds(pad=tokenizer.pad_token_id, bos=tokenizer.cls_token_id, eos=tokenizer.sep_token_id)
    # The standard uncased vocabulary puts [CLS]/[SEP] at 101/102; tiny test vocabularies use 1/2.
    if config.vocab_size > 102:
        return SpecialIds(pad=config.pad_token_id or 0, bos=101, eos=102)
    return SpecialIds(pad=config.pad_token_id or 0, bos=1, eos=2)


def _declare(fields: dict) -> DeclaredShapes:
    c = SimpleNamespace(**({"type_vocab_size": 2} | fields))
    h, inner = c.hidden_size, c.intermediate_size
    params = {
        "embeddings.word_embeddings.weight": (c.vocab_size, h),
        "embeddings.position_embeddings.weight": (c.max_position_embeddings, h),
        "embeddings.token_type_embeddings.weight": (c.type_vocab_size, h),
    } | norm("embeddings.LayerNorm", h)
    attention = {}
    for i in range(c.num_hidden_layers):
        at = f"encoder.layer.{i}."
        for proj in ("query", "key", "value"):
            params |= linear(f"{at}attention.self.{proj}", h, h)
        params |= linear(f"{at}attention.output.dense", h, h) | norm(f"{at}attention.output.LayerNorm", h)
        params |= linear(f"{at}intermediate.dense", inner, h) | linear(f"{at}output.dense", h, inner)
        params |= norm(f"{at}output.LayerNorm", h)
        attention[f"{at}attention.self"] = (c.num_attention_heads, h // c.num_attention_heads)
    return DeclaredShapes(c, params, attention)


_LAYER = r"encoder\.layer\.\d+\."

FAMILY = Family(
    name="bert",
    model_types=("bert",),
    build=lambda config: model_class("BertModel")(config, add_pooling_layer=False),
    load=lambda path, config, **kw: model_class("BertModel").from_pretrained(
        path, config=config, add_pooling_layer=False, **kw
    ),
    roles={
        "token_embedding": r"embeddings\.word_embeddings\.weight",
        # The segment (token type) embedding is a constant added to every position; it sits with the
        # position embedding as the other additive input term.
        "position_embedding": r"embeddings\.(position|token_type)_embeddings\.weight",
        "attention": _LAYER + r"attention\.(self\.(query|key|value)|output\.dense)\.(weight|bias)",
        "feed_forward": _LAYER + r"(intermediate|output)\.dense\.(weight|bias)",
        "layer_norm": r"(embeddings|" + _LAYER + r"(attention\.)?output)\.LayerNorm\.(weight|bias)",
    },
    layer_pattern=r"encoder\.layer\.(\d+)\.",
    linear_modules={
        "attention": _LAYER + r"attention\.(self\.(query|key|value)|output\.dense)",
        "feed_forward": _LAYER + r"(intermediate|output)\.dense",
        "key_value": _LAYER + r"attention\.self\.(key|value)",
        "feed_forward_out": _LAYER + r"output\.dense",
    },
    poolings=("cls", "mean"),
    encode=_encode,
    last_layer_rows=_last_layer_rows,
    special_ids=_special_ids,
    max_positions=lambda c: c.max_position_embeddings,
    hidden_size=lambda c: c.hidden_size,
    num_layers=lambda c: {"encoder": c.num_hidden_layers},
    attention_modules={"encoder_self": _LAYER + r"attention\.self"},
    attention_shape=lambda m: (m.num_attention_heads, m.attention_head_size),
    declare=_declare,
)

FAMILIES.register(FAMILY)
