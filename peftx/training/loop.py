"""The one training loop, on accelerate: AdamW, warm-up and decay, clipping, periodic evaluation,
best-checkpoint selection on validation accuracy.

With N processes of `batch_size` B each, an optimizer step takes a global batch of N x B x grad_accum
examples: the same examples, in the same order, as one process at N x B (`LengthGroupedBatches`), with
the gradient of the same mean loss, and one step of the learning-rate schedule. Evaluation gives each
process its own length-sorted batches (`eval_shard`) and gathers every example's logits exactly once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, send_to_device
from transformers import get_scheduler

from peftx.errors import Diverged, Interrupted, PeftxError
from peftx.model.memory import enable_gradient_checkpointing
from peftx.training.batching import LengthGroupedBatches, Split, shard
from peftx.training.checkpoints import Checkpoints, LoopState, StopRequests
from peftx.training.evaluation import draw_like_a_data_loader, evaluate
from peftx.training.optimizers import build_optimizer, optimizer_state_bytes
from peftx.training.speed import ThreadTuner, prepare_model

if TYPE_CHECKING:
    from peftx.recipe import TrainSection


@dataclass
class TrainOutcome:
    history: list[dict] = field(default_factory=list)  # one entry per evaluation
    train_log: list[dict] = field(default_factory=list)  # one entry per log step
    best: dict | None = None  # the evaluation whose weights were kept
    skipped_steps: int = 0  # updates skipped for a non-finite gradient norm (train.nonfinite: skip)
    resumed_from: int | None = None  # the checkpoint's step, for a resumed run
    steps: int = 0
    cap: int = 0  # the steps the run would take without train.early_stop
    stopped: str = "cap"  # flat: train.early_stop ended it; cap: it ran all its steps
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    train_examples: int = 0  # summed over processes
    train_tokens: int = 0  # summed over processes
    optimizer_state_bytes: int = 0
    world_size: int = 1  # processes
    per_process_batch: int = 0  # examples per process and micro-batch (train.batch_size)
    global_batch: int = 0  # examples per optimizer step: per_process_batch x world_size x grad_accum


def make_accelerator(precision: str, grad_accum: int = 1, log_with: list | None = None) -> Accelerator:
    """An Accelerator for one run. Accelerate keeps its state per process; runs that follow each other
    in one process (sweeps, tests, predict after train) may differ in precision, so the per-run part
    of the state is reset first. The distributed part (PartialState) is kept.

    The loop steps the learning-rate schedule itself, once per optimizer step: accelerate's prepared
    scheduler would step once per process (it assumes each process's loader holds 1/N of the epoch's
    batches, and a schedule built for the single-process step count)."""
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        mixed_precision="bf16" if precision == "bf16" else "no",
        gradient_accumulation_steps=grad_accum,
        step_scheduler_with_optimizer=False,
        log_with=log_with or None,
    )


def total_steps(cfg: TrainSection, n_train: int, num_processes: int = 1) -> int:
    """Optimizer steps of a run: `train.steps`, or `train.epochs` of global batches (every process's
    batch_size x grad_accum examples per step)."""
    if cfg.steps is not None:
        return cfg.steps
    per_epoch = math.ceil(n_train / (cfg.batch_size * cfg.grad_accum * num_processes))
    return max(1, math.ceil(cfg.epochs * per_epoch))


def make_optimizer(model: torch.nn.Module, cfg: TrainSection) -> torch.optim.Optimizer:
    """`train.optimizer` (AdamW or an 8-bit one); matrices decay, biases, norms and 1-d vectors do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return build_optimizer(cfg.optimizer, [g for g in groups if g["params"]], cfg.lr)


