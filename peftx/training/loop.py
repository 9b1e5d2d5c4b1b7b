"""The one training loop, on accelerate: AdamW, warm-up and decay, clipping, periodic evaluation,
best-checkpoint selection on the objective's primary validation metric.

`Trainer(TrainJob(...)).run()` trains; `Trainer.step()` is one optimizer step of that same loop, for
benchmarks that time steps one by one. The loop reports a `TrainPoint` at every log step and an
`EvalPoint` at every evaluation (`peftx.training.points`).

With N processes, each optimizer step takes one global batch, shared among them as
`peftx.training.global_batch` describes, and one step of the learning-rate schedule. Evaluation gives
each process its own length-sorted batches (`eval_shard`) and gathers every example's logits exactly once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from transformers import get_scheduler

from peftx.errors import Diverged, Interrupted, PeftxError
from peftx.model.memory import enable_gradient_checkpointing, memory_for_log
from peftx.training.checkpoints import LoopState, StopRequests
from peftx.training.evaluation import evaluate
from peftx.training.global_batch import loss_term, micro_batches
from peftx.training.job import StepResult, TrainJob, TrainOutcome
from peftx.training.optimizers import make_optimizer, optimizer_state_bytes
from peftx.training.points import EvalPoint, OnPoint, TrainPoint
from peftx.training.speed import ThreadTuner, prepare_model, trim_heap

if TYPE_CHECKING:
    from peftx.recipe import TrainSection


def total_steps(cfg: TrainSection, n_train: int, num_processes: int = 1) -> int:
    """Optimizer steps of a run: `train.steps`, or `train.epochs` of global batches (every process's
    batch_size x grad_accum examples per step)."""
    if cfg.steps is not None:
        return cfg.steps
    per_epoch = math.ceil(n_train / (cfg.batch_size * cfg.grad_accum * num_processes))
    return max(1, math.ceil(cfg.epochs * per_epoch))


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


def _flat(state: LoopState, score: float, cfg: TrainSection) -> bool:
    """Count an evaluation for `train.early_stop` (`score`: the primary metric, higher is better); True
    once `patience` in a row brought no new best."""
    rule = cfg.early_stop
    if rule is None:
        return False
    if score > state.flat_best + rule.min_delta:
        state.flat_best, state.flat_evals = score, 0
    else:
        state.flat_evals += 1
    return state.flat_evals >= rule.patience


def _nonfinite(norm: torch.Tensor | float | None) -> bool:
    return norm is not None and not math.isfinite(float(norm))  # float(): one device sync per step


DropoutContext = Callable[[], AbstractContextManager]  # what `prepare_model` returns


def _prepare(job: TrainJob, steps: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, object, DropoutContext]:
    """The optimizer and learning-rate schedule for `steps` optimizer steps, the speed options, and all of
    it prepared by the accelerator: (model, optimizer, scheduler, the context each training forward runs in).
    """
    cfg, accelerator, model = job.config, job.accelerator, job.model
    warmup = int(cfg.warmup * steps) if cfg.warmup < 1 else int(cfg.warmup)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        _configure_deepspeed(accelerator, cfg)
    optimizer = make_optimizer(model, cfg)
    scheduler = get_scheduler(cfg.schedule, optimizer, num_warmup_steps=warmup, num_training_steps=steps)
    dropout_context = prepare_model(model, cfg, accelerator.device)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return model, optimizer, scheduler, dropout_context


class Trainer:
    """The one training loop over a `TrainJob`.

    `run()` trains to the end: optimizer steps, a `TrainPoint` every `train.log_every` steps, an
    evaluation (`EvalPoint`) every `train.eval_every`, checkpoints, `train.early_stop`, and at the end
    the selected weights back in the model. `step()` is one optimizer step exactly as `run()` takes it,
    for benchmarks that time steps one by one:

        trainer = Trainer(TrainJob(model, train_split, val_split, recipe.train, recipe.seed, accelerator))
        for _ in range(10):
            trainer.step()

    Constructing it prepares the model, optimizer and schedule with the accelerator and restores
    `job.resume`; every process of a launch constructs it and calls the same methods in the same order
    (log steps, evaluations and checkpoints reduce over the processes).
    """

    def __init__(self, job: TrainJob) -> None:
        self.job = job
        cfg, accelerator = job.config, job.accelerator
        self.steps = total_steps(cfg, len(job.train_split), accelerator.num_processes)
        self.model, self.optimizer, self.scheduler, self._dropout_context = _prepare(job, self.steps)
        self.trainable = {n: p for n, p in accelerator.unwrap_model(self.model).named_parameters() if p.requires_grad}
        self.state, self._best_weights = LoopState(), None
        if job.resume is not None:
            self.state, self._best_weights = job.checkpoints.load(job.resume, self.trainable)
        self.resumed_from = self.state.step if job.resume is not None else None
        self._batches = micro_batches(job.train_split, cfg, job.seed, accelerator, start=self.state.micro_batches)
        device = accelerator.device
        self._window = _Window(device, self.state.window)
        self._tokens = torch.tensor(self.state.train_tokens, dtype=torch.long, device=device)  # this process's
        self._threads = ThreadTuner(cfg.threads if device.type == "cpu" else None)
        self._max_norm = cfg.clip_grad_norm or math.inf  # inf: measure the norm, scale by exactly 1
        self.model.train()

    def run(self, on_point: OnPoint | None = None) -> TrainOutcome:
        """Train to the last step (or until `train.early_stop`); the model keeps the selected weights.

        Args:
            on_point: called with each `TrainPoint` (loss and throughput over all processes) and each
                `EvalPoint`, on the main process only; drives display and records.

        Returns:
            The points, timings, counts, and the evaluation whose weights the model holds on return.

        Raises:
            Diverged: a non-finite loss or gradient norm (the weights of the last checkpoint are good).
            Interrupted: a SIGINT or SIGTERM arrived; the loop stopped after a checkpoint.
        """
        report = on_point if self.job.accelerator.is_main_process else None
        with StopRequests() as stop:
            while self.state.step < self.steps:
                self.step()
                self.maybe_log(report)
                point = self.maybe_evaluate(report)
                score = None if point is None else self.job.val_split.objective.score(point.val_metrics)
                flat = score is not None and _flat(self.state, score, self.job.config)
                if flat and self.state.step < self.steps:
                    break  # every process decides alike; a resumed run reaches the same decision
                self.maybe_checkpoint(evaluated=point is not None, stop=stop)
        return self.finish()

    def step(self) -> StepResult:
        """One optimizer step of the training stream, as `run` takes it: `train.grad_accum`
        micro-batches forward and backward, clipping, the update (skipped under `train.nonfinite: skip`
        for a non-finite gradient norm), one step of the learning-rate schedule, and the running sums
        the next `TrainPoint` reports.

        Returns:
            The step's number, loss terms, gradient norm and wall time.

        Raises:
            Diverged: a non-finite gradient norm under `train.nonfinite: stop` (before the update), or
                `MAX_SKIPPED_IN_A_ROW` skipped steps in a row.
        """
        cfg, state = self.job.config, self.state
        step = state.step + 1
        self._threads.choose(state.step)
        t0, work, norm, bad = time.perf_counter(), 0, None, False
        step_loss, step_examples = torch.zeros((), device=self.job.accelerator.device), 0
        for _ in range(cfg.grad_accum):
            batch, n, n_global = next(self._batches)
            state.micro_batches += 1
            work += batch["attention_mask"].numel()
            loss, synced_norm, bad = self._micro_step(batch, n, n_global, step, bad)
            norm = synced_norm if synced_norm is not None else norm
            step_loss += loss
            step_examples += n
            real = batch["attention_mask"][:n].sum()
            self._tokens += real
            self._window.sums[1] += real
        self._account(step, step_loss, step_examples, norm, bad)
        self.scheduler.step()  # once per optimizer step, whatever the number of processes
        trim_heap()  # the lean allocator's free heap pages, back to the OS before the next step's peak
        state.step = step
        elapsed = time.perf_counter() - t0
        state.train_seconds += elapsed
        self._threads.record(elapsed, work)
        return StepResult(step=step, loss=step_loss, grad_norm=norm, skipped=bad, seconds=elapsed)

    def _micro_step(
        self, batch: dict, n: int, n_global: int, step: int, bad: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
        """Forward and backward of one micro-batch; on the accumulation's last one, clipping and the
        update. Returns (its loss term, the gradient norm if it was measured here, whether it is bad)."""
        accelerator, norm = self.job.accelerator, None
        with accelerator.accumulate(self.model), accelerator.autocast():
            y = batch.pop("labels")
            with self._dropout_context():
                outputs = self.model(**batch).float()
                loss = loss_term(outputs, y, n, n_global, accelerator.num_processes, self.job.train_split.objective)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                norm = accelerator.clip_grad_norm_(self.model.parameters(), self._max_norm)
                bad = _nonfinite(norm)
                if bad and self.job.config.nonfinite == "stop":  # before the update: the weights stay good
                    raise Diverged(
                        f"training diverged at step {step}: gradient norm {float(norm)}; "
                        "try a smaller train.lr (or train.nonfinite: skip)"
                    )
            if not bad:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss.detach(), norm, bad

    def _account(self, step: int, loss: torch.Tensor, examples: int, norm: torch.Tensor | None, bad: bool) -> None:
        """Add a finished step to the skip count and the window's sums (a skipped step's loss and norm
        count in none of them)."""
        state, window = self.state, self._window
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
            window.loss += loss
            window.n += self.job.config.grad_accum
            if norm is not None:
                window.sums[2] += float(norm)
                window.sums[3] += 1
        window.sums[0] += examples
        state.train_examples += examples

    def maybe_log(self, report: OnPoint | None = None) -> TrainPoint | None:
        """At a log step (and the last step): reduce the window's sums over the processes, check the
        loss, append a `TrainPoint` to the training log and report it. Every process calls it.

        Raises:
            Diverged: the window's mean loss is not finite.
        """
        step = self.state.step
        if step % self.job.config.log_every and step != self.steps:
            return None
        window, n_proc = self._window, self.job.accelerator.num_processes
        now = time.perf_counter()
        loss_and_sums = torch.cat([window.loss.to(window.sums.dtype).reshape(1), window.sums])
        sums = self.job.accelerator.reduce(loss_and_sums, "sum").tolist()  # loss, examples, tokens, norms, count
        # each process's terms average to the mean (and skipped steps count in none of them)
        mean_loss = sums[0] / (window.n * n_proc) if window.n else None
        if mean_loss is not None and not math.isfinite(mean_loss):  # every process sees the reduced sum
            raise Diverged(f"training diverged by step {step} (loss {mean_loss}); try a smaller train.lr")
        seconds = max(now - window.t0, 1e-9)
        point = TrainPoint(
            step=step,
            loss=mean_loss,
            lr=self.scheduler.get_last_lr()[0],
            grad_norm=sums[3] / sums[4] if sums[4] else None,  # every process measured the same norms
            examples_per_s=sums[1] / seconds,
            tokens_per_s=sums[2] / seconds,
            **memory_for_log(),
        )
        self.state.train_log.append(point)
        if report is not None:
            report(point)
        window.reset(now)
        return point

    def maybe_evaluate(self, report: OnPoint | None = None) -> EvalPoint | None:
        """At an evaluation step (and the last step): score the validation split, append an `EvalPoint`
        to the history, report it, and keep these weights if `train.select` picks them. Every process
        calls it."""
        cfg, state, step = self.job.config, self.state, self.state.step
        if step % cfg.eval_every and step != self.steps:
            return None
        t0 = time.perf_counter()
        metrics = evaluate(self.model, self.job.val_split, cfg, self.job.accelerator)
        state.eval_seconds += time.perf_counter() - t0
        self._window.t0 += time.perf_counter() - t0  # evaluation time is not training throughput
        point = EvalPoint(
            step=step,
            val_accuracy=metrics.get("accuracy"),
            val_loss=metrics["loss"],
            lr=self.scheduler.get_last_lr()[0],
            train_seconds=round(state.train_seconds, 3),
            val_metrics={k: v for k, v in metrics.items() if k != "loss"},
        )
        state.history.append(point)
        if report is not None:
            report(point)
        # every process holds the same gathered metrics, so all keep the same step's weights
        score = self.job.val_split.objective.score(metrics)
        if cfg.select == "last" or score > state.best_acc:
            state.best_acc = score
            self._best_weights = {n: p.detach().clone() for n, p in self.trainable.items()}
            state.best = point
        return point

    def maybe_checkpoint(self, evaluated: bool, stop: StopRequests | None = None) -> Path | None:
        """Write a checkpoint when `job.checkpoints` says one is due, or a stop was requested; all
        processes act on one decision (their clocks and signals differ). Every process calls it.

        Returns:
            The checkpoint written, if any.

        Raises:
            Interrupted: a stop was requested (after the checkpoint, if the job has checkpoints).
        """
        accelerator, checkpoints, step = self.job.accelerator, self.job.checkpoints, self.state.step
        want = checkpoints is not None and checkpoints.due(step, evaluated)
        stopping = stop is not None and stop.signal_name is not None
        if accelerator.num_processes > 1:
            flags = torch.tensor([float(want), float(stopping)], device=accelerator.device)
            flags = accelerator.reduce(flags, "sum")
            want, stopping = bool(flags[0] > 0), bool(flags[1] > 0)
        saved = None
        if checkpoints is not None and (want or stopping):
            self.state.window, self.state.train_tokens = self._window.dump(), int(self._tokens)
            saved = checkpoints.save(self.state, self._best_weights)
        if stopping:
            where = f"checkpoint {saved}" if saved is not None else "no checkpoint"
            signal_name = stop.signal_name or "SIGTERM"
            raise Interrupted(f"stopped after step {step} of {self.steps} ({where})", signal_name)
        return saved

    def finish(self) -> TrainOutcome:
        """Put the selected weights into the model; the outcome, counts summed over the processes.
        Every process calls it."""
        state, cfg, accelerator = self.state, self.job.config, self.job.accelerator
        n_proc = accelerator.num_processes
        counts = torch.stack([torch.tensor(state.train_examples, device=accelerator.device), self._tokens])
        totals = accelerator.reduce(counts, "sum")
        if self._best_weights is not None:
            with torch.no_grad():
                for n, p in self.trainable.items():
                    p.copy_(self._best_weights[n])
        return TrainOutcome(
            history=state.history,
            train_log=state.train_log,
            best=state.best,
            skipped_steps=state.skipped,
            resumed_from=self.resumed_from,
            steps=state.step,
            cap=self.steps,
            stopped="flat" if state.step < self.steps else "cap",
            train_seconds=state.train_seconds,
            eval_seconds=state.eval_seconds,
            train_examples=int(totals[0]),
            train_tokens=int(totals[1]),
            optimizer_state_bytes=optimizer_state_bytes(self.optimizer),
            world_size=n_proc,
            per_process_batch=cfg.batch_size,
            global_batch=cfg.batch_size * n_proc * cfg.grad_accum,
        )


def train(job: TrainJob, on_point: OnPoint | None = None) -> TrainOutcome:
    """Train `job.model` and keep the selected weights in it: `Trainer(job).run(on_point)` (its Args,
    Returns and Raises)."""
    return Trainer(job).run(on_point)
