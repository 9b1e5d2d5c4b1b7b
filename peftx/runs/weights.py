"""A run's weights file (`weights.safetensors`): which tensors a finished run saves, and loading them
into a freshly built model. Apart from `peftx.runs.record` so that reading a run's record imports no
torch."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from peftx.errors import PeftxError
from peftx.model.quantization import dequantized_weight, is_quantized, quantized_modules, set_quantized_weight
from peftx.runs.record import WEIGHTS


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
    out.update({n: b for n, b in model.named_buffers() if n.startswith(("input.", "extras.", "output_scale."))})
    return {n: t.detach().contiguous().cpu() for n, t in out.items()}


def save_weights(model: torch.nn.Module, run_dir: Path, whole_backbone: bool) -> None:
    save_file(weights_to_save(model, whole_backbone), str(run_dir / WEIGHTS))


def load_weights(model: torch.nn.Module, run_dir: Path) -> None:
    """Load a run's saved tensors into a freshly built model: every saved name must exist in it, and
    every trainable parameter of it must be saved.

    Raises:
        PeftxError: a missing, truncated or corrupt file, tensors with non-finite values, or tensors
            that do not fit the model (one line naming the file and the tensor).
    """
    path = run_dir / WEIGHTS
    if not path.is_file():
        raise PeftxError(f"{path}: missing; the run did not finish")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:  # empty, truncated or garbage: safetensors names the problem
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PeftxError(f"{path}: not a readable safetensors file ({first})") from None
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise PeftxError(f"{path}: {name} holds non-finite values (inf or nan); these weights cannot predict")
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
