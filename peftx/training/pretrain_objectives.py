"""The families' own pretraining objectives, in the shared index space (`peftx.spec.index_space`), for
the self-pretraining stage (`peftx.training.self_pretrain`).

The stage sees a task's symbols exactly as fine-tuning's `pretrained_vocab` input layer does: index i
embedded by the backbone's own token embedding rows of its spelling. The prediction side is tied to
the same table: the output vector of a position is scored against the embedding of every task index
(framing and symbols; a task vocabulary, as Amos et al. pretrain with the task's own tokens), so
no output matrix as large as the model's vocabulary is trained and thrown away.

- `mlm` (encoders: BERT): BERT's masked-token prediction. `mask_prob` of the symbols are chosen; of
  those 80% become the mask token, 10% a random symbol, 10% stay; the chosen positions are predicted.
- `causal` (decoders: GPT-2, LLaMA): every next index is predicted from the ones before it.
- `denoise` (encoder-decoders: T5, BART): spans of symbols (geometric lengths of mean `span`, about
  `mask_prob` of them) are replaced, one mask token per replaced symbol, in the encoder's input; the
  decoder, fed the original shifted right after the decoder start token, rebuilds the whole original
  sequence (BART's denoising with a length-preserving mask; Raffel et al., JMLR 2020, §3.3, found
  such variants of span corruption within noise of each other).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from peftx.families import Family
from peftx.spec.index_space import OFFSET

IGNORE = -100  # targets that are not scored


def objective_for(family: Family, config) -> str:
    """`mlm`, `causal` or `denoise`, by the stacks of the family's backbone."""
    stacks = set(family.num_layers(config))
    if stacks == {"encoder"}:
        return "mlm"
    if stacks == {"decoder"}:
        return "causal"
    return "denoise"


@dataclass
class Corrupted:
    """One batch made ready for an objective: what the encoder (or decoder-only model) reads, what an
    encoder-decoder's decoder reads, and the targets (IGNORE where not scored)."""

    inputs: torch.Tensor  # (batch, seq) indices
    decoder_inputs: torch.Tensor | None  # (batch, seq) indices, encoder-decoders only
    targets: torch.Tensor  # (batch, seq) indices or IGNORE

    def to(self, device: torch.device) -> Corrupted:
        dec = None if self.decoder_inputs is None else self.decoder_inputs.to(device)
        return Corrupted(self.inputs.to(device), dec, self.targets.to(device))


