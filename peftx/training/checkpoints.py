"""Checkpoints of the training loop, and the signals that ask it to stop at a step's end.

A checkpoint holds everything an exact continuation needs, so that a resumed run ends with the very
history, weights and metrics of an uninterrupted one:

runs/<name>/checkpoints/step-000120/
  model.safetensors, optimizer.bin, scheduler.bin, random_states_<rank>.pkl
                     accelerate's `save_state`: the trained parameters (only those: the frozen body is
                     rebuilt from its source), optimizer and schedule, every process's Python, NumPy,
                     torch (and CUDA) random states
  loop.json          the loop's own state: step, micro-batches drawn, history, training log, best
  loop_rank<r>.json  each process's running sums since the last log step
  best.safetensors   the weights of the best evaluation so far (what `select: best` returns)
  digests.json       every other file's sha256, written last

A checkpoint is written under a temporary name, synced, and renamed: a directory named `step-*` is
complete. The newest checkpoint and the one of the best evaluation are kept; older ones are removed. A
resumed run checks the digests and continues from the newest checkpoint whose files still match them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from peftx.errors import Interrupted, PeftxError
from peftx.training.points import EvalPoint, TrainPoint

CHECKPOINTS = "checkpoints"
DIGESTS = "digests.json"
AUTO_SECONDS = 300.0  # `checkpoint_every: auto` writes at least this often (and at every evaluation)
_STEP_DIR = re.compile(r"step-(\d+)")


@dataclass
class LoopState:
    """What the loop carries from step to step, besides weights, optimizer and random states.

    `window` holds this process's running sums since the last log step (loss, examples, tokens,
    gradient norms); the rest is the same on every process.
    """

    step: int = 0
    micro_batches: int = 0  # drawn from the training stream so far (the data order position)
    history: list[EvalPoint] = field(default_factory=list)  # one entry per evaluation
    train_log: list[TrainPoint] = field(default_factory=list)  # one entry per log step
    best: EvalPoint | None = None  # the evaluation whose weights `best.safetensors` holds
    best_acc: float = -math.inf  # the best score (`Objective.score`: the primary metric, higher is better)
    skipped: int = 0  # steps skipped for a non-finite gradient norm (train.nonfinite: skip)
    skipped_in_a_row: int = 0
    flat_evals: int = 0  # evaluations in a row without a new best (train.early_stop)
    flat_best: float = -math.inf  # the best score train.early_stop measures against
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    train_examples: int = 0  # this process's
    train_tokens: int = 0  # this process's
    window: dict = field(default_factory=dict)

    OWN = ("train_examples", "train_tokens", "window")  # per process: loop_rank<r>.json

    def shared(self) -> dict[str, Any]:
        """What every process holds alike, as plain data (loop.json)."""
        out = {k: v for k, v in vars(self).items() if k not in self.OWN}
        out["history"] = [p.model_dump() for p in self.history]
        out["train_log"] = [p.model_dump() for p in self.train_log]
        out["best"] = self.best.model_dump() if self.best is not None else None
        return out

    def own(self) -> dict[str, Any]:
        """This process's part, as plain data (loop_rank<r>.json)."""
        return {k: getattr(self, k) for k in self.OWN}

    @classmethod
    def from_saved(cls, shared: dict[str, Any], own: dict[str, Any]) -> LoopState:
        """The state `shared` and `own` were written from."""
        typed = {
            "history": [EvalPoint.model_validate(p) for p in shared["history"]],
            "train_log": [TrainPoint.model_validate(p) for p in shared["train_log"]],
            "best": EvalPoint.model_validate(shared["best"]) if shared["best"] is not None else None,
        }
        return cls(**(shared | typed), **own)


def checkpoint_step(path: Path) -> int:
    return int(_STEP_DIR.fullmatch(path.name).group(1))


