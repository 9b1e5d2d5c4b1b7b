"""What a run leaves on disk, and reloading it to predict.

runs/<name>/
  recipe.yaml          the resolved recipe (every default written out)
  result.json          budget, metrics over time, final metrics, timings, memory, versions, status
  weights.safetensors  trained parameters + the input layer's own parameters and buffers (+ the whole
                       backbone when it was built from scratch, since random weights cannot be
                       re-downloaded; quantized layers are written dequantized and quantized again
                       on loading)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from peftx.errors import PeftxError
from peftx.quantization import dequantized_weight, is_quantized, quantized_modules, set_quantized_weight

WEIGHTS = "weights.safetensors"
RESULT = "result.json"
RECIPE = "recipe.yaml"


def prepare_run_dir(path: Path, overwrite: bool) -> Path:
    """Create an empty run directory; an existing one is an error unless `overwrite`."""
    if path.exists():
        if not overwrite:
            raise PeftxError(f"{path}: run directory exists; pass --overwrite or choose --name / output.name")
        if not (path / RESULT).exists() and not (path / RECIPE).exists() and any(path.iterdir()):
            raise PeftxError(f"{path}: exists and is not a peftx run directory; refusing to overwrite it")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def weights_to_save(model: torch.nn.Module, whole_backbone: bool) -> dict[str, torch.Tensor]:
    """Trainable parameters, the input layer's parameters (frozen ones too: a frozen fresh table is
    random and could not be rebuilt) and buffers, extras' buffers, and optionally the backbone."""
    out = {
        n: p
        for n, p in model.named_parameters()
        if p.requires_grad
        or n.startswith("input.")
        or (whole_backbone and n.startswith("backbone.") and not is_quantized(p))
    }
    if whole_backbone:
        out.update({f"{n}.weight": dequantized_weight(m) for n, m in quantized_modules(model).items()})
    out.update({n: b for n, b in model.named_buffers() if n.startswith(("input.", "extras."))})
    return {n: t.detach().contiguous().cpu() for n, t in out.items()}


def save_weights(model: torch.nn.Module, run_dir: Path, whole_backbone: bool) -> None:
    save_file(weights_to_save(model, whole_backbone), str(run_dir / WEIGHTS))


def load_weights(model: torch.nn.Module, run_dir: Path) -> None:
    """Load a run's saved tensors into a freshly built model: every saved name must exist in it, and
    every trainable parameter of it must be saved."""
    path = run_dir / WEIGHTS
    if not path.is_file():
        raise PeftxError(f"{path}: missing; the run did not finish")
    state = load_file(str(path))
    own = dict(model.named_parameters()) | dict(model.named_buffers())
    unknown = sorted(set(state) - set(own))
    if unknown:
        raise PeftxError(f"{path}: holds {len(unknown)} tensor(s) the rebuilt model lacks, e.g. {unknown[0]}")
    missing = sorted(n for n, p in model.named_parameters() if p.requires_grad and n not in state)
    if missing:  # they would stay at their fresh initialisation
        raise PeftxError(f"{path}: lacks {len(missing)} trainable tensor(s) of the rebuilt model, e.g. {missing[0]}")
    quantized = {f"{n}.weight": m for n, m in quantized_modules(model).items()}
    with torch.no_grad():
        for name, tensor in state.items():
            module = quantized.get(name)
            shape = (module.out_features, module.in_features) if module is not None else tuple(own[name].shape)
            if tuple(tensor.shape) != shape:
                raise PeftxError(f"{path}: {name} has shape {tuple(tensor.shape)}, model expects {shape}")
            if module is not None:
                set_quantized_weight(module, tensor)
            else:
                own[name].copy_(tensor)
