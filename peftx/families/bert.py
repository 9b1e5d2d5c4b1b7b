"""BERT family (BertModel without its pooler). Pools the [CLS] position by default, or the mean."""

from __future__ import annotations

from transformers import BertConfig, BertModel

from peftx.families.base import Family, SpecialIds, masked_mean
from peftx.families.registry import FAMILIES


def _encode(backbone, embeds, mask, pooling, specials):
    hidden = backbone(inputs_embeds=embeds, attention_mask=mask).last_hidden_state  # (batch, seq, hidden)
    return hidden[:, 0] if pooling == "cls" else masked_mean(hidden, mask)


def _special_ids(config: BertConfig, tokenizer) -> SpecialIds:
    if tokenizer is not None:
        return SpecialIds(pad=tokenizer.pad_token_id, bos=tokenizer.cls_token_id, eos=tokenizer.sep_token_id)
    # The standard uncased vocabulary puts [CLS]/[SEP] at 101/102; tiny test vocabularies use 1/2.
    if config.vocab_size > 102:
        return SpecialIds(pad=config.pad_token_id or 0, bos=101, eos=102)
    return SpecialIds(pad=config.pad_token_id or 0, bos=1, eos=2)


_LAYER = r"encoder\.layer\.\d+\."

FAMILY = Family(
    name="bert",
    model_types=("bert",),
    build=lambda config: BertModel(config, add_pooling_layer=False),
    load=lambda path, config, **kw: BertModel.from_pretrained(path, config=config, add_pooling_layer=False, **kw),
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
    special_ids=_special_ids,
    max_positions=lambda c: c.max_position_embeddings,
    hidden_size=lambda c: c.hidden_size,
    num_layers=lambda c: {"encoder": c.num_hidden_layers},
    attention_modules={"encoder_self": _LAYER + r"attention\.self"},
    attention_shape=lambda m: (m.num_attention_heads, m.attention_head_size),
)

FAMILIES.register(FAMILY)
