"""Quantized backbones with bitsandbytes: the body's linear layers stored in 8 bits (LLM.int8) or 4 bits
(NF4 / FP4, optionally with double quantisation of the block scales).

What is quantized: every `nn.Linear` (GPT-2's `Conv1D` too) inside the backbone, except those
transformers keeps in full precision for numerical reasons (T5's feed-forward output `wo`).
Embeddings and biases stay in `model.dtype` (layer norms in float32: `peftx.training.builder.storage_plan`),
and a layer's bias keeps its dtype under bf16 autocast (`_bias_added_apart`); the input layer, the
head and method modules live outside the backbone and are never quantized. Quantized weights cannot
train, so only methods that keep the body's matrices frozen combine with a quantized body (checked
when the recipe is validated, and again when a method is applied).

CPU note: bitsandbytes repacks a `Linear4bit` weight into an AVX512-BF16 layout the first time it
runs in eval mode without gradients (on CPUs that have AVX512-BF16). Training after that evaluation
runs the packed inference kernel, which has no backward: it fails, or gives wrong gradients without
an error; layers narrower than one 64-weight block cannot be repacked at all. `prepare_quantized`
turns the repacking off on every layer, on every CPU, so train -> eval -> train cycles work
everywhere; 4-bit evaluation on such a CPU then uses the same dequantizing kernel as training.

8-bit training note: bitsandbytes' 8-bit matmuls (MatMul8bitLt on CUDA, MatMul8bitFp on CPU) keep
their input on the autograd context as a plain attribute, outside saved-tensor hooks, so gradient
checkpointing cannot free it: every layer's inputs stay alive until backward. The weight is frozen,
so backward needs none of it (grad x = grad y @ W); `prepare_quantized` gives the 8-bit layers a
training path that keeps nothing but the layer (`_FrozenInt8Matmul`).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from peftx.util.peft_shim import loaded_bitsandbytes


@dataclass(frozen=True)
class QuantSpec:
    """How to quantize a backbone.

    Attributes:
        bits: 8 (LLM.int8, row-wise absmax) or 4 (block-wise, 64 weights a block).
        quant_type: 4-bit data type: nf4 (normal-float, for normally distributed weights) or fp4.
        double_quant: 4-bit only: quantize the block scales themselves (~0.4 bits/weight saved).
        compute_dtype: 4-bit only: dtype the dequantized weights are multiplied in.
    """

    bits: Literal[8, 4]
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: torch.dtype = torch.float32

    @classmethod
    def from_section(cls, model) -> QuantSpec | None:
        """The spec of a recipe's `model` section (None: no quantization)."""
        if model.quantization == "none":
            return None
        if model.quantization == "8bit":
            return cls(bits=8)
        return cls(
            bits=4,
            quant_type=model.quant_type or "nf4",
            double_quant=True if model.double_quant is None else model.double_quant,
            compute_dtype=getattr(torch, model.compute_dtype or model.dtype.replace("auto", "float32")),
        )

    def hf_config(self):
        """The transformers `BitsAndBytesConfig` for `from_pretrained(quantization_config=...)`."""
        from transformers import BitsAndBytesConfig

        # An explicit empty skip list: transformers' default guesses an "output head" to skip, but a
        # peftx backbone has no head inside it (ours sits outside, in full precision).
        if self.bits == 8:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=[])
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quant_type,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=self.compute_dtype,
            llm_int8_skip_modules=[],
        )


def _bnb():
    """bitsandbytes, imported here on first use: only quantized backbones need it."""
    try:
        import bitsandbytes
    except ImportError:  # quantization is optional; without the package nothing is quantized
        return None
    return bitsandbytes


def is_quantized(p: torch.Tensor) -> bool:
    """Whether a parameter is a bitsandbytes 8-bit or 4-bit weight."""
    bnb = loaded_bitsandbytes()
    return bnb is not None and isinstance(p, bnb.nn.Int8Params | bnb.nn.Params4bit)


