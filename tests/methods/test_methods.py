"""Every method on every family (tiny from-scratch models): exactly the intended parameters train and
move, trainable counts match the analytic ones by role, and a saved run reloads to identical logits."""

from __future__ import annotations

import copy
import functools
import re

import pytest
import torch

from peftx.errors import PeftxError
from peftx.methods import METHODS
from peftx.runs.weights import load_weights, save_weights
from peftx.studies.budget import model_budget
from tests.model.test_loading import HAS_OFFLINE
from tests.support.helpers import build, changed, fixed_logits, snapshot, train_steps
from tests.support.tiny import tiny_recipe

CASES = {
    "full": {"name": "full"},
    "lora": {"name": "lora", "r": 2},
    "frozen": {"name": "frozen"},  # preset fpt
    "bitfit": {"name": "bitfit"},
    "ia3": {"name": "ia3"},
    "prefix": {"name": "prefix", "length": 2},
    "prefix_mlp": {"name": "prefix", "length": 2, "reparam_hidden": 8},
    "prompt": {"name": "prompt", "length": 2},
    "layers": {"name": "layers", "top": 1},
    "composed": {"name": "frozen", "preset": "head_only", "train_roles": ["bias", "layer_norm"]},
}
TOP_LAYER = {"bert": (None, 1), "gpt2": (None, 1), "t5": ("decoder", 1), "bart": ("decoder", 1), "llama": (None, 1)}


def intended(case: str, family: str, infos: dict) -> set[str]:
    """The parameters each case must train, written out from the method's definition."""
    has_bias = family not in ("t5", "llama")  # no biases: bitfit trains the (RMS) norm scales instead

    def pick(i) -> bool:
        match case:
            case "full":
                return True
            case "lora" | "ia3":
                return i.role == "adapter"
            case "frozen":
                return i.role in ("layer_norm", "position_embedding", "input")
            case "bitfit":
                return i.group == "body" and (i.is_bias if has_bias else i.role == "layer_norm")
            case "prefix" | "prefix_mlp":
                return i.role == "prefix"
            case "prompt":
                return i.role == "prompt"
            case "layers":
                return i.group == "body" and (i.stack, i.layer) == TOP_LAYER[family]
            case "composed":
                return i.is_bias or i.role == "layer_norm"

    return {n for n, i in infos.items() if i.role == "head" or pick(i)}


# Parameters that get no gradient by construction, so they may stay put although they train: key
# biases (softmax ignores a score shift shared by all keys) and, with the decoder run on its start
# token alone, the decoder self-attention's queries, keys and T5's decoder position bias (softmax
# over one key) -- unless a prefix gives that attention more keys.
INERT = {
    "bert": r".*\.key\.bias",
    "gpt2": r"$^",  # nothing: its key bias is fused with the query and value biases
    "t5": r".*decoder\.block\.\d+\.layer\.0\.SelfAttention\.(q|k|relative_attention_bias)\..*",
    "bart": r".*(k_proj\.bias|decoder\.layers\.\d+\.self_attn\.(q|k)_proj\..*)",
    "llama": r"$^",  # nothing: no key bias, and every position attends causally over several keys
}


@functools.cache
def trained(case: str, family: str):
    """(model, parameters before training, train split, logits of a fixed batch after 3 steps)."""
    _, _, model, split = build(tiny_recipe(family, method=CASES[case]))
    before = snapshot(model)
    train_steps(model, split, 3, weight_decay=0.0)
    return model, before, split


@pytest.mark.parametrize("case", CASES)
def test_exactly_the_intended_parameters_train_and_move(case, family):
    model, before, _ = trained(case, family)
    infos = model.param_infos()
    want = intended(case, family, infos)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == want
    moved = changed(before, model)
    assert moved <= want  # nothing frozen moved
    still = want - moved
    assert all(re.fullmatch(INERT[family], n) for n in still), sorted(still)
    assert any(infos[n].role != "head" for n in moved)  # the method's own parameters moved


@pytest.mark.parametrize("case", CASES)
def test_save_reload_gives_identical_logits(case, family, tmp_path):
    model, _, split = trained(case, family)
    expected = fixed_logits(model, split)
    # what a pretrained run saves (not the backbone: it comes back from its source, here the seed)
    save_weights(model, tmp_path, whole_backbone=False)
    _, _, fresh, _ = build(tiny_recipe(family, method=CASES[case]))
    assert not torch.equal(fixed_logits(fresh, split), expected)
    load_weights(fresh, tmp_path)
    assert torch.equal(fixed_logits(fresh, split), expected)


# end to end (run -> run directory -> Predictor), one family per method, all families covered
END_TO_END = {
    "full": "bert",
    "frozen": "gpt2",
    "bitfit": "t5",
    "ia3": "bart",
    "prefix_mlp": "t5",
    "prompt": "gpt2",
    "layers": "bart",
    "composed": "bert",
    "prefix": "llama",
}


