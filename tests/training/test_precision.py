"""Precision: every method on every family trains and evaluates through the real loop under bf16
autocast with its frozen weights stored in bf16 (`model.dtype: auto`), and with the storage dtype
set explicitly; quantized bodies keep trained biases in float32; every shipped recipe runs a few
steps in fp32 and in bf16."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed

from peftx.errors import PeftxError
from peftx.methods import METHODS
from peftx.recipe import load_recipe, validate_recipe
from peftx.runs.run import run
from peftx.studies.sweep import load_sweep
from peftx.training.batching import make_split, pad_multiple
from peftx.training.builder import build_model, norm_params
from peftx.training.job import TrainJob
from peftx.training.loop import train
from peftx.training.points import Point, TrainPoint
from peftx.training.session import make_accelerator
from tests.methods.test_methods import INERT
from tests.model.test_loading import HAS_OFFLINE
from tests.support.helpers import changed, snapshot
from tests.support.tiny import FAMILY_NAMES, tiny_model, tiny_recipe

# One case per registered method, and roles trained on top of a method: a trained bias or norm
# next to a frozen weight of the same module, and trained embeddings whose fp32 rows enter the
# residual stream ahead of frozen norms.
METHOD_CASES = {
    "bitfit": {"name": "bitfit"},
    "frozen": {"name": "frozen"},  # preset fpt
    "full": {"name": "full"},
    "ia3": {"name": "ia3"},
    "layers": {"name": "layers", "top": 1},
    "lora": {"name": "lora", "r": 2},
    "peft": {"name": "peft", "tuner": "vera", "config": {"r": 4}},  # VeRA: one tuner peft has for every family
    "prefix": {"name": "prefix", "length": 2},
    "prompt": {"name": "prompt", "length": 2},
}
CASES = {
    **METHOD_CASES,
    "lora+bias": {"name": "lora", "r": 2, "train_roles": ["bias"]},
    "lora+layer_norm": {"name": "lora", "r": 2, "train_roles": ["layer_norm"]},
    "embeddings": {"name": "frozen", "preset": "head_only", "train_roles": ["token_embedding", "position_embedding"]},
}
STEPS = 2  # LoRA's A matrices get a gradient from the second step on (B starts at zero)


def test_every_registered_method_has_a_case():
    assert sorted(METHOD_CASES) == sorted(METHODS.names())


def train_briefly(family: str, method: dict, dtype: str, precision: str, lr: float = 3e-3, **model_extra):
    """Train a tiny model `STEPS` optimizer steps through `peftx.training.loop.train`, which evaluates it
    after the last one.

    Returns:
        (model, parameters before training, their dtypes before training, training losses,
        validation loss).
    """
    train_cfg = tiny_recipe(family)["train"] | {
        "lr": lr,
        "steps": STEPS,
        "eval_every": STEPS,
        "log_every": 1,
        "precision": precision,
        "weight_decay": 0.0,  # a parameter moves only if it got a gradient
        "schedule": "constant",
        "select": "last",
    }
    model_section = tiny_model(family, dtype=dtype, **model_extra)
    recipe = validate_recipe(tiny_recipe(family, method=method, model=model_section, train=train_cfg))
    set_seed(recipe.seed)
    task = recipe.task.load()
    model, _ = build_model(recipe, task.info)
    accelerator = make_accelerator(precision)
    multiple = pad_multiple(recipe.train, accelerator.device)
    splits = {
        n: make_split(task.splits[n], task.info.input_spec, model.specials, model.max_length, multiple)
        for n in ("train", "validation")
    }
    before = snapshot(model)
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    losses = []

    def on_point(point: Point) -> None:
        if isinstance(point, TrainPoint):
            losses.append(point.loss)

    job = TrainJob(model, splits["train"], splits["validation"], recipe.train, recipe.seed, accelerator)
    outcome = train(job, on_point)
    return accelerator.unwrap_model(model), before, dtypes, losses, outcome.history[-1].val_loss


def check_training(family: str, model, before, dtypes, losses, val_loss) -> None:
    """Finite losses; exactly the trainable parameters moved (bar those without a gradient by
    construction), the method's own among them; no parameter changed dtype while training."""
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses), losses
    assert math.isfinite(val_loss)
    assert {n: p.dtype for n, p in model.named_parameters()} == dtypes  # nothing re-cast in place
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    moved = changed(before, model)
    assert moved <= trained, sorted(moved - trained)  # nothing frozen moved
    still = trained - moved
    assert all(re.fullmatch(INERT[family], n.replace(".base_layer.", ".")) for n in still), sorted(still)
    infos = model.param_infos()
    assert any(infos[n].role != "head" for n in moved)  # the method's own parameters moved


def floating(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.is_floating_point()}


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("case", CASES)
def test_trains_in_bf16_with_frozen_weights_stored_in_bf16(case, family):
    out = train_briefly(family, CASES[case], "auto", "bf16")
    model = out[0]
    check_training(family, *out)
    norms = norm_params(model)
    params = floating(model)
    frozen = {n for n, p in params.items() if not p.requires_grad}
    assert {n for n in frozen - norms if params[n].dtype != torch.bfloat16} == set()
    # trained parameters keep their fp32 master copy; layer norms stay fp32, trained or not
    assert {n for n in params.keys() - (frozen - norms) if params[n].dtype != torch.float32} == set()
    if family not in ("t5", "llama"):  # their norms are RMS norms (a product), which take any mix of dtypes
        assert norms