def quantized_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Name -> module of every bitsandbytes 8-bit or 4-bit linear layer in `model`."""
    bnb = loaded_bitsandbytes()
    if bnb is None:
        return {}
    kinds = (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)
    return {n: m for n, m in model.named_modules() if isinstance(m, kinds)}


class _DropCastNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("MatMul8bitLt: inputs will be cast")


_CAST_NOTICE = _DropCastNotice()


class _FrozenInt8Matmul(torch.autograd.Function):
    """`x @ W.T + b` for an 8-bit layer whose weight is frozen: bitsandbytes' forward, run without
    recording a graph, and a backward that needs only the layer (see the module docstring). Written
    here because bitsandbytes' own matmuls keep their input for a weight gradient peftx never takes."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bias: torch.Tensor | None, module: nn.Module) -> torch.Tensor:
        ctx.module, ctx.x_dtype = module, x.dtype
        return _bnb().nn.Linear8bitLt.forward(module, x)  # autograd is off inside forward

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_x = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = grad.to(ctx.x_dtype) @ _int8_dequantized(ctx.module, ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            grad_bias = grad.reshape(-1, grad.shape[-1]).sum(0).to(ctx.module.bias.dtype)
        return grad_x, grad_bias, None


def _bias_added_apart(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` for a bitsandbytes layer whose bias differs from the input's dtype (an fp32 bias
    under bf16 autocast): bitsandbytes would cast the bias itself to that dtype, in place (`bias.data
    = ...`), so a trained bias would lose its fp32 master copy and no longer match its optimizer
    state. The layer runs without it and a cast copy is added to its output instead."""
    bias = module._parameters["bias"]
    module._parameters["bias"] = None
    try:
        out = module.forward(x)  # not through hooks: they ran for the call that got here
    finally:
        module._parameters["bias"] = bias
    return out + bias.to(out.dtype)


@functools.cache
def _frozen_int8_linear() -> type[nn.Module]:
    bnb = _bnb()

    class FrozenLinear8bitLt(bnb.nn.Linear8bitLt):
        """A bitsandbytes 8-bit linear layer whose training forward keeps no activations."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.bias is not None and self.bias.dtype != x.dtype:
                return _bias_added_apart(self, x)
            bias_grad = self.bias is not None and self.bias.requires_grad
            if not torch.is_grad_enabled() or self.weight.requires_grad or not (x.requires_grad or bias_grad):
                return super().forward(x)
            return _FrozenInt8Matmul.apply(x, self.bias, self)

    return FrozenLinear8bitLt


@functools.cache
def _bias_safe_4bit_linear() -> type[nn.Module]:
    bnb = _bnb()

    class BiasSafeLinear4bit(bnb.nn.Linear4bit):
        """A bitsandbytes 4-bit linear layer that leaves its bias's dtype alone (`_bias_added_apart`)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.bias is not None and self.bias.dtype != (self.compute_dtype or x.dtype):
                return _bias_added_apart(self, x)
            return super().forward(x)

    return BiasSafeLinear4bit


def prepare_quantized(model: nn.Module) -> None:
    """Make a quantized model safe and lean to train: turn off the CPU-only AVX512-BF16 repacking of
    4-bit weights, and undo it where it already happened; give 8-bit layers a training path that keeps
    no activations (see the module docstring); keep every layer's bias in its own dtype (bitsandbytes
    would cast it in place to the compute dtype, see `_bias_added_apart`)."""
    bnb = _bnb()
    if not quantized_modules(model):
        return
    # 8-bit inference casts fp32 activations to fp16 for the int8 matmul, and logs so on every call.
    matmul_log = logging.getLogger("bitsandbytes.autograd._functions")
    if _CAST_NOTICE not in matmul_log.filters:
        matmul_log.addFilter(_CAST_NOTICE)
    for module in quantized_modules(model).values():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            _unpack_cpu(module)
            if type(module) is bnb.nn.Linear4bit:
                module.__class__ = _bias_safe_4bit_linear()
        elif type(module) is bnb.nn.Linear8bitLt:
            module.__class__ = _frozen_int8_linear()


@torch.no_grad()
def own_unquantized_tensors(model: nn.Module) -> None:
    """Copy the parameters and buffers that stay in full precision into the process's own memory.

    transformers memory-maps checkpoint files and quantizes from the mapped full-precision weights;
    tensors left as views of the mapping (biases, norms, embeddings) keep every mapped file, and all
    its pages read while quantizing, resident. Copying them lets the files go, so a quantized backbone
    holds only what it needs."""
    for t in [*model.parameters(), *model.buffers()]:
        if t.device.type == "cpu" and not is_quantized(t):
            t.data = t.data.clone()


def _unpack_cpu(module: nn.Module) -> None:
    from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

    state = module.weight.quant_state
    if getattr(state, "packing_format_for_cpu", False):
        module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
            module.weight.data, state
        )
        module.quant_state = module.weight.quant_state


def _int8_scale(module: nn.Module) -> torch.Tensor:
    # Linear8bitLt moves the row scales from the weight to its matmul state on the first forward.
    scb = getattr(module.weight, "SCB", None)
    return scb if scb is not None else module.state.SCB


def _int8_dequantized(module: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    return module.weight.data.to(dtype) * (_int8_scale(module).to(dtype).unsqueeze(1) / 127.0)


def dequantized_weight(module: nn.Module) -> torch.Tensor:
    """The full-precision (float32) matrix a quantized linear layer stands for, (out, in)."""
    import bitsandbytes.functional as F

    bnb = _bnb()
    if isinstance(module, bnb.nn.Linear8bitLt):
        return _int8_dequantized(module, torch.float32)
    _unpack_cpu(module)
    return F.dequantize_4bit(module.weight.data, module.weight.quant_state).float()


@torch.no_grad()
def set_quantized_weight(module: nn.Module, weight: torch.Tensor) -> None:
    """Quantize a full-precision (out, in) matrix into a quantized linear layer, as loading would.
    `dequantized_weight` followed by this reproduces the 8-bit weights exactly and the 4-bit
    weights up to the re-quantized block scales."""
    import bitsandbytes.functional as F

    bnb = _bnb()
    device = module.weight.device
    if isinstance(module, bnb.nn.Linear8bitLt):
        cb, scb, _ = F.int8_vectorwise_quant(weight.to(device=device, dtype=torch.float16).contiguous())
        module.weight.data, module.weight.CB, module.weight.SCB = cb, cb, scb
        module.state.CB = module.state.SCB = None  # the next forward takes them from the weight
        return
    _unpack_cpu(module)
    old = module.weight.quant_state
    data, state = F.quantize_4bit(
        weight.to(device=device, dtype=old.dtype).contiguous(),
        blocksize=old.blocksize,
        compress_statistics=old.nested,
        quant_type=old.quant_type,
        quant_storage=module.weight.data.dtype,
    )
    module.weight.data, module.weight.quant_state, module.quant_state = data, state, state


def quantized_weight_bytes(module: nn.Module) -> int:
    """Bytes a quantized layer's weight occupies: codes plus scales (and the 4-bit code tables)."""
    bnb = _bnb()
    weight = module.weight
    n = weight.numel() * weight.element_size()
    if isinstance(module, bnb.nn.Linear8bitLt):
        scale = _int8_scale(module)
        return n + (scale.numel() * scale.element_size() if scale is not None else 0)
    state = weight.quant_state
    if state is None:
        return n
    extras = state.as_dict(packed=False).values()
    return n + sum(t.numel() * t.element_size() for t in extras if torch.is_tensor(t))