def _micro_batches(
    split: Split, cfg: TrainSection, seed: int, accelerator: Accelerator, start: int = 0
) -> Iterator[tuple[dict, int, int]]:
    """Endless training micro-batches of this process: (batch on the device, its examples, the examples of
    the global batch it is part of). A process whose part of an epoch's last global batch is empty gets
    one example of that batch to run at weight 0 (every process must take part in each backward).

    `start` micro-batches are passed over without collating (a resumed run: each epoch's order depends
    on the seed and the epoch alone, and the random states that followed are restored from the
    checkpoint)."""
    n, rank = accelerator.num_processes, accelerator.process_index
    sampler = LengthGroupedBatches(split.lengths, cfg.batch_size, seed, cfg.group_by_length, num_processes=n)
    sampler.epoch, offset = divmod(start, max(len(sampler), 1))
    while True:
        if not offset:  # an epoch begins (mid-epoch, its draw was made before the checkpoint)
            draw_like_a_data_loader()
        for batch in sampler.global_batches()[offset:]:
            idx = shard(batch, n, rank)
            yield send_to_device(split.collate(idx or batch[:1]), accelerator.device), len(idx), len(batch)
        offset = 0


def _loss(logits: torch.Tensor, labels: torch.Tensor, n: int, n_global: int, num_processes: int) -> torch.Tensor:
    """This process's term of the global batch's mean cross-entropy. Processes average their gradients
    (DDP, FSDP), so each contributes the sum over its first `n` rows x processes / global examples: the
    gradient of the mean over the whole global batch, however unevenly it was split."""
    if num_processes == 1:
        return F.cross_entropy(logits, labels)
    return F.cross_entropy(logits[:n], labels[:n], reduction="sum") * (num_processes / n_global)


def _configure_deepspeed(accelerator: Accelerator, cfg: TrainSection) -> None:
    """Fill what DeepSpeed would read from a prepared data loader (peftx prepares none) and the recipe's
    clipping, which DeepSpeed applies itself.

    Raises:
        PeftxError: `select: best` under ZeRO-3, whose partitioned weights cannot be copied aside.
    """
    plugin = accelerator.state.deepspeed_plugin
    if plugin.zero_stage == 3 and cfg.select == "best":
        raise PeftxError("train.select: best keeps a copy of the trained weights, which ZeRO-3 partitions; use last")
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.batch_size
    plugin.deepspeed_config["gradient_clipping"] = cfg.clip_grad_norm or 0.0


MAX_SKIPPED_IN_A_ROW = 10  # train.nonfinite: skip still stops a run whose updates stay non-finite


class _Window:
    """Running sums since the last log step, kept as tensors on the device (reading them is a GPU sync,
    which waits for the log step), saved into checkpoints as plain numbers."""

    KEYS = ("examples", "tokens", "grad_norm", "norms")  # norms: how many gradient norms grad_norm sums

    def __init__(self, device: torch.device, saved: dict | None = None):
        saved = saved or {}
        wide = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
        self.sums = torch.tensor([float(saved.get(k, 0.0)) for k in self.KEYS], dtype=wide, device=device)
        self.loss = torch.tensor(float(saved.get("loss", 0.0)), device=device)  # float32, as the loss
        self.n = int(saved.get("n", 0))  # micro-batch losses summed (the same on every process)
        self.t0 = time.perf_counter()

    def dump(self) -> dict:
        return dict(zip(self.KEYS, self.sums.tolist())) | {"loss": self.loss.item(), "n": self.n}

    def reset(self, now: float) -> None:
        self.sums.zero_()
        self.loss = torch.zeros_like(self.loss)
        self.n, self.t0 = 0, now


def _flat(state: LoopState, accuracy: float, cfg: TrainSection) -> bool:
    """Count an evaluation for `train.early_stop`; True once `patience` in a row brought no new best."""
    rule = cfg.early_stop
    if rule is None:
        return False
    if accuracy > state.flat_best + rule.min_delta:
        state.flat_best, state.flat_evals = accuracy, 0
    else:
        state.flat_evals += 1
    return state.flat_evals >= rule.patience


def _nonfinite(norm: torch.Tensor | float | None) -> bool:
    return norm is not None and not math.isfinite(float(norm))  # float(): one device sync per step


