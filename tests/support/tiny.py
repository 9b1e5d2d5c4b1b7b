"""Tiny random-weight models of every family (built from configs, no downloads), and tiny recipes
around them: the fixtures every test builds on."""

from __future__ import annotations

import copy

# Config overrides that shrink each family's standard architecture to a few thousand parameters per
# layer. Special-token ids are moved inside the small vocabulary.
TINY = {
    "bert": {
        "source": "bert-base-uncased",
        "config_overrides": {
            "vocab_size": 128,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 64,
            "max_position_embeddings": 128,
        },
    },
    "gpt2": {
        "source": "gpt2",
        "config_overrides": {
            "vocab_size": 128,
            "n_embd": 32,
            "n_layer": 2,
            "n_head": 4,
            "n_positions": 128,
            "bos_token_id": 127,
            "eos_token_id": 127,
        },
    },
    "t5": {
        "source": "t5-small",
        "config_overrides": {
            "vocab_size": 128,
            "d_model": 32,
            "d_kv": 8,
            "d_ff": 64,
            "num_layers": 2,
            "num_decoder_layers": 2,
            "num_heads": 4,
        },
    },
    "bart": {
        "source": "facebook/bart-base",
        "config_overrides": {
            "vocab_size": 128,
            "d_model": 32,
            "encoder_layers": 2,
            "decoder_layers": 2,
            "encoder_attention_heads": 4,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 64,
            "decoder_ffn_dim": 64,
            "max_position_embeddings": 128,
        },
    },
}
# The llama family's architectures (Llama, Qwen2 with q/k/v biases, Mistral with a sliding window),
# shrunk the same way. The family x method x precision tables over FAMILY_NAMES run the Llama one;
# tests/families/test_llama.py runs every method on all three.
_LLAMA_TINY = {
    "vocab_size": 128,
    "hidden_size": 32,
    "head_dim": 8,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,  # grouped-query attention, as in the real models
    "max_position_embeddings": 128,
}
LLAMA_SHAPED = {
    "llama": {"source": "smollm2-135m", "config_overrides": dict(_LLAMA_TINY)},
    "qwen2": {
        "source": "qwen2.5-0.5b",
        "config_overrides": {  # Qwen2Config derives its head width from the hidden size
            **{k: v for k, v in _LLAMA_TINY.items() if k != "head_dim"},
            "bos_token_id": 127,
            "eos_token_id": 127,
        },
    },
    "mistral": {"source": "mistral-7b-v0.1", "config_overrides": dict(_LLAMA_TINY)},
}
TINY["llama"] = LLAMA_SHAPED["llama"]
FAMILY_NAMES = tuple(TINY)


def tiny_model(family: str, **extra) -> dict:
    """The `model` section of a recipe for a tiny from-scratch model of `family`."""
    return {"family": family, "pretrained": False, **copy.deepcopy(TINY[family]), **extra}


def tiny_recipe(family: str = "bert", tmp_path=None, **sections) -> dict:
    """A raw recipe dict: tiny model, tiny ListOps, LoRA, a few steps; sections override wholesale."""
    raw = {
        "name": f"tiny_{family}",
        "seed": 0,
        "model": tiny_model(family),
        "task": {"name": "listops", "preset": "tiny"},
        "method": {"name": "lora", "r": 4},
        "train": {
            "lr": 3e-3,
            "batch_size": 16,
            "steps": 4,
            "eval_every": 2,
            "warmup": 0,
            "precision": "fp32",
            "eval_batch_size": 32,
        },
        "output": {"dir": str(tmp_path / "runs") if tmp_path is not None else "runs"},
    }
    raw.update(sections)
    return raw