@pytest.mark.parametrize("case", END_TO_END)
def test_run_then_predict_reproduces_the_test_accuracy(case, tmp_path):
    from peftx.recipe import validate_recipe
    from peftx.runs.predict import Predictor
    from peftx.runs.run import run
    from peftx.tasks.listops.task import VOCAB

    family = END_TO_END[case]
    recipe = validate_recipe(tiny_recipe(family, tmp_path, method=CASES[case]))
    out = run(recipe)
    test = recipe.task.load().splits["test"]
    texts = [" ".join(VOCAB.symbols[i] for i in t) for t in test["tokens"]]
    predicted = Predictor(out.run_dir).predict(texts)
    acc = sum(int(p) == y for p, y in zip(predicted, test["label"])) / len(texts)
    assert acc == pytest.approx(out.result["metrics"]["test_accuracy"], abs=1e-9)


# ---- analytic trainable counts, by role, from the tiny configs in tests/conftest.py -------------

H, L, FF, VOCAB, CLASSES = 32, 2, 64, 128, 10
HEAD = H * CLASSES + CLASSES
# attention modules (T5/BART: encoder, decoder, cross)
SITES = {"bert": L, "gpt2": L, "t5": 3 * L, "bart": 3 * L, "llama": L}
FF_OF = {"bert": FF, "gpt2": 4 * H, "t5": FF, "bart": FF, "llama": FF}  # GPT-2's inner width is 4 x hidden
# keys and values: as wide as the hidden state, but for llama's 2 key-value heads of 8 (grouped-query)
KV = {"bert": H, "gpt2": H, "t5": H, "bart": H, "llama": 2 * 8}


def layer_norms(family: str) -> tuple[int, int]:
    """(number of layer norms, parameters each)."""
    count = 2 * L + 1 + (3 * L + 1 if family in ("t5", "bart") else 0)  # encoder-decoders: both stacks
    return count, H if family in ("t5", "llama") else 2 * H  # RMS norms: a scale, no bias


def expected_roles(case: str, family: str) -> dict[str, int]:
    ff = FF_OF[family]
    n_ln, per_ln = layer_norms(family)
    ln_bias = n_ln * H
    pos = {"bert": (128 + 2) * H, "gpt2": 128 * H, "t5": 2 * 32 * 4, "bart": 2 * (128 + 2) * H, "llama": 0}[family]
    if case == "frozen":  # llama: rotary positions, no position parameters to train
        roles = {"layer_norm": n_ln * per_ln, "position_embedding": pos, "head": HEAD}
        return {role: count for role, count in roles.items() if count}
    if case == "bitfit":
        if family in ("t5", "llama"):  # no biases: the layer-norm scales
            return {"layer_norm": n_ln * H, "head": HEAD}
        attn = {"bert": 4 * H * L, "gpt2": 4 * H * L, "bart": 12 * H * L}[family]  # q k v o (gpt2: c_attn 3h + h)
        mlp = (ff + H) * L * (2 if family == "bart" else 1)
        return {"attention": attn, "feed_forward": mlp, "layer_norm": ln_bias, "head": HEAD}
    if case == "ia3":  # keys + values scaled at the output, the feed-forward output projection at its input
        kv = {
            "bert": 2 * H * L,
            "gpt2": 3 * H * L,
            "t5": 2 * H * SITES["t5"],
            "bart": 2 * H * SITES["bart"],
            "llama": 2 * KV["llama"] * L,
        }[family]
        stacks = 2 if family in ("t5", "bart") else 1
        return {"adapter": kv + ff * L * stacks, "head": HEAD}
    if case == "prefix":
        return {"prefix": SITES[family] * 2 * 2 * KV[family], "head": HEAD}  # sites x (k, v) x length x heads*hd
    if case == "prefix_mlp":  # embedding (2, H) -> Linear(H, 8) -> tanh -> Linear(8, sites x 2 x KV)
        out = SITES[family] * 2 * KV[family]
        return {"prefix": 2 * H + (H * 8 + 8) + (8 * out + out), "head": HEAD}
    if case == "prompt":
        return {"prompt": 2 * H, "head": HEAD}
    if case == "layers":  # the top layer: the last decoder layer for T5/BART
        attn = {
            "bert": 4 * (H * H + H),
            "gpt2": 4 * (H * H + H),
            "t5": 8 * H * H,
            "bart": 8 * (H * H + H),
            "llama": 2 * H * H + 2 * H * KV["llama"],  # q, o (H x H), k, v (H x KV), no biases
        }[family]
        mlp = 3 * H * ff if family == "llama" else 2 * H * ff + (0 if family == "t5" else ff + H)  # gated
        norms = {"bert": 2, "gpt2": 2, "t5": 3, "bart": 3, "llama": 2}[family]
        return {"attention": attn, "feed_forward": mlp, "layer_norm": norms * per_ln, "head": HEAD}
    raise KeyError(case)


@pytest.mark.parametrize("case", ["frozen", "bitfit", "ia3", "prefix", "prefix_mlp", "prompt", "layers"])
def test_trainable_counts_are_analytic_by_role(case, family):
    model, _, _ = trained(case, family)
    budget = model_budget(model)
    got = {role: c["trainable"] for role, c in budget.by_role.items() if c["trainable"]}
    assert got == expected_roles(case, family)


