"""GPT-2 family (GPT2Model, no LM head). Pools the last non-pad token: with causal attention it is the
only position that has seen the whole sequence."""

from __future__ import annotations

from types import SimpleNamespace
from typing import TYPE_CHECKING

from peftx.families.base import DeclaredShapes, Family, SpecialIds, last_token, linear, masked_mean, model_class, norm
from peftx.families.pooled_rows import attend, attention_takes_rows, heads, pick
from peftx.families.registry import FAMILIES

if TYPE_CHECKING:
    from transformers import GPT2Config

    from peftx.families.pooled_rows import RowsForward


def _encode(backbone, embeds, mask, pooling, specials):
    hidden = backbone(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
    return last_token(hidden, mask) if pooling == "last" else masked_mean(hidden, mask)


def _last_layer_rows(block) -> RowsForward | None:
    """GPT2Block's forward for one row per example."""
    attn = block.attn
    upcast = attn.reorder_and_upcast_attn and attn.config._attn_implementation == "eager"  # its own path
    return None if upcast or not attention_takes_rows(attn) else _rows_forward


def _rows_forward(block, hidden, rows, mask, kwargs):
    # Queries come out of the one fused product c_attn with the keys and values: every row's are made
    attn = block.attn
    query, key, value = attn.c_attn(block.ln_1(hidden)).split(attn.split_size, dim=2)
    qkv = tuple(heads(x, attn.head_dim) for x in (pick(query, rows), key, value))
    out = attend(attn, qkv, mask, attn.attn_dropout.p if attn.training else 0.0)
    out = attn.resid_dropout(attn.c_proj(out)) + pick(hidden, rows)
    return out + block.mlp(block.ln_2(out))


def _special_ids(config: GPT2Config, tokenizer) -> SpecialIds:
    # GPT-2 has no pad token; padded positions are masked out, so <|endoftext|> serves.
    eos = config.eos_token_id if config.eos_token_id is not None else config.vocab_size - 1
    return SpecialIds(pad=eos, bos=None, eos=None)


def _declare(fields: dict) -> DeclaredShapes:
    c = SimpleNamespace(**({"n_inner": None} | fields))
    e = c.n_embd
    inner = c.n_inner or 4 * e
    params = {"wte.weight": (c.vocab_size, e), "wpe.weight": (c.n_positions, e)}
    attention = {}
    for i in range(c.n_layer):
        at = f"h.{i}."
        params |= norm(f"{at}ln_1", e) | linear(f"{at}attn.c_attn", 3 * e, e) | linear(f"{at}attn.c_proj", e, e)
        params |= norm(f"{at}ln_2", e) | linear(f"{at}mlp.c_fc", inner, e) | linear(f"{at}mlp.c_proj", e, inner)
        attention[f"{at}attn"] = (c.n_head, e // c.n_head)
    return DeclaredShapes(c, params | norm("ln_f", e), attention)


_LAYER = r"h\.\d+\."

FAMILY = Family(
    name="gpt2",
    model_types=("gpt2",),
    build=lambda config: model_class("GPT2Model")(config),
    load=lambda path, config, **kw: model_class("GPT2Model").from_pretrained(path, config=config, **kw),
    roles={
        "token_embedding": r"wte\.weight",
        "position_embedding": r"wpe\.weight",
        "attention": _LAYER + r"attn\.(c_attn|c_proj)\.(weight|bias)",
        "feed_forward": _LAYER + r"mlp\.(c_fc|c_proj)\.(weight|bias)",
        "layer_norm": r"(" + _LAYER + r"ln_[12]|ln_f)\.(weight|bias)",
    },
    layer_pattern=r"h\.(\d+)\.",
    linear_modules={
        "attention": _LAYER + r"attn\.(c_attn|c_proj)",
        "feed_forward": _LAYER + r"mlp\.(c_fc|c_proj)",
        "key_value": _LAYER + r"attn\.c_attn",  # fused: queries, keys and values
        "feed_forward_out": _LAYER + r"mlp\.c_proj",
    },
    poolings=("last", "mean"),
    encode=_encode,
    last_layer_rows=_last_layer_rows,
    special_ids=_special_ids,
    max_positions=lambda c: c.n_positions,
    hidden_size=lambda c: c.n_embd,
    num_layers=lambda c: {"decoder": c.n_layer},
    attention_modules={"decoder_self": _LAYER + r"attn"},
    attention_shape=lambda m: (m.num_heads, m.head_dim),
    space_prefix=True,
    declare=_declare,
)

FAMILIES.register(FAMILY)
