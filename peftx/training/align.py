"""The alignment stage (`input.align`): before training proper, train the input layer alone so that its
output vectors are distributed like a reference distribution of the same pretrained model — ORCA's
"align, then refine" (Shen et al., ICML 2023, whose embedder matches mean-pooled target embeddings to
source text embeddings with OTDD).

The reference is the model's token-embedding table (`vocab`) or its embeddings of a text file's
tokens (`text`); the target is the input layer's output at the task's symbol (or value) positions, one
vector per position (`embeddings`) or the mean over each sequence (`pooled`). Nothing but the input
layer's parameters is optimized, and nothing of the backbone runs: the comparison is at the level of
`inputs_embeds`, where the input layer replaces the model's own embedding table.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast, send_to_device

from peftx.errors import Diverged, PeftxError
from peftx.spec.index_space import OFFSET, VALUE
from peftx.training.batching import Split
from peftx.util.text_files import read_text

if TYPE_CHECKING:
    from peftx.inputs.base import AlignConfig

MAX_REFERENCE = 200_000  # reference vectors kept (a random subset of a larger table or text)
LOG_POINTS = 20  # entries of the stage's loss log


@dataclass
class Reference:
    """The reference vectors (n, hidden) in float32, and where they came from (for the run record)."""

    vectors: torch.Tensor
    provenance: dict = field(default_factory=dict)


def _embed_scale(embed: torch.nn.Module) -> float:
    return float(getattr(embed, "embed_scale", 1.0) or 1.0)  # BART/T5-style scaled embeddings


def reference(cfg: AlignConfig, model: torch.nn.Module, tokenizer, seed: int) -> Reference:
    """The reference distribution of `cfg.reference`, from the model's own embedding table.

    Raises:
        PeftxError: the text file cannot be read, holds no tokens, or the model has no tokenizer.
    """
    embed = model.backbone.get_input_embeddings()
    table = embed.weight.detach().float() * _embed_scale(embed)  # (vocab, hidden)
    source = {"source": "vocab", "rows": int(table.shape[0])}
    if cfg.reference == "vocab":
        vectors = table
    else:
        if tokenizer is None:
            raise PeftxError("input.align.reference: text needs the model's tokenizer, which this model has not")
        text = read_text(cfg.text, "input.align.text")
        lines = [line for line in text.splitlines() if line.strip()]
        ids = tokenizer(lines, add_special_tokens=False)["input_ids"] if lines else []
        ids = [row for row in ids if row]
        if not ids:
            raise PeftxError(f"input.align.text: {cfg.text} holds no text the model's tokenizer reads")
        source = {
            "source": "text",
            "file": str(cfg.text),
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "lines": len(ids),
            "tokens": sum(len(r) for r in ids),
        }
        if cfg.features == "pooled":
            vectors = torch.stack([table[torch.tensor(r)].mean(0) for r in ids])  # (lines, hidden)
        else:
            vectors = table[torch.tensor([t for r in ids for t in r])]  # (tokens, hidden)
    if len(vectors) > MAX_REFERENCE:
        gen = torch.Generator().manual_seed(seed)
        vectors = vectors[torch.randperm(len(vectors), generator=gen)[:MAX_REFERENCE]]
    return Reference(vectors.contiguous(), {**source, "features": cfg.features, "vectors": int(len(vectors))})


def target_features(model: torch.nn.Module, batch: dict, features: str) -> torch.Tensor:
    """The input layer's output at a batch's symbol or value positions (not padding, not framing):
    (positions, hidden) for `embeddings`, (batch, hidden) for `pooled`, in float32."""
    out = model.input(batch).float()  # (batch, seq, hidden)
    ids = batch["input_ids"]
    keep = batch["attention_mask"].bool() & ((ids >= OFFSET) | (ids == VALUE))  # (batch, seq)
    if features == "pooled":
        w = keep.unsqueeze(-1).float()
        return (out * w).sum(1) / w.sum(1).clamp(min=1.0)
    return out[keep]


def mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared maximum mean discrepancy with a sum of Gaussian kernels at 1/4 to 4 times the median
    pairwise distance (the median taken without gradient). Written here: it is a few lines, and the
    libraries that ship it (e.g. torchdrift) would bring a dependency for them."""
    xy = torch.cat([x, y])
    d2 = torch.cdist(xy, xy).pow(2)  # (n + m, n + m)
    median = d2.detach()[d2.detach() > 0].median()
    kernel = sum(torch.exp(-d2 / (median * s)) for s in (0.25, 0.5, 1.0, 2.0, 4.0))
    n = len(x)
    return kernel[:n, :n].mean() + kernel[n:, n:].mean() - 2 * kernel[:n, n:].mean()


