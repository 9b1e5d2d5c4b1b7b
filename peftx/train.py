"""The one training loop, on accelerate: AdamW, warm-up and decay, clipping, periodic evaluation,
best-checkpoint selection on validation accuracy."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch.utils.data import DataLoader
from transformers import get_scheduler

from peftx.data import LengthGroupedBatches, Split, eval_batches
from peftx.memory import enable_gradient_checkpointing
from peftx.optim import build_optimizer, optimizer_state_bytes
from peftx.speed import ThreadTuner, prepare_model

if TYPE_CHECKING:
    from peftx.recipe import TrainSection


@dataclass
class TrainOutcome:
    history: list[dict] = field(default_factory=list)  # one entry per evaluation
    best: dict | None = None  # the evaluation whose weights were kept
    steps: int = 0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    train_examples: int = 0
    train_tokens: int = 0
    optimizer_state_bytes: int = 0


def make_accelerator(precision: str, grad_accum: int = 1) -> Accelerator:
    """An Accelerator for one run. Accelerate keeps its state per process; runs that follow each other
    in one process (sweeps, tests, predict after train) may differ in precision, so the per-run part
    of the state is reset first. The distributed part (PartialState) is kept."""
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision="bf16" if precision == "bf16" else "no", gradient_accumulation_steps=grad_accum)


def total_steps(cfg: TrainSection, n_train: int) -> int:
    if cfg.steps is not None:
        return cfg.steps
    per_epoch = math.ceil(n_train / (cfg.batch_size * cfg.grad_accum))
    return max(1, math.ceil(cfg.epochs * per_epoch))


def make_optimizer(model: torch.nn.Module, cfg: TrainSection) -> torch.optim.Optimizer:
    """`train.optimizer` (AdamW or an 8-bit one); matrices decay, biases, norms and 1-d vectors do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return build_optimizer(cfg.optimizer, [g for g in groups if g["params"]], cfg.lr)


def _loader(split: Split, batches, accelerator: Accelerator) -> DataLoader:
    loader = DataLoader(range(len(split)), batch_sampler=batches, collate_fn=split.collate)
    return accelerator.prepare_data_loader(loader)


def infer(
    model, split: Split, batch_size: int, accelerator: Accelerator, max_tokens: int | None = None
) -> torch.Tensor:
    """Logits (n, classes) for every example of a split, in the split's order (inference mode,
    length-sorted batches of at most `batch_size` examples and `max_tokens` padded tokens)."""
    model.eval()
    # accelerate trims the last gathered batch assuming equal batch sizes across processes: token
    # budgets (unequal sizes) only in a single process
    batches = eval_batches(split.lengths, batch_size, max_tokens if accelerator.num_processes == 1 else None)
    loader = _loader(split, batches, accelerator)
    chunks = []
    with torch.inference_mode(), accelerator.autocast():
        for batch in loader:
            batch.pop("labels", None)
            chunks.append(accelerator.gather_for_metrics(model(**batch).float()).cpu())
    model.train()
    order = torch.tensor([i for b in batches for i in b])
    logits = torch.empty(len(split), chunks[0].shape[-1]) if chunks else torch.empty(0, 0)
    if chunks:
        logits[order] = torch.cat(chunks)
    return logits


def evaluate(model, split: Split, cfg: TrainSection, accelerator: Accelerator) -> dict:
    """Accuracy and mean cross-entropy on a labelled split."""
    logits = infer(model, split, cfg.eval_batch_size, accelerator, cfg.eval_batch_tokens)
    labels = split.labels
    return {
        "accuracy": (logits.argmax(-1) == labels).float().mean().item(),
        "loss": F.cross_entropy(logits, labels).item(),
    }


def _forever(split: Split, cfg: TrainSection, seed: int, accelerator: Accelerator) -> Iterator[dict]:
    batches = LengthGroupedBatches(split.lengths, cfg.batch_size, seed, cfg.group_by_length)
    loader = _loader(split, batches, accelerator)
    while True:
        yield from loader


def train(
    model: torch.nn.Module,
    train_split: Split,
    val_split: Split,
    cfg: TrainSection,
    seed: int,
    accelerator: Accelerator,
    on_step: Callable[[int, dict], None] | None = None,
) -> TrainOutcome:
    """Train `model` (its trainable parameters) and keep the selected weights in it.

    Args:
        on_step: called after each optimizer step with (step, {loss, lr, examples_per_s}) and after
            each evaluation with (step, {val_accuracy, ...}); drives progress display.

    Returns:
        History, timings, and the evaluation whose weights the model holds on return.
    """
    steps = total_steps(cfg, len(train_split))
    warmup = int(cfg.warmup * steps) if cfg.warmup < 1 else int(cfg.warmup)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    optimizer = make_optimizer(model, cfg)
    scheduler = get_scheduler(cfg.schedule, optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    fast_forward = prepare_model(model, cfg, accelerator.device)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    batches = _forever(train_split, cfg, seed, accelerator)
    out = TrainOutcome()
    trainable = {n: p for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}
    best_acc, best_state = -1.0, None
    # Running sums stay tensors on the device: reading them (a GPU sync) waits for the log step.
    loss_sum, tokens, loss_n, t_window, ex_window = 0.0, 0, 0, time.perf_counter(), 0
    threads = ThreadTuner(cfg.threads if accelerator.device.type == "cpu" else None)
    model.train()
    step = 0
    while step < steps:
        threads.choose(step)
        t0, work = time.perf_counter(), 0
        for _ in range(cfg.grad_accum):
            batch = next(batches)
            work += batch["attention_mask"].numel()
            with accelerator.accumulate(model), accelerator.autocast():
                y = batch.pop("labels")
                with fast_forward():
                    loss = F.cross_entropy(model(**batch).float(), y)
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.clip_grad_norm is not None:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
            loss_n += 1
            out.train_examples += len(y)
            ex_window += len(y)
            tokens += batch["attention_mask"].sum()
        step += 1
        elapsed = time.perf_counter() - t0
        out.train_seconds += elapsed
        threads.record(elapsed, work)
        if on_step is not None and (step % cfg.log_every == 0 or step == steps):
            now = time.perf_counter()
            on_step(
                step,
                {
                    "loss": float(loss_sum) / loss_n,
                    "lr": scheduler.get_last_lr()[0],
                    "examples_per_s": ex_window / max(now - t_window, 1e-9),
                },
            )
            loss_sum, loss_n, t_window, ex_window = 0.0, 0, now, 0
        if step % cfg.eval_every == 0 or step == steps:
            t0 = time.perf_counter()
            metrics = evaluate(model, val_split, cfg, accelerator)
            out.eval_seconds += time.perf_counter() - t0
            t_window += time.perf_counter() - t0  # evaluation time is not training throughput
            entry = {
                "step": step,
                "val_accuracy": metrics["accuracy"],
                "val_loss": metrics["loss"],
                "lr": scheduler.get_last_lr()[0],
                "train_seconds": round(out.train_seconds, 3),
            }
            out.history.append(entry)
            if on_step is not None:
                on_step(step, entry)
            if cfg.select == "last" or metrics["accuracy"] > best_acc:
                best_acc = metrics["accuracy"]
                best_state = {n: p.detach().clone() for n, p in trainable.items()}
                out.best = entry
    out.steps = step
    out.train_tokens = int(tokens)
    out.optimizer_state_bytes = optimizer_state_bytes(optimizer)
    if best_state is not None:
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(best_state[n])
    return out
