"""`onehot`: each symbol's one-hot code times a trained matrix (symbols x hidden), and the model's own
start/end token embeddings for the framing positions.

The whole input-adapter contract in one file: an `InputConfig` subclass that declares its registry
name and builds a module mapping a batch (`input_ids` in peftx's shared index space, see
`peftx.spec.index_space`) to (batch, seq, hidden) embeddings, then registers itself. The module also
says what it contributes to `peftx export` (`export_spec`): the exported model is rebuilt without
peftx, from plain tensors of a kind its template knows (`peftx.inputs.ExportedInput`). One-hot codes
times a matrix pick that matrix's rows, so the layer exports as a "table": the framing rows, then
one row per symbol. (A layer on symbols that says nothing is exported as that table too, computed
from its output for every index.)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from peftx.errors import PeftxError
from peftx.inputs import INPUTS, ExportedInput, InputConfig, InputContext
from peftx.spec.index_space import NUM_FRAMING
from peftx.spec.input_spec import InputSpec, SymbolVocab


class OneHotInput(nn.Module):
    def __init__(self, num_symbols: int, framing: torch.Tensor, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Parameter(torch.randn(num_symbols, hidden) * 0.02)  # (symbols, hidden)
        self.register_buffer("framing", framing.detach().float().clone())  # (3, hidden): pad, start, end

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["input_ids"]  # (batch, seq)
        symbol = (ids - NUM_FRAMING).clamp(min=0)
        onehot = F.one_hot(symbol, self.proj.shape[0]).to(self.proj.dtype)  # (batch, seq, symbols)
        x = onehot @ self.proj  # (batch, seq, hidden)
        special = self.framing[ids.clamp(max=NUM_FRAMING - 1)]  # (batch, seq, hidden)
        return torch.where((ids >= NUM_FRAMING).unsqueeze(-1), x, special)

    def export_spec(self, spec: InputSpec) -> ExportedInput:
        """Kind "table": row i embeds shared index i (pad, start, end, then symbol i - 3)."""
        return ExportedInput("table", {"table": torch.cat([self.framing, self.proj])})  # (3 + symbols, hidden)


class OneHotConfig(InputConfig):
    """Task symbols -> one-hot codes -> a trained (symbols x hidden) matrix."""

    name: Literal["onehot"] = "onehot"
    trainable: bool = True
    """Train the matrix (default)."""

    def build(self, ctx: InputContext) -> nn.Module:
        if not isinstance(ctx.spec, SymbolVocab):
            raise PeftxError("input.name: onehot needs a task with discrete symbols")
        embed = ctx.backbone.get_input_embeddings()
        sp = ctx.specials
        ids = [sp.pad, sp.pad if sp.bos is None else sp.bos, sp.pad if sp.eos is None else sp.eos]
        with torch.no_grad():
            framing = embed(torch.tensor(ids, device=embed.weight.device))  # (3, hidden)
        return OneHotInput(len(ctx.spec.symbols), framing, ctx.hidden_size)


INPUTS.register(OneHotConfig)