def train(
    model: torch.nn.Module,
    train_split: Split,
    val_split: Split,
    cfg: TrainSection,
    seed: int,
    accelerator: Accelerator,
    on_step: Callable[[int, dict], None] | None = None,
    checkpoints: Checkpoints | None = None,
    resume: Path | None = None,
) -> TrainOutcome:
    """Train `model` (its trainable parameters) and keep the selected weights in it. Every process of
    a launch calls this with the same arguments; each takes its part of every global batch.

    Args:
        cfg: `batch_size` is per process; `steps` counts optimizer steps (global batches).
        on_step: called after each log step with (step, {step, loss, lr, grad_norm, examples_per_s,
            tokens_per_s}) and after each evaluation with (step, {step, val_accuracy, ...}), on the main
            process only (loss and throughput over all processes); drives display and records.
        checkpoints: where checkpoints go (`train.checkpoint_every` says when; a SIGINT or SIGTERM
            writes one at the end of the step, then raises `Interrupted`).
        resume: a checkpoint of this very recipe to continue from.

    Returns:
        History, timings, and the evaluation whose weights the model holds on return.

    Raises:
        Diverged: a non-finite loss or gradient norm (the weights of the last checkpoint are good).
        Interrupted: a SIGINT or SIGTERM arrived; the loop stopped after a checkpoint.
    """
    n_proc = accelerator.num_processes
    on_step = on_step if accelerator.is_main_process else None
    steps = total_steps(cfg, len(train_split), n_proc)
    warmup = int(cfg.warmup * steps) if cfg.warmup < 1 else int(cfg.warmup)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        _configure_deepspeed(accelerator, cfg)
    optimizer = make_optimizer(model, cfg)
    scheduler = get_scheduler(cfg.schedule, optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    fast_forward = prepare_model(model, cfg, accelerator.device)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    trainable = {n: p for n, p in accelerator.unwrap_model(model).named_parameters() if p.requires_grad}
    state, best_state = LoopState(), None
    if resume is not None:
        state, best_state = checkpoints.load(resume, trainable)
    batches = _micro_batches(train_split, cfg, seed, accelerator, start=state.micro_batches)
    out = TrainOutcome(
        world_size=n_proc, per_process_batch=cfg.batch_size, global_batch=cfg.batch_size * n_proc * cfg.grad_accum
    )
    out.resumed_from = state.step if resume is not None else None
    device = accelerator.device
    window = _Window(device, state.window)
    tokens = torch.tensor(state.train_tokens, dtype=torch.long, device=device)  # this process's, all steps
    threads = ThreadTuner(cfg.threads if device.type == "cpu" else None)
    max_norm = cfg.clip_grad_norm or math.inf  # inf: measure the norm, scale by exactly 1
    model.train()
    with StopRequests() as stop:
        while state.step < steps:
            step = state.step + 1
            threads.choose(state.step)
            t0, work, norm, bad = time.perf_counter(), 0, None, False
            step_loss, step_examples = torch.zeros((), device=device), 0
            for _ in range(cfg.grad_accum):
                batch, n, n_global = next(batches)
                state.micro_batches += 1
                work += batch["attention_mask"].numel()
                with accelerator.accumulate(model), accelerator.autocast():
                    y = batch.pop("labels")
                    with fast_forward():
                        loss = _loss(model(**batch).float(), y, n, n_global, n_proc)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        norm = accelerator.clip_grad_norm_(model.parameters(), max_norm)
                        bad = _nonfinite(norm)
                        if bad and cfg.nonfinite == "stop":  # before the update: the weights stay good
                            raise Diverged(
                                f"training diverged at step {step}: gradient norm {float(norm)}; "
                                "try a smaller train.lr (or train.nonfinite: skip)"
                            )
                    if not bad:
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                step_loss += loss.detach()
                step_examples += n
                real = batch["attention_mask"][:n].sum()
                tokens += real
                window.sums[1] += real
            if bad:  # train.nonfinite: skip
                state.skipped += 1
                state.skipped_in_a_row += 1
                if state.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW:
                    raise Diverged(
                        f"training diverged by step {step}: {MAX_SKIPPED_IN_A_ROW} steps in a row had a "
                        "non-finite gradient norm; try a smaller train.lr"
                    )
            else:
                state.skipped_in_a_row = 0
                window.loss += step_loss
                window.n += cfg.grad_accum
                if norm is not None:
                    window.sums[2] += float(norm)
                    window.sums[3] += 1
            window.sums[0] += step_examples
            state.train_examples += step_examples
            scheduler.step()  # once per optimizer step, whatever the number of processes
            state.step = step
            elapsed = time.perf_counter() - t0
            state.train_seconds += elapsed
            threads.record(elapsed, work)
            if step % cfg.log_every == 0 or step == steps:  # every process: the sums are reduced over them
                _log(state, window, accelerator, scheduler, on_step)
            evaluated = step % cfg.eval_every == 0 or step == steps
            if evaluated:
                t0 = time.perf_counter()
                metrics = evaluate(model, val_split, cfg, accelerator)
                state.eval_seconds += time.perf_counter() - t0
                window.t0 += time.perf_counter() - t0  # evaluation time is not training throughput
                entry = {
                    "step": step,
                    "val_accuracy": metrics["accuracy"],
                    "val_loss": metrics["loss"],
                    "lr": scheduler.get_last_lr()[0],
                    "train_seconds": round(state.train_seconds, 3),
                }
                state.history.append(entry)
                if on_step is not None:
                    on_step(step, entry)
                # every process holds the same gathered metrics, so all keep the same step's weights
                if cfg.select == "last" or metrics["accuracy"] > state.best_acc:
                    state.best_acc = metrics["accuracy"]
                    best_state = {n: p.detach().clone() for n, p in trainable.items()}
                    state.best = entry
                if _flat(state, metrics["accuracy"], cfg) and step < steps:
                    break  # every process decides alike; a resumed run reaches the same decision
            want = checkpoints is not None and checkpoints.due(step, evaluated)
            stopping = stop.signal_name is not None
            if n_proc > 1:  # every process acts on the same decision (clocks and signals differ)
                flags = accelerator.reduce(torch.tensor([float(want), float(stopping)], device=device), "sum")
                want, stopping = bool(flags[0] > 0), bool(flags[1] > 0)
            if checkpoints is not None and (want or stopping):
                state.window, state.train_tokens = window.dump(), int(tokens)
                saved = checkpoints.save(state, best_state)
            if stopping:
                where = f"checkpoint {saved}" if checkpoints is not None else "no checkpoint"
                raise Interrupted(f"stopped after step {step} of {steps} ({where})", stop.signal_name or "SIGTERM")
    out.steps, out.cap = state.step, steps
    out.stopped = "flat" if state.step < steps else "cap"
    out.history, out.train_log, out.best, out.skipped_steps = state.history, state.train_log, state.best, state.skipped
    out.train_seconds, out.eval_seconds = state.train_seconds, state.eval_seconds
    totals = accelerator.reduce(torch.stack([torch.tensor(state.train_examples, device=device), tokens]), "sum")
    out.train_examples, out.train_tokens = int(totals[0]), int(totals[1])
    out.optimizer_state_bytes = optimizer_state_bytes(optimizer)
    if best_state is not None:
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(best_state[n])
    return out


def _log(state: LoopState, window: _Window, accelerator: Accelerator, scheduler, on_step) -> None:
    """Reduce the window's sums over the processes, check the loss, append a training-log entry."""
    n_proc = accelerator.num_processes
    now = time.perf_counter()
    sums = accelerator.reduce(torch.cat([window.loss.to(window.sums.dtype).reshape(1), window.sums]), "sum").tolist()
    # each process's terms average to the mean (and skipped steps count in none of them)
    mean_loss = sums[0] / (window.n * n_proc) if window.n else None
    if mean_loss is not None and not math.isfinite(mean_loss):  # every process sees the reduced sum
        raise Diverged(f"training diverged by step {state.step} (loss {mean_loss}); try a smaller train.lr")
    seconds = max(now - window.t0, 1e-9)
    entry = {
        "step": state.step,
        "loss": mean_loss,
        "lr": scheduler.get_last_lr()[0],
        "grad_norm": sums[3] / sums[4] if sums[4] else None,  # every process measured the same norms
        "examples_per_s": sums[1] / seconds,
        "tokens_per_s": sums[2] / seconds,
    }
    state.train_log.append(entry)
    if on_step is not None:
        on_step(state.step, entry)
    window.reset(now)
