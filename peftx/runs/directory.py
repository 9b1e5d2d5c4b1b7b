"""Run directories: the lock a run holds, what a new run may do with an existing directory (decided by
the main process, shared with the others: `agree_on_run_dir`), and the replacement that keeps an old run
until the new one has started."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from accelerate import PartialState
from accelerate.utils import broadcast_object_list
from filelock import FileLock, Timeout

from peftx.errors import PeftxError
from peftx.recipe import result_defining
from peftx.runs.record import METRICS, RECIPE, RESULT, WEIGHTS, RunRecord
from peftx.training.checkpoints import checkpoint_step, latest_good_checkpoint

if TYPE_CHECKING:
    from peftx.recipe import RecipeBase


class RunLocked(PeftxError):
    """Another process holds a run directory's lock (a run of the same name is under way)."""


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold `<output.dir>/.<name>.lock` for a run's lifetime: a second run of one name refuses at once
    instead of mixing its files with the first's. The operating system releases the lock of a process
    that dies, however it dies, so a killed run never blocks its own resumption.

    Raises:
        RunLocked: another process holds it.
        PeftxError: the output directory cannot be created or written.
    """
    parent = ensure_output_dir(run_dir.parent)
    lock = FileLock(parent / f".{run_dir.name}.lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunLocked(
            f"{run_dir}: another peftx process is running it now (lock {lock.lock_file}); wait for it, or choose "
            "another --name"
        ) from None
    except OSError as e:
        raise PeftxError(f"{parent}: cannot lock a run here ({e.strerror or e})") from None
    try:
        yield
    finally:
        lock.release()


def ensure_output_dir(path: Path) -> Path:
    """`path` as an existing, writable directory (created if missing).

    Raises:
        PeftxError: it is a file, or cannot be created or written (output.dir named in the message).
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise PeftxError(f"output.dir: {path} is a file, not a directory") from None
    except OSError as e:
        raise PeftxError(f"output.dir: cannot create {path} ({e.strerror or e})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise PeftxError(f"output.dir: {path} is not writable")
    return path


# every name peftx writes into a run directory (a directory holding anything else is not one of its runs)
RUN_FILES = {RESULT, RECIPE, WEIGHTS, METRICS, "metrics.csv", "checkpoints", "tensorboard", "task.json"}

RunDirPlan = Literal["new", "replace", "resume", "completed"]


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.replaced")


def plan_run_dir(path: Path, overwrite: bool = False, resume: bool = False) -> tuple[RunDirPlan, RunRecord | None]:
    """What a new run may do with `path` (read only; call it holding the run's lock).

    Returns:
        ('new', None): nothing there (or an empty directory); ('replace', old): an old run to replace
        (`overwrite`, or a run that failed before training, which blocks nothing); ('resume', old): an
        unfinished run to continue (`resume`); ('completed', old): `resume` of a finished run.

    Raises:
        PeftxError: the path is not a peftx run directory (it is never touched), or holds a run that
            neither `overwrite` nor `resume` allows to touch.
    """
    if not path.exists() and _aside(path).is_dir():  # a replacement cut short: the old run comes back
        os.replace(_aside(path), path)
    if not path.exists() and not path.is_symlink():
        return "new", None
    if not path.is_dir() or path.is_symlink():
        raise PeftxError(f"{path}: exists and is not a run directory; refusing to touch it")
    if not any(path.iterdir()):
        return "new", None
    try:
        record = RunRecord.read(path)
    except PeftxError:
        if not all(p.name in RUN_FILES or p.name.startswith(".") for p in path.iterdir()):
            raise PeftxError(
                f"{path}: exists and is not a peftx run directory (no readable {RESULT}); refusing to touch it"
            ) from None
        if overwrite or resume:  # peftx's own files, its record lost: nothing to continue from
            return "replace", None
        raise PeftxError(f"{path}: a run of this name lost its {RESULT}; pass --overwrite to start it again") from None
    if resume:
        return ("completed" if record.completed else "resume"), record
    if overwrite:
        return "replace", record
    untrained = record.status == "failed" and not record.history and not record.train_log
    if untrained and not (path / "checkpoints").exists():
        return "replace", record
    if record.completed:
        raise PeftxError(
            f"{path}: a completed run of this name exists; pass --overwrite or choose --name / output.name"
        )
    raise PeftxError(
        f"{path}: an unfinished run of this name exists ({record.status}); continue it with --resume, or start "
        "again with --overwrite"
    )


@contextmanager
def fresh_run_dir(path: Path) -> Iterator[Path]:
    """Make `path` an empty run directory for the body to fill. An old run there is moved aside first,
    put back if the body raises, and removed once it returns: a run is replaced only by one that has
    started. Call it holding the run's lock."""
    aside = _aside(path)
    if path.exists():
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(path, aside)
    try:
        path.mkdir(parents=True)
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        if aside.exists():
            os.replace(aside, path)
        raise
    shutil.rmtree(aside, ignore_errors=True)


@dataclass(frozen=True)
class RunDirDecision:
    """What a run does with its directory, as the main process decided it (holding the run's lock).

    Attributes:
        plan: 'new', 'replace', 'resume' or 'completed' (`plan_run_dir`); None where `error` is set.
        checkpoint: the checkpoint a resumed run continues from.
        step: that checkpoint's step.
        error: why the run may not start (the main process's one-line error, for the other processes).
        note: a newer checkpoint passed over as damaged, to show the user.
        allow_inexact: a resumed run may go on with fresh random states where its checkpoint has none
            (`--allow-inexact`): it is then no longer bit-identical to the run it continues.
        allow_changed_weights: a resumed run may go on over backbone weights whose sha256 differs from
            the recorded one (`--allow-changed-weights`).
    """

    plan: RunDirPlan | None = None
    checkpoint: Path | None = None
    step: int | None = None
    error: str | None = None
    note: str | None = None
    allow_inexact: bool = False
    allow_changed_weights: bool = False


def first_difference(a: dict, b: dict, prefix: str = "") -> str | None:
    """The first dotted key whose value differs between two recipes (as plain data), or None."""
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            found = first_difference(va, vb, f"{prefix}{key}.")
            if found:
                return found
        elif va != vb:
            return f"{prefix}{key} ({json.dumps(va)} in the run, {json.dumps(vb)} now)"
    return None


def decide_run_dir(run_dir: Path, recipe: RecipeBase, overwrite: bool, resume: bool) -> RunDirDecision:
    """The main process's reading of the run directory (call it holding the run's lock).

    Returns:
        The plan, and for 'resume' the checkpoint to continue from (a run stopped before its first
        checkpoint has nothing to keep: it is replaced).

    Raises:
        PeftxError: the directory may not be used (`plan_run_dir`), or a resumed run's recipe differs
            from this one in a result-defining field (named in the message).
    """
    plan, old = plan_run_dir(run_dir, overwrite, resume)
    if plan != "resume":
        return RunDirDecision(plan=plan)
    differs = first_difference(result_defining(old.recipe), result_defining(recipe.to_dict()))
    if differs:
        raise PeftxError(f"{run_dir}: cannot resume with another recipe: {differs}; use --overwrite to start again")
    ckpt, damaged = latest_good_checkpoint(run_dir)
    if ckpt is None and damaged:
        raise PeftxError(f"{damaged[0]}; no intact checkpoint to resume from: use --overwrite to start again")
    if ckpt is None:
        return RunDirDecision(plan="replace")
    note = f"passed over a damaged checkpoint: {damaged[0]}" if damaged else None
    return RunDirDecision(plan="resume", checkpoint=ckpt, step=checkpoint_step(ckpt), note=note)


def agree_on_run_dir(
    stack: ExitStack, run_dir: Path, recipe: RecipeBase, overwrite: bool, resume: bool, launch: PartialState
) -> RunDirDecision:
    """Every process's decision about the run directory: the main process takes the run's lock (held
    until `stack` closes) and decides; the others receive its decision, so that none waits for a run
    that will not start.

    Raises:
        PeftxError: the main process's decision was an error (on one process: the error itself, e.g.
            `RunLocked`; on several: its message, on every process).
    """
    decision = RunDirDecision()
    if launch.is_main_process:
        try:
            stack.enter_context(run_lock(run_dir))
            decision = decide_run_dir(run_dir, recipe, overwrite, resume)
        except PeftxError as e:
            if launch.num_processes == 1:
                raise
            decision = RunDirDecision(error=str(e))
    if launch.num_processes > 1:
        shared = [decision]
        broadcast_object_list(shared)
        decision = shared[0]
    if decision.error:
        raise PeftxError(decision.error)
    return decision
