"""Every family declares roles that cover its parameters, and takes inputs_embeds."""

from __future__ import annotations

import pytest
import torch

from peftx.families import CORE_ROLES, FAMILIES, SpecialIds
from peftx.model.loading import load_backbone, load_config
from tests.support.tiny import LLAMA_SHAPED, TINY

# Every family's tiny model, and the llama family's other architectures (Qwen2, Mistral).
MODELS = {**TINY, **LLAMA_SHAPED}
FAMILY_OF = {**{name: name for name in TINY}, **dict.fromkeys(LLAMA_SHAPED, "llama")}
NO_POSITION_PARAMETERS = {"llama"}  # rotary positions: nothing to train
NO_BIASES = {"t5", "llama", "mistral"}  # Qwen2 has biases on its query, key and value projections


def tiny_backbone(name):
    entry = MODELS[name]
    return load_backbone(entry["source"], pretrained=False, family=FAMILY_OF[name], overrides=entry["config_overrides"])


@pytest.mark.parametrize("name", MODELS)
def test_every_core_role_matches_parameters(name):
    bb = tiny_backbone(name)
    roles = {bb.family.classify(n).role for n, _ in bb.model.named_parameters()}
    expected = set(CORE_ROLES) - ({"position_embedding"} if FAMILY_OF[name] in NO_POSITION_PARAMETERS else set())
    assert expected <= roles


@pytest.mark.parametrize("name", MODELS)
def test_every_parameter_has_a_role_and_layers_are_indexed(name):
    bb = tiny_backbone(name)
    infos = {n: bb.family.classify(n) for n, _ in bb.model.named_parameters()}  # raises on an unmatched name
    layers = bb.family.num_layers(bb.model.config)
    for stack, count in layers.items():
        found = {i.layer for i in infos.values() if i.layer is not None and (i.stack or stack) == stack}
        assert found == set(range(count)), (stack, found)
    # attention and feed-forward weights always sit inside a layer
    assert all(i.layer is not None for i in infos.values() if i.role in ("attention", "feed_forward"))


@pytest.mark.parametrize("name", MODELS)
def test_linear_modules_of_each_role_exist(name):
    bb = tiny_backbone(name)
    assert {"attention", "feed_forward", "key_value", "feed_forward_out"} <= set(bb.family.linear_modules)
    for role in bb.family.linear_modules:
        mods = bb.family.modules_of(bb.model, [role])
        assert mods and all(hasattr(dict(bb.model.named_modules())[m], "weight") for m in mods)


@pytest.mark.parametrize("name", MODELS)
def test_attention_modules_of_each_kind_exist_with_their_shapes(name):
    bb = tiny_backbone(name)
    kinds = {"bert": ["encoder_self"], "gpt2": ["decoder_self"], "llama": ["decoder_self"]}.get(
        FAMILY_OF[name], ["encoder_self", "decoder_self", "cross"]
    )
    # keys and values: the llama family's tiny configs have 4 query heads sharing 2 key-value heads
    kv_heads = 2 if FAMILY_OF[name] == "llama" else 4
    assert list(bb.family.attention_modules) == kinds
    mods = dict(bb.model.named_modules())
    for kind in kinds:
        sites = bb.family.attention_sites(bb.model, [kind])
        assert len(sites) == 2  # one per layer of the tiny stacks
        for site in sites:
            heads, head_dim = bb.family.attention_shape(mods[site])
            assert head_dim == 8 and heads == kv_heads


def test_encoder_mean_runs_the_encoder_stack_only():
    bb = tiny_backbone("t5")
    assert bb.family.stacks(bb.model.config, "encoder_mean") == {"encoder": 2}
    assert bb.family.stacks(bb.model.config, "decoder_start") == {"encoder": 2, "decoder": 2}
    assert bb.family.attention_kinds(bb.model.config, "encoder_mean") == ["encoder_self"]


def test_biases_exist_except_in_t5_llama_and_mistral():
    for name in MODELS:
        bb = tiny_backbone(name)
        has_bias = any(bb.family.classify(n).is_bias for n, _ in bb.model.named_parameters())
        assert has_bias == (name not in NO_BIASES)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("pooling_index", [0, 1])
def test_encode_pools_to_one_vector_and_ignores_padding(name, pooling_index):
    bb = tiny_backbone(name)
    fam = bb.family
    pooling = fam.poolings[pooling_index]
    specials = fam.special_ids(bb.model.config, None)
    bb.model.eval()
    hidden = fam.hidden_size(bb.model.config)
    embeds = torch.randn(2, 7, hidden)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    pooled = fam.encode(bb.model, embeds, mask, pooling, specials)
    assert pooled.shape == (2, hidden)
    # the padded row gives the same vector when its padding is cut away
    alone = fam.encode(bb.model, embeds[1:, :5], mask[1:, :5], pooling, specials)
    torch.testing.assert_close(pooled[1:], alone, atol=1e-5, rtol=1e-4)


def test_registry_rejects_duplicates_and_lists_names():
    from peftx.errors import PeftxError

    with pytest.raises(ValueError, match="already registered"):
        FAMILIES.register(FAMILIES.get("bert"))
    with pytest.raises(PeftxError, match="valid: bart, bert, gpt2, llama, t5"):
        FAMILIES.get("falcon")


@pytest.mark.parametrize("name", ["qwen2", "mistral"])
def test_qwen2_and_mistral_are_llama_family_models(name):
    bb = tiny_backbone(name)
    assert bb.family.name == "llama" and bb.model.config.model_type == name
    assert type(bb.model).__name__ == {"qwen2": "Qwen2Model", "mistral": "MistralModel"}[name]


def test_llama_pads_with_eos_and_prepends_bos_within_the_vocabulary():
    bb = tiny_backbone("qwen2")
    assert bb.family.special_ids(bb.model.config, None) == SpecialIds(pad=127, bos=127, eos=None)
    config = load_config("llama-3.2-1b")  # bos 128000, eos 128001, no pad token
    assert FAMILIES.get("llama").special_ids(config, None) == SpecialIds(pad=128001, bos=128000, eos=None)