def list_checkpoints(run_dir: Path) -> list[Path]:
    """The complete checkpoints of a run directory, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and _STEP_DIR.fullmatch(p.name)), key=checkpoint_step)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_digests(directory: Path) -> None:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.name != DIGESTS)
    digests = {str(p.relative_to(directory)): _sha256(p) for p in files}
    (directory / DIGESTS).write_text(json.dumps(digests, indent=1))


def damage(path: Path) -> str | None:
    """What is wrong with a checkpoint's files against the digests written beside them (None: nothing,
    or a checkpoint written without digests, which cannot be checked)."""
    try:
        digests = json.loads((path / DIGESTS).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return f"{DIGESTS} is unreadable"
    for name, want in digests.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if _sha256(file) != want:
            return f"{name} does not match its sha256 (damaged after it was written)"
    return None


def latest_good_checkpoint(run_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint whose files match their digests, and one line for each newer one that does
    not (naming it and what is wrong)."""
    damaged = []
    for path in reversed(list_checkpoints(run_dir)):
        problem = damage(path)
        if problem is None:
            return path, damaged
        damaged.append(f"{path}: {problem}")
    return None, damaged


def read_progress(path: Path) -> tuple[list[EvalPoint], list[TrainPoint]]:
    """A checkpoint's (history, training log): what the run had recorded when it was written.

    Raises:
        PeftxError: the checkpoint's loop.json cannot be read.
    """
    try:
        shared = json.loads((Path(path) / "loop.json").read_text())
    except (OSError, ValueError) as e:
        raise PeftxError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    history = [EvalPoint.model_validate(p) for p in shared["history"]]
    return history, [TrainPoint.model_validate(p) for p in shared["train_log"]]


def _fsync_tree(path: Path) -> None:
    for p in sorted(path.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpoints:
    """Writes and reads one run's checkpoints through accelerate's `save_state` / `load_state`.

    Every process calls `save` and `load` (each saves and restores its own random states); the main
    process writes the shared files and renames the finished directory.

    Args:
        run_dir: the run directory (checkpoints go to its `checkpoints/`).
        every: steps between checkpoints, 'auto' (every evaluation, and at least every
            `AUTO_SECONDS`), or None (only `save` calls the caller makes on request).
    """

    def __init__(
        self, run_dir: Path, accelerator: Accelerator, every: int | str | None, allow_inexact: bool = False
    ) -> None:
        self.root = Path(run_dir) / CHECKPOINTS
        self.accelerator = accelerator
        self.every = every
        self.allow_inexact = allow_inexact  # go on with fresh random states where a checkpoint has none
        self._last_save = time.monotonic()
        self._handle = accelerator.register_save_state_pre_hook(_only_trained_weights)

    def due(self, step: int, evaluated: bool) -> bool:
        """Whether `step` (just finished) should be checkpointed (this process's view; the loop agrees
        across processes before acting on it)."""
        if self.every is None:
            return False
        if self.every == "auto":
            return evaluated or time.monotonic() - self._last_save >= AUTO_SECONDS
        return step % self.every == 0

    def save(self, state: LoopState, best_state: dict[str, torch.Tensor] | None) -> Path:
        """Write a checkpoint of the loop as it stands after `state.step`; returns its directory."""
        acc = self.accelerator
        final = self.root / f"step-{state.step:06d}"
        tmp = self.root / f".step-{state.step:06d}.tmp"
        if acc.is_main_process:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        try:
            self._write(tmp, state, best_state)
        except OSError:  # a full disk: the half-written checkpoint goes, the previous ones stay
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if acc.is_main_process:
            if final.exists():  # the same step written again (a resumed run's first save)
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.root)
            self._prune(keep={final.name, *self._best_names(state)})
        acc.wait_for_everyone()
        self._last_save = time.monotonic()
        return final

    def _write(self, tmp: Path, state: LoopState, best_state: dict[str, torch.Tensor] | None) -> None:
        """Every file of a checkpoint into `tmp`, digests last, synced."""
        acc = self.accelerator
        acc.save_state(str(tmp))
        (tmp / f"loop_rank{acc.process_index}.json").write_text(json.dumps(state.own()))
        if acc.is_main_process:
            (tmp / "loop.json").write_text(json.dumps(state.shared(), indent=1))
            if best_state is not None:
                save_file(
                    {n: t.detach().cpu().contiguous() for n, t in best_state.items()}, str(tmp / "best.safetensors")
                )
        acc.wait_for_everyone()
        if acc.is_main_process:
            _write_digests(tmp)
            _fsync_tree(tmp)

    def _best_names(self, state: LoopState) -> set[str]:
        return {f"step-{state.best.step:06d}"} if state.best else set()

    def _prune(self, keep: set[str]) -> None:
        for path in list_checkpoints(self.root.parent):
            if path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)

    def load(self, path: Path, trainable: dict[str, torch.Tensor]) -> tuple[LoopState, dict[str, torch.Tensor] | None]:
        """Restore a checkpoint into the prepared model, optimizer and schedule (and every process's
        random states); returns the loop state and the best weights so far.

        Raises:
            PeftxError: the checkpoint is incomplete or does not fit this run, or its random states are
                missing or unreadable (unless `allow_inexact`).
        """
        acc = self.accelerator
        try:
            shared = json.loads((path / "loop.json").read_text())
            own = json.loads((path / f"loop_rank{acc.process_index}.json").read_text())
        except (OSError, ValueError) as e:
            raise PeftxError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
        self._check_random_states(path)
        saved = {k.removeprefix("module.") for k in load_file(str(path / "model.safetensors"))}  # DDP's wrapper
        missing = sorted(n for n in trainable if n not in saved)
        if missing:
            raise PeftxError(f"{path}: lacks trained tensor {missing[0]} of this model; was it made by another recipe?")
        acc.load_state(str(path), strict=False)
        best_file = path / "best.safetensors"
        best_state = load_file(str(best_file)) if best_file.is_file() else None
        return LoopState.from_saved(shared, own), best_state

    def _check_random_states(self, path: Path) -> None:
        """accelerate's `load_state` goes on with fresh random states when it cannot read the saved ones
        (saying so only at INFO level), which silently ends the bit-identical continuation: read them
        first, and refuse unless the user accepted an inexact resume."""
        acc = self.accelerator
        problem = _random_states_problem(path / f"random_states_{acc.process_index}.pkl", acc.num_processes)
        if problem is None:
            return
        if not self.allow_inexact:
            raise PeftxError(
                f"{path}: {problem}; --resume --allow-inexact continues with fresh random states "
                "(no longer bit-identical to an uninterrupted run)"
            )
        warnings.warn(f"{path}: {problem}; resuming with fresh random states (--allow-inexact)", stacklevel=2)

    def close(self) -> None:
        self._handle.remove()


