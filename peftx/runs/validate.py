"""What `peftx validate` checks beyond the schema, without loading weights or data: the recipe's model
built on the meta device by the one builder (`peftx.training.builder.build_model`: its config with
`model.config_overrides`, its layers, the input layer, pooling and method, its storage dtypes), the
safety of a local model directory (custom code, pickles, safetensors headers), the task's description,
the warm-up and the global batch against the training split where its size is known, and whether the weights,
gradients and optimizer state fit in this machine's memory.

What needs the data (labels in range, empty splits, malformed rows) is checked when the task loads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from peftx.errors import PeftxError
from peftx.model.budget import model_budget
from peftx.model.files import check_local_dir, weights_files
from peftx.model.loading import load_tokenizer
from peftx.model.sources import OFFLINE, is_local, offline_model_dir
from peftx.recipe.checks import check_global_batch
from peftx.training.builder import build_model
from peftx.training.loop import total_steps

if TYPE_CHECKING:
    from peftx.recipe import RecipeBase

GB = 1024**3
# Bytes of optimizer state per trained parameter: AdamW keeps two moments in the parameter's dtype; the
# 8-bit optimizers keep two 8-bit codes (block scales are a rounding error).
_STATE_FACTOR = {"adamw": 2.0}
_STATE_8BIT = 2.0
_QUANT_BYTES = {"8bit": 1.0, "4bit": 0.5}


@dataclass(frozen=True)
class Checked:
    """What a checked recipe needs.

    Attributes:
        memory_bytes: weights + gradients + optimizer state as the run stores them (activations,
            which depend on batch and length, are not included).
        trainable: trained parameters.
    """

    memory_bytes: int
    trainable: int


def machine_memory() -> int:
    """Bytes of memory a run may use here: RAM plus every visible GPU's memory."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    gpus = sum(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
    return ram + gpus


def _check_source(recipe: RecipeBase) -> None:
    m = recipe.model
    if m.source == OFFLINE:
        if m.pretrained:
            offline_model_dir()  # installed, and the pinned file
        return
    if is_local(m.source):
        path = Path(m.source).expanduser()
        check_local_dir(path, m.trust_remote_code)
        if m.pretrained:
            weights_files(path, m.allow_pickle)
        load_tokenizer(m.source, m.pretrained, m.trust_remote_code)  # its files, if it has any
    data_dir = getattr(recipe.task, "data_dir", None)
    if data_dir is not None and not Path(data_dir).expanduser().is_dir():
        raise PeftxError(f"task.data_dir: {data_dir}: no such folder")


def _memory(model: torch.nn.Module, recipe: RecipeBase) -> int:
    """Bytes of weights, gradients and optimizer state of a meta-device model stored as the run stores it."""
    quant = recipe.model.quantization
    quantizable = model_budget(model).quantizable if quant != "none" else 0
    total = 0
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
        if p.requires_grad:
            per = _STATE_FACTOR.get(recipe.train.optimizer)
            state = p.numel() * p.element_size() * per if per is not None else p.numel() * _STATE_8BIT
            total += p.numel() * p.element_size() + int(state)  # gradient + optimizer state
    if quant != "none":  # frozen linear weights stored in 8 or 4 bits instead of float32
        total -= int(quantizable * (4 - _QUANT_BYTES[quant]))
    return total


def check_recipe(recipe: RecipeBase) -> Checked:
    """Check a validated recipe as far as it can be without weights or data.

    Raises:
        PeftxError: one line naming the key at fault (the model's config, a layer count, an unsafe
            source, the warm-up, the memory it needs).
    """
    info = recipe.task.describe()
    _check_source(recipe)
    m = recipe.model
    model, _ = build_model(recipe, info, meta=True)
    limit = model.max_length
    framing = (model.specials.bos is not None) + (model.specials.eos is not None)
    if limit is not None and limit < framing + 1:
        raise PeftxError(
            f"model: {limit} input positions (the backbone's, less what method {recipe.method.name} adds in front) "
            f"leave no room for a task token after {framing} framing token(s)"
        )
    need = _memory(model, recipe)
    trainable = model_budget(model).trainable
    have = machine_memory()
    if need > have:
        raise PeftxError(
            f"method: {recipe.method.name} on {m.source!r} needs at least {need / GB:,.1f} GB for weights, gradients "
            f"and optimizer state ({trainable:,} trained parameters); this machine has {have / GB:,.1f} GB"
        )
    check_global_batch(recipe)
    n_train = recipe.task.train_size()
    train = recipe.train
    if n_train is not None and train.warmup >= 1:
        steps = total_steps(train, n_train)
        if train.warmup > steps:
            raise PeftxError(
                f"train.warmup: {int(train.warmup)} steps is longer than the run ({steps} steps: {train.epochs:g} "
                f"epoch(s) of {n_train} examples in batches of {train.batch_size * train.grad_accum})"
            )
    return Checked(need, trainable)


def _key(recipe: RecipeBase) -> str:
    """What a check depends on (points differing only in seed, lr or names share one check)."""
    d = recipe.to_dict()
    train = {k: d["train"][k] for k in ("optimizer", "precision", "steps", "epochs", "warmup", "batch_size")}
    train["grad_accum"] = d["train"]["grad_accum"]
    return json.dumps({k: d[k] for k in ("model", "task", "input", "method")} | {"train": train}, sort_keys=True)


def check_recipes(recipes: list[RecipeBase], where: str) -> list[Checked]:
    """`check_recipe` on each recipe (one check per distinct model, task, input, method and schedule).

    Raises:
        PeftxError: the first failing recipe's error, prefixed with `where` (and the point's name for a
            sweep).
    """
    done: dict[str, Checked] = {}
    out = []
    for recipe in recipes:
        key = _key(recipe)
        if key not in done:
            try:
                done[key] = check_recipe(recipe)
            except PeftxError as e:
                point = f" [{recipe.output.name}]" if len(recipes) > 1 and recipe.output.name else ""
                raise PeftxError(f"{where}{point}: {e}") from None
        out.append(done[key])
    return out