# Each explicit setting with every method, on a family that turns with the setting: every method
# meets three families, every family each setting.
EXPLICIT = [("bfloat16", "bf16"), ("float32", "bf16"), ("bfloat16", "fp32")]
EXPLICIT_CASES = [
    (dtype, precision, case, FAMILY_NAMES[(i + j) % len(FAMILY_NAMES)])
    for j, (dtype, precision) in enumerate(EXPLICIT)
    for i, case in enumerate(sorted(METHOD_CASES))
]


@pytest.mark.parametrize("dtype, precision, case, family", EXPLICIT_CASES)
def test_trains_with_an_explicit_storage_dtype(case, family, dtype, precision):
    # `bfloat16` trains the backbone's own parameters in bf16 too, with no fp32 master copy: an update
    # below half their spacing is lost (1.0 + 3e-3 rounds back to 1.0), so a larger step shows they move
    out = train_briefly(family, CASES[case], dtype, precision, lr=3e-2 if dtype == "bfloat16" else 3e-3)
    model = out[0]
    check_training(family, *out)
    norms = norm_params(model)
    want = {
        n: torch.bfloat16 if dtype == "bfloat16" and n.startswith("backbone.") and n not in norms else torch.float32
        for n in floating(model)
    }
    assert {n: p.dtype for n, p in floating(model).items()} == want


def test_precision_settings_store_different_dtypes():
    """The storage checks above can fail: bf16 and fp32 runs of one recipe store different dtypes."""
    bf16 = train_briefly("bert", CASES["lora+bias"], "auto", "bf16")[0]
    fp32 = train_briefly("bert", CASES["lora+bias"], "auto", "fp32")[0]
    assert {p.dtype for p in fp32.parameters()} == {torch.float32}
    assert {p.dtype for p in bf16.parameters()} == {torch.float32, torch.bfloat16}


# ------------------------------------------------------------------------------------ quantized


QUANTIZED = {
    "8bit-lora-bert": ("bert", "lora", {"quantization": "8bit"}),
    "8bit-lora+bias-gpt2": ("gpt2", "lora+bias", {"quantization": "8bit"}),
    "8bit-bitfit-bart": ("bart", "bitfit", {"quantization": "8bit"}),
    "4bit-bf16-compute-lora+bias-bert": ("bert", "lora+bias", {"quantization": "4bit", "compute_dtype": "bfloat16"}),
    "4bit-bf16-compute-lora+layer_norm-llama": (
        "llama",
        "lora+layer_norm",
        {"quantization": "4bit", "compute_dtype": "bfloat16"},
    ),
}


@pytest.mark.parametrize("family, case, quant", QUANTIZED.values(), ids=QUANTIZED)
def test_quantized_body_trains_in_bf16_with_fp32_trained_biases(family, case, quant):
    """bitsandbytes casts a layer's bias to the compute dtype in place; trained ones must stay fp32."""
    pytest.importorskip("bitsandbytes")
    out = train_briefly(family, CASES[case], "auto", "bf16", **quant)
    model = out[0]
    check_training(family, *out)
    assert {n for n, p in floating(model).items() if p.requires_grad and p.dtype != torch.float32} == set()


# ------------------------------------------------------------------------------------- recipes

RECIPES_DIR = Path(__file__).parents[2] / "recipes"
PLAIN_RECIPES = [p for p in sorted(RECIPES_DIR.glob("*.yaml")) if len(load_sweep(p)) == 1]
RECIPE_STEPS = 3
# The smallest data each task offers: a few steps need no more.
SMALL_TASK = {
    "listops": ["task.preset=tiny", "task.n_train=32", "task.n_val=8", "task.n_test=8"],
    "vision": ["task.n_train=32", "task.n_val=8", "task.n_test=8"],
    "protein": ["task.n_train=32", "task.n_val=8", "task.n_test=8", "task.max_residues=32"],
    "timeseries": [],  # aeon's shipped sets are small already (at most a few hundred series a split)
}


def test_plain_recipes_are_found():
    assert "listops_bitfit.yaml" in {p.name for p in PLAIN_RECIPES}


# Both precisions, so no machine picks an untested path: bf16 is what `auto` picks on GPUs and
# AVX512-BF16 CPUs, fp32 elsewhere. A MiniLM run costs about a second.
PRECISIONS = ["fp32", "bf16"]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("path", PLAIN_RECIPES, ids=lambda p: p.name)
def test_shipped_recipe_runs_a_few_steps(path, precision, tmp_path):
    recipe = load_recipe(path)
    if recipe.model.source == "offline" and not HAS_OFFLINE:
        pytest.skip("offline model package not installed")
    task_overrides = SMALL_TASK[recipe.task.name]  # a new task needs its small size here
    overrides = [
        *task_overrides,
        f"train.precision={precision}",
        f"train.steps={RECIPE_STEPS}",
        f"train.eval_every={RECIPE_STEPS}",
        "train.batch_size=4",
        "train.eval_batch_size=8",
        f"output.dir={tmp_path}",
    ]
    recipe = load_recipe(path, overrides)
    try:
        recipe.task.load()
    except PeftxError as e:  # the task's data is not on this machine
        pytest.skip(str(e))
    res = run(recipe).result
    assert res["status"] == "completed" and res["precision"] == precision
    assert math.isfinite(res["metrics"]["test_loss"])
    assert all(math.isfinite(h["val_loss"]) for h in res["history"])