def _random_states_problem(file: Path, processes: int) -> str | None:
    """Why a process's saved random states cannot be restored, or None when they can."""
    if not file.is_file():
        return f"has no {file.name} (written by fewer processes than this launch's {processes}, or deleted)"
    try:
        states = torch.load(file, weights_only=False)  # peftx's own pickle, its digest already checked
    except Exception as e:  # noqa: BLE001 - whatever unpickling raises, the states are unusable
        return f"{file.name} is unreadable ({type(e).__name__})"
    keys = set(states) if isinstance(states, dict) else set()
    missing = {"random_state", "numpy_random_seed", "torch_manual_seed"} - keys
    return f"{file.name} lacks {sorted(missing)}" if missing else None


def _only_trained_weights(models: list[torch.nn.Module], weights: list[dict], output_dir: str) -> None:
    """accelerate's save-state hook: keep the trained parameters of each model's state dict. The frozen
    body is rebuilt from its source on resume; writing it at every checkpoint would cost the whole model's
    size on disk, each time."""
    for i, model in enumerate(models):
        if i < len(weights):
            keep = {n for n, p in model.named_parameters() if p.requires_grad}
            weights[i] = {k: v for k, v in weights[i].items() if k in keep}


class StopRequests:
    """SIGINT and SIGTERM (what `timeout`, Slurm and `docker stop` send) while the loop runs: note the
    request so that the loop stops at the end of its step, after a checkpoint. A second SIGINT stops at
    once. Outside the main thread (where Python delivers no signals) it does nothing."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, frame) -> None:
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises `Interrupted` (as SIGINT raises KeyboardInterrupt) while the body runs, so that a
    run stopped outside its training loop (loading, testing) is recorded as interrupted rather than left
    'running'. Inside the loop `StopRequests` takes over and stops at a step's end instead."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted("stopped by SIGTERM", "SIGTERM")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
