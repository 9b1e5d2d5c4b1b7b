"""What a model costs in memory, and gradient checkpointing (the knob that trades time for it).

Peak memory of the process comes from `peftx.util.env.peak_memory`; this module counts where the bytes
of a model go: weights (quantized layers by their codes and scales), gradients, optimizer state.
"""

from __future__ import annotations

from torch import nn

from peftx.model.quantization import quantized_modules, quantized_weight_bytes


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Recompute the backbone's layer activations during backward instead of storing them (in training
    mode only; evaluation is unaffected).

    Non-reentrant checkpointing, always: it needs no input that requires grad, and peftx feeds the
    backbone `inputs_embeds` from a usually frozen embedding table, past the embedding hook that
    transformers uses to make the reentrant variant work with frozen inputs.
    """
    backbone = model.backbone
    backbone.config.use_cache = False  # a cache of keys/values is for generation, and clashes with this
    kwargs = {"use_reentrant": False}
    if hasattr(backbone, "activation_checkpointing_enable"):  # transformers >= 5.x
        backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def model_memory(model: nn.Module) -> dict[str, int]:
    """Bytes in a model's weights and in the gradients of its trainable parameters.

    Returns:
        weight_bytes: every parameter and buffer once (tied weights once), quantized layers by
            codes plus scales; quantized_weight_bytes: the part held by quantized layers;
            gradient_bytes: one gradient per trainable parameter, in its dtype.
    """
    quantized = {id(m.weight): quantized_weight_bytes(m) for m in quantized_modules(model).values()}
    weights = grads = 0
    for p in model.parameters():  # deduplicated by identity
        weights += quantized.get(id(p), p.numel() * p.element_size())
        grads += p.numel() * p.element_size() if p.requires_grad else 0
    weights += sum(b.numel() * b.element_size() for b in model.buffers())
    return {"weight_bytes": weights, "quantized_weight_bytes": sum(quantized.values()), "gradient_bytes": grads}
