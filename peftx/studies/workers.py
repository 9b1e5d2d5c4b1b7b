"""`peftx sweep --workers N`: N worker processes on one machine sharing the sweeps' studies, bounded by
the points left and the memory available, a worker's death by a signal named in one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import torch

from peftx.runs.validate import check_recipes
from peftx.studies.study_storage import HEARTBEAT_SECONDS
from peftx.studies.sweep_state import Point, point_state


def run_workers(
    recipes: list[Path],
    overrides: list[str],
    workers: int,
    points: list[Point],
    log=print,
    storage: str | None = None,
    heartbeat: int = HEARTBEAT_SECONDS,
) -> int:
    """`peftx sweep R... --workers N`: N worker processes on the sweeps' studies (each a plain `peftx
    sweep R...`, its index in `PEFTX_SWEEP_WORKER`).

    N is capped by the points left to run (a worker with no point would only hold memory) and by the
    memory available now (`memory_cap`), and a cap is said in one line. On a machine with at least N
    GPUs each worker sees one (`CUDA_VISIBLE_DEVICES`); on CPUs each gets an equal share of the cores.
    SIGINT and SIGTERM are passed on to every worker (each checkpoints its point). A worker killed by a
    signal is named in one line; the others resume its point.

    Args:
        points: the grids' points (`load_sweeps`), to count those left.
        log: one-line messages.
        storage, heartbeat: passed on to each worker (`run_sweep`).

    Returns:
        The largest exit code of the workers, a worker killed by signal N counting as 128 + N (137 for
        SIGKILL), as a shell reports it.
    """
    workers = _capped(workers, points, log)
    command = [sys.executable, "-m", "peftx", "sweep", *map(str, recipes), "--quiet"]
    for item in overrides:
        command += ["--set", item]
    command += ["--heartbeat", str(heartbeat)] + (["--storage", storage] if storage else [])
    gpus = torch.cuda.device_count()
    procs = []
    for i in range(workers):
        env = dict(os.environ, PEFTX_SWEEP_WORKER=str(i))
        if gpus >= workers:
            env["CUDA_VISIBLE_DEVICES"] = str(i)
        elif gpus == 0:
            env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // workers)))
        procs.append(subprocess.Popen(command, env=env))

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes = [p.wait() for p in procs]
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for i, (p, code) in enumerate(zip(procs, codes), start=1):
        if code < 0:  # Popen's way of saying "killed by signal -code"
            name = _signal_name(-code)
            log(f"worker {i} of {workers} (pid {p.pid}) was killed by {name}; its point resumes in the next worker")
    return max(128 - code if code < 0 else code for code in codes)


# What one run's process holds beyond its model state: torch and its libraries, the data, activations,
# allocator slack. Measured: a MiniLM LoRA run on ListOps' `cpu` preset peaks at 2.1-2.8 GB of resident
# memory with 0.1 GB of weights, gradients and optimizer state (docs/speed.md, scripts/bench_memory.py).
WORKER_OVERHEAD_BYTES = 2 << 30


def _capped(workers: int, points: list[Point], log) -> int:
    """`workers` capped by the points left to run, then by the memory available (each cap said)."""
    left = sum(_left(p) for p in points)
    if workers > max(left, 1):
        log(f"--workers {workers}: {left} point(s) left to run, starting {max(left, 1)} worker(s)")
        workers = max(left, 1)
    if workers > 1:
        fits, why = memory_cap(points)
        if workers > fits:
            log(f"--workers {workers}: memory for {fits} worker(s) here ({why}), starting {fits}")
            workers = fits
    return workers


def _worker_bytes(points: list[Point]) -> int:
    """Memory one worker may need: the largest model state of the points left (`check_recipes`, on the
    meta device) twice over (the state, and the body's activations scaling with it) plus the overhead."""
    recipes = [p.recipe for p in points if _left(p)] or [p.recipe for p in points]
    state = max(c.memory_bytes for c in check_recipes(recipes, "sweep"))
    return WORKER_OVERHEAD_BYTES + 2 * state


def memory_cap(points: list[Point]) -> tuple[int, str]:
    """Workers whose estimated memory (`_worker_bytes`) fits in the memory available now (at least 1),
    and the numbers behind it, for the message."""
    per, have = _worker_bytes(points), psutil.virtual_memory().available
    return max(1, have // per), f"about {per / 2**30:.1f} GiB each, {have / 2**30:.1f} GiB available"


def _left(point: Point) -> int:
    """Runs a point still holds: a search's trials, or one unless it is finished."""
    sweep = getattr(point, "sweep", None)
    if sweep is not None and sweep.search is not None:
        return sweep.search.trials
    return int(point_state(point) not in ("done", "diverged", "pruned"))


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