def moments(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared distance of the means plus that of the per-dimension standard deviations, per dimension."""
    return (x.mean(0) - y.mean(0)).pow(2).mean() + (x.std(0) - y.std(0)).pow(2).mean()


def objective(cfg: AlignConfig):
    """The recipe's distance between two samples of vectors, differentiable in the first."""
    if cfg.objective == "mmd":
        return mmd
    if cfg.objective == "moments":
        return moments
    from geomloss import SamplesLoss  # noqa: PLC0415 (optional dependency: imported only where asked for)

    return SamplesLoss("sinkhorn", p=2, blur=cfg.blur, backend="tensorized")


@dataclass
class AlignOutcome:
    """The stage's record: the objective on a fixed sample before and after, the loss log, its cost."""

    objective: str
    steps: int
    before: float
    after: float
    log: list[dict]
    seconds: float
    reference: dict

    def to_dict(self) -> dict:
        return self.__dict__.copy()


def _sample(vectors: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    if len(vectors) <= k:
        return vectors
    return vectors[torch.randperm(len(vectors), generator=gen)[:k].to(vectors.device)]


def align_input(
    model: torch.nn.Module,
    split: Split,
    cfg: AlignConfig,
    ref: Reference,
    seed: int,
    accelerator: Accelerator,
) -> AlignOutcome:
    """Train `model.input` alone for `cfg.steps` steps towards the reference distribution.

    Every process runs the same steps on the same samples (a generator seeded from `seed`; the global
    random streams are untouched), and the main process's result is broadcast, so all hold one layer.

    Raises:
        Diverged: the alignment loss became non-finite.
        PeftxError: the input layer has nothing to train.
    """
    params = [p for p in model.input.parameters() if p.requires_grad]
    if not params:
        raise PeftxError("input.align: the input layer has no trainable parameters")
    t0 = time.perf_counter()
    device = params[0].device  # before `prepare`: where the model was built
    distance = objective(cfg)
    gen = torch.Generator().manual_seed(seed * 7_919 + 1)
    ref_vectors = ref.vectors.to(device)
    fixed_idx = torch.randint(len(split), (min(cfg.batch_size * 4, len(split)),), generator=gen).tolist()
    fixed_ref = _sample(ref_vectors, cfg.points, gen)

    def fixed_loss() -> float:  # the same examples and positions before and after
        with torch.no_grad():
            batch = send_to_device(split.collate(fixed_idx), device)
            x = _sample(target_features(model, batch, cfg.features), cfg.points, torch.Generator().manual_seed(seed))
            return float(distance(x, fixed_ref))

    was_training = model.training
    model.eval()  # no dropout in the layer being aligned; the backbone does not run
    before = fixed_loss()
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    log, every = [], max(1, cfg.steps // LOG_POINTS)
    for step in range(1, cfg.steps + 1):
        idx = torch.randint(len(split), (cfg.batch_size,), generator=gen).tolist()
        batch = send_to_device(split.collate(idx), device)
        x = _sample(target_features(model, batch, cfg.features), cfg.points, gen)
        loss = distance(x, _sample(ref_vectors, cfg.points, gen))
        if not math.isfinite(loss.item()):
            raise Diverged(f"input.align diverged at step {step} (loss {float(loss)}); try a smaller input.align.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % every == 0 or step == cfg.steps:
            log.append({"step": step, "loss": loss.item()})
    if accelerator.num_processes > 1:  # the same steps everywhere; one layer, to the bit
        with torch.no_grad():
            for p in params:
                p.copy_(broadcast(p.detach().clone(), from_process=0))
    after = fixed_loss()
    model.train(was_training)
    return AlignOutcome(cfg.objective, cfg.steps, before, after, log, time.perf_counter() - t0, ref.provenance)