def _ensure_one(pick: torch.Tensor, symbol: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Every row with a symbol gets at least one chosen position (a random symbol of it)."""
    empty = ~pick.any(1) & symbol.any(1)
    if empty.any():
        score = torch.rand(pick.shape, generator=gen) * symbol  # (batch, seq)
        first = score.argmax(1)
        rows = torch.nonzero(empty).flatten()
        pick[rows, first[rows]] = True
    return pick


def _mlm(ids: torch.Tensor, prob: float, classes: int, mask_index: int, gen: torch.Generator) -> Corrupted:
    symbol = ids >= OFFSET
    pick = _ensure_one((torch.rand(ids.shape, generator=gen) < prob) & symbol, symbol, gen)
    r = torch.rand(ids.shape, generator=gen)
    inputs = ids.clone()
    inputs[pick & (r < 0.8)] = mask_index
    swap = pick & (r >= 0.8) & (r < 0.9)
    inputs[swap] = torch.randint(OFFSET, classes, ids.shape, generator=gen)[swap]
    return Corrupted(inputs, None, torch.where(pick, ids, IGNORE))


def _causal(ids: torch.Tensor, mask: torch.Tensor) -> Corrupted:
    targets = torch.full_like(ids, IGNORE)
    nxt = mask[:, 1:].bool()
    targets[:, :-1] = torch.where(nxt, ids[:, 1:], IGNORE)
    return Corrupted(ids, None, targets)


def _spans(symbol_row: torch.Tensor, prob: float, span: float, gen: torch.Generator) -> torch.Tensor:
    """Positions of one row to corrupt: spans of geometric length (mean `span`) over its symbols."""
    where = torch.nonzero(symbol_row).flatten()
    n = len(where)
    chosen = torch.zeros_like(symbol_row)
    if n == 0:
        return chosen
    goal = max(1, round(prob * n))
    p = 1.0 / span  # success probability of the geometric length (1 = every span one symbol long)
    picked = 0
    while picked < goal:
        u = float(torch.rand((), generator=gen))
        length = 1 if p >= 1 else 1 + int(math.log(max(u, 1e-12)) / math.log(1 - p))
        start = int(torch.randint(n, (), generator=gen))
        cover = where[start : start + min(length, goal - picked)]
        picked += int((~chosen[cover]).sum())
        chosen[cover] = True
    return chosen


def _denoise(
    ids: torch.Tensor, mask: torch.Tensor, prob: float, span: float, mask_index: int, start_index: int, gen
) -> Corrupted:
    symbol = ids >= OFFSET
    chosen = torch.stack([_spans(row, prob, span, gen) for row in symbol])  # (batch, seq)
    inputs = ids.masked_fill(chosen, mask_index)
    decoder_inputs = torch.cat([torch.full_like(ids[:, :1], start_index), ids[:, :-1]], 1)
    return Corrupted(inputs, decoder_inputs, torch.where(mask.bool(), ids, IGNORE))


def corrupt(
    objective: str,
    ids: torch.Tensor,
    mask: torch.Tensor,
    classes: int,
    prob: float,
    span: float,
    gen: torch.Generator,
) -> Corrupted:
    """A batch of framed indices made into an objective's inputs and targets.

    Args:
        objective: `mlm`, `causal` or `denoise`.
        ids: (batch, seq) shared indices; mask: (batch, seq), 1 on real positions.
        classes: the task's indices (framing and symbols); index `classes` is the mask token, index
            `classes + 1` the decoder start token.
        prob, span: the share of symbols corrupted and the mean span length.
        gen: the stage's generator (CPU): every random choice is drawn from it.
    """
    if objective == "mlm":
        return _mlm(ids, prob, classes, classes, gen)
    if objective == "causal":
        return _causal(ids, mask)
    return _denoise(ids, mask, prob, span, classes, classes + 1, gen)


class PretrainHead(nn.Module):
    """BERT's prediction head, tied: a transform (dense, GELU, LayerNorm), then a score against the
    embedding of each task index plus a bias per index."""

    def __init__(self, hidden: int, classes: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.bias = nn.Parameter(torch.zeros(classes))

    def forward(self, hidden: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.gelu(self.dense(hidden)))  # (n, hidden)
        return h @ table.T.to(h.dtype) + self.bias  # (n, classes)


def run_backbone(objective: str, backbone: nn.Module, table: torch.Tensor, batch: Corrupted, mask: torch.Tensor):
    """The backbone's last hidden states (batch, seq, hidden) for a corrupted batch, its inputs embedded
    by `table` (index -> vector); for `denoise`, those of the decoder."""
    embeds = F.embedding(batch.inputs, table)  # (batch, seq, hidden)
    if objective == "mlm":
        return backbone(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    if objective == "causal":
        return backbone(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
    dec = F.embedding(batch.decoder_inputs, table)
    out = backbone(
        inputs_embeds=embeds,
        attention_mask=mask,
        decoder_inputs_embeds=dec,
        decoder_attention_mask=mask,
        use_cache=False,
    )
    return out.last_hidden_state


def objective_loss(
    objective: str, backbone: nn.Module, head: PretrainHead, table: torch.Tensor, batch: Corrupted, mask: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy over the scored positions of one corrupted batch."""
    hidden = run_backbone(objective, backbone, table, batch, mask)
    scored = batch.targets != IGNORE  # (batch, seq)
    logits = head(hidden[scored], table[: len(head.bias)])  # (scored, classes)
    return F.cross_entropy(logits.float(), batch.targets[scored])
