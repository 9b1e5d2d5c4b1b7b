"""Small builders used across tests."""

from __future__ import annotations

import torch
from accelerate.utils import set_seed

from peftx.recipe import validate_recipe
from peftx.training.batching import LengthGroupedBatches, make_split
from peftx.training.builder import build_model


def build(raw: dict):
    """(recipe, task data, model, train split) for a raw recipe dict."""
    recipe = validate_recipe(raw)
    set_seed(recipe.seed)
    task = recipe.task.load()
    model, _ = build_model(recipe, task.info)
    # bitsandbytes quantizes onto the GPU where there is one (the run's accelerator moves the rest
    # there too); tests feed batches through `on_device`
    devices = {p.device for p in model.parameters()}
    if len(devices) > 1:
        model.to(next(d for d in devices if d.type != "cpu"))
    max_len = model.max_length
    split = make_split(task.splits["train"], task.info.input_spec, model.specials, max_len, 8, task.info.objective)
    return recipe, task, model, split


def train_steps(
    model, split, steps: int, lr: float = 1e-2, batch_size: int = 16, weight_decay: float = 0.01
) -> list[float]:
    """Plain AdamW steps on the trainable parameters; returns the losses. With `weight_decay=0` a
    parameter moves only if it received a gradient."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    batches = iter(LengthGroupedBatches(split.lengths, batch_size, seed=0))
    losses = []
    for _ in range(steps):
        try:
            idx = next(batches)
        except StopIteration:
            batches = iter(LengthGroupedBatches(split.lengths, batch_size, seed=1))
            idx = next(batches)
        batch = on_device(split.collate(idx), model)
        y = batch.pop("labels")
        loss = split.objective.loss(model(**batch), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def on_device(batch: dict, model) -> dict:
    """A collated batch on the device of the model's parameters."""
    device = next(model.parameters()).device
    return {k: v.to(device) for k, v in batch.items()}


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before: dict[str, torch.Tensor], model) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


def logits(model, batch) -> torch.Tensor:
    """The model's logits for a collated batch (without labels), with no gradient."""
    with torch.no_grad():
        return model(**on_device(batch, model))


def fixed_logits(model, split) -> torch.Tensor:
    """Eval-mode logits of a fixed batch (the split's first six examples)."""
    model.eval()
    batch = split.collate(list(range(6)))
    batch.pop("labels")
    with torch.no_grad():
        return model(**batch)