def test_full_trains_everything(family):
    model, _, _ = trained("full", family)
    budget = model_budget(model)
    assert budget.trainable == budget.total == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "preset, roles", [("fpt", {"layer_norm", "position_embedding"}), ("head_only", set()), ("ln_only", {"layer_norm"})]
)
def test_frozen_presets(preset, roles):
    _, _, model, _ = build(tiny_recipe("bart", method={"name": "frozen", "preset": preset}))
    got = {r for r, c in model_budget(model).by_role.items() if c["trainable"]}
    assert got == roles | {"head"}


def test_fpt_trains_a_trainable_input_layer_and_the_token_table_only_when_asked():
    raw = tiny_recipe("bert", method={"name": "frozen"}, input={"name": "pretrained_vocab", "trainable": True})
    _, _, model, _ = build(raw)
    assert model_budget(model).by_role["token_embedding"]["trainable"] == VOCAB * H


# ---- layer indices ------------------------------------------------------------------------------


def layers_trained(family: str, method: dict, **model_extra) -> set[tuple[str | None, int]]:
    raw = tiny_recipe(family, method=method)
    raw["model"].update(model_extra)
    _, _, model, _ = build(raw)
    infos = model.param_infos()
    return {(infos[n].stack, infos[n].layer) for n, p in model.named_parameters() if p.requires_grad} - {(None, None)}


def test_layer_indices_count_encoder_then_decoder():
    assert layers_trained("t5", {"name": "layers", "layers": [0, 2]}) == {("encoder", 0), ("decoder", 0)}
    assert layers_trained("bart", {"name": "layers", "layers": [-1]}) == {("decoder", 1)}
    assert layers_trained("bert", {"name": "layers", "layers": [0]}) == {(None, 0)}
    # encoder_mean pooling never runs the decoder: only the encoder's layers count
    assert layers_trained("t5", {"name": "layers", "top": 1}, pooling="encoder_mean") == {("encoder", 1)}
    with pytest.raises(PeftxError, match=r"method.layers: \[2\] outside the model's 2 layers"):
        layers_trained("t5", {"name": "layers", "layers": [2]}, pooling="encoder_mean")


def test_layers_needs_one_choice():
    from peftx.recipe import validate_recipe

    with pytest.raises(PeftxError, match="method: give exactly one of layers or top"):
        validate_recipe(tiny_recipe("bert", method={"name": "layers", "top": 1, "layers": [0]}))
    with pytest.raises(PeftxError, match="method.top: 5 but the model runs 2 layers"):
        build(tiny_recipe("bert", method={"name": "layers", "top": 5}))


def test_unknown_train_role_names_the_key():
    from peftx.recipe import validate_recipe

    with pytest.raises(PeftxError, match=r"method.train_roles: unknown role\(s\) \['layernorm'\]"):
        validate_recipe(tiny_recipe("bert", method={"name": "ia3", "train_roles": ["layernorm"]}))


def test_train_roles_choices_come_from_the_families(family):
    """The family roles, the pseudo-role `bias` and the layers around the backbone; each picks
    parameters on every family, bar the position embeddings of llama's rotary positions (none)."""
    from peftx.families import CORE_ROLES, OUTER_ROLES
    from peftx.methods.base import TRAIN_ROLE_CHOICES, role_selected

    assert (*CORE_ROLES, "bias", *OUTER_ROLES) == TRAIN_ROLE_CHOICES
    method = {"name": "frozen", "preset": "head_only", "train_roles": list(TRAIN_ROLE_CHOICES)}
    _, _, model, _ = build(tiny_recipe(family, input={"name": "learned"}, method=method))
    infos = model.param_infos().values()
    idle = [r for r in TRAIN_ROLE_CHOICES if not any(role_selected(i, [r]) for i in infos)]
    assert idle == (["position_embedding"] if family == "llama" else [])


def test_methods_that_update_body_weights_refuse_a_quantized_body():
    flags = {name: METHODS.get(name).quantized_body_ok for name in METHODS.names()}
    assert flags == {
        "bitfit": True,
        "frozen": True,
        "full": False,
        "ia3": True,
        "layers": False,
        "lora": True,
        "peft": True,
        "prefix": True,
        "prompt": True,
    }


# ---- the offline pretrained MiniLM takes every method --------------------------------------------


@pytest.mark.skipif(not HAS_OFFLINE, reason="offline model package not installed")
def test_every_method_applies_to_the_pretrained_offline_model(monkeypatch):
    import peftx.training.builder
    from peftx.model.loading import load_backbone

    base = load_backbone("offline")  # read (and hash-checked) once; each method gets a copy
    monkeypatch.setattr(peftx.training.builder, "load_backbone", lambda *a, **k: copy.deepcopy(base))
    for case, method in CASES.items():
        _, _, model, split = build(tiny_recipe("bert", method=method, model={"source": "offline"}))
        logits = fixed_logits(model, split)
        assert logits.shape == (6, CLASSES) and torch.isfinite(logits).all(), case
        budget = model_budget(model)
        assert budget.total >= 22_565_376 and (budget.trainable < budget.total or case == "full"), case
