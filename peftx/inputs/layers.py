"""The input layers themselves: the torch modules the input configs (`learned`, `pretrained_vocab`,
`learned_from_vocab`, `linear`, `pixel_vocab`) build.

They live apart from the configs so that reading and checking a recipe, and `peftx recipe show`,
import no torch: a config's `build()` imports this module when a model is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from peftx.inputs.base import ExportedInput
from peftx.spec.index_space import EOS, NUM_FRAMING, OFFSET, VALUE

if TYPE_CHECKING:
    from peftx.inputs.base import InputContext
    from peftx.spec.input_spec import InputSpec


def embedding_std(ctx: InputContext) -> float:
    """Standard deviation of the vectors the backbone's own embedding module produces."""
    embed = ctx.backbone.get_input_embeddings()
    scale = float(getattr(embed, "embed_scale", 1.0) or 1.0)  # BART/T5-style scaled embeddings
    if embed.weight.is_meta:  # counting parameters without weights: there are no values to measure
        return scale
    return float(embed.weight.detach().float().std()) * scale


class LearnedEmbedding(nn.Module):
    """A table of its own, looked up by the shared indices; its output takes the backbone's dtype.

    Args:
        weight: (index, hidden) initial rows.
        like: the backbone's embedding module (only its dtype is used; not registered here).
    """

    def __init__(self, weight: torch.Tensor, like: nn.Module) -> None:
        super().__init__()
        self.embed = nn.Embedding.from_pretrained(weight.detach().float().clone(), freeze=False)
        self._like = [like]  # a list hides the module from registration

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.embed(batch["input_ids"])  # (batch, seq, hidden)
        return out.to(self._like[0].weight.dtype)


class PretrainedVocabEmbedding(nn.Module):
    """Looks symbols up in the backbone's own embedding module (not registered here: it stays the
    backbone's parameter, counted once, under the `token_embedding` role)."""

    def __init__(self, embed: nn.Module, token_ids: list[list[int]]) -> None:
        super().__init__()
        self._embed = [embed]  # a list hides the module from registration
        width = max(len(t) for t in token_ids)
        ids = torch.zeros(len(token_ids), width, dtype=torch.long)
        mask = torch.zeros(len(token_ids), width)
        for i, t in enumerate(token_ids):
            ids[i, : len(t)] = torch.tensor(t)
            mask[i, : len(t)] = 1.0
        self.register_buffer("token_ids", ids)  # (index, pieces)
        self.register_buffer("piece_mask", mask)  # (index, pieces)

    def table(self) -> torch.Tensor:
        """(index, hidden): the embedding of every index, pieces averaged."""
        pieces = self._embed[0](self.token_ids)  # (index, pieces, hidden)
        weights = self.piece_mask / self.piece_mask.sum(1, keepdim=True)
        return torch.einsum("iph,ip->ih", pieces, weights.to(pieces.dtype))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.embedding(batch["input_ids"], self.table())  # (batch, seq, hidden)

    def token_map(self) -> list[list[int]]:
        """The vocabulary ids each shared index is embedded from (their mean), as the buffers hold them."""
        return [ids[mask > 0].tolist() for ids, mask in zip(self.token_ids, self.piece_mask, strict=True)]


class LinearInput(nn.Module):
    """Projects each value vector to the hidden size; framing positions take `framing`'s vectors.

    Args:
        dim: length of each input vector.
        hidden: the backbone's hidden size.
        gain: gain of the orthogonal initialisation.
        framing: module mapping {input_ids: PAD/BOS/EOS} to (batch, seq, hidden).
        like: the backbone's embedding module (for the output dtype only; not registered).
    """

    def __init__(self, dim: int, hidden: int, gain: float, framing: nn.Module, like: nn.Module) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        nn.init.orthogonal_(self.proj.weight, gain=gain)
        nn.init.zeros_(self.proj.bias)
        self.framing = framing
        self._like = [like]

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["input_ids"]  # (batch, seq)
        dtype = self._like[0].weight.dtype
        x = self.proj(batch["values"].to(self.proj.weight.dtype)).to(dtype)  # (batch, seq, hidden)
        special = self.framing({"input_ids": ids.clamp(max=EOS)}).to(dtype)  # (batch, seq, hidden)
        return torch.where((ids == VALUE).unsqueeze(-1), x, special)

    def export_spec(self, spec: InputSpec) -> ExportedInput:
        """Kind "linear": the projection, and the framing vectors as a (3, hidden) table."""
        framing = torch.arange(NUM_FRAMING).unsqueeze(0)  # (1, 3): PAD, BOS, EOS
        table = self.framing({"input_ids": framing})[0]  # (3, hidden)
        return ExportedInput("linear", {"table": table, "proj.weight": self.proj.weight, "proj.bias": self.proj.bias})


class PixelVocabEmbedding(nn.Module):
    """Bins intensities and looks the bins' number tokens up in the backbone's table."""

    def __init__(self, lookup: PretrainedVocabEmbedding, levels: int) -> None:
        super().__init__()
        self.lookup = lookup
        self.levels = levels

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = batch["input_ids"]  # (batch, seq)
        intensity = batch["values"][..., 0].float().clamp(0, 1)  # (batch, seq)
        level = (intensity * self.levels).long().clamp(max=self.levels - 1)
        return self.lookup({"input_ids": torch.where(ids == VALUE, OFFSET + level, ids)})  # (batch, seq, hidden)

    def token_map(self) -> list[list[int]]:
        """The vocabulary ids of every shared index: framing, then each intensity bin's number."""
        return self.lookup.token_map()

    def export_spec(self, spec: InputSpec) -> ExportedInput:
        """Kind "intensity_bins": the embedding of every index (framing, then each bin) and the bin count."""
        return ExportedInput("intensity_bins", {"table": self.lookup.table()}, {"intensity_levels": self.levels})
