"""`train.threads: auto`: one thread or one per core, whichever is faster right now."""

from __future__ import annotations

import statistics

import torch

__all__ = ["ThreadTuner"]


class ThreadTuner:
    """`threads: auto`: pick the faster of all cores or one thread, and check again now and then.

    On a machine shared with other jobs, one thread can beat a thread per core: each multithreaded op
    waits for its slowest thread, and another job may have preempted it. From step 1 on (step 0 pays
    one-time costs), every `every` steps the loop runs `probe` steps with each candidate, then keeps
    the one with less time per padded token (median). Any other `threads` setting (a number, or None
    for PyTorch's default) makes the tuner inert.

    Thread counts change the order of floating-point sums, so `auto` runs are reproducible to float
    rounding only.
    """

    def __init__(self, threads: int | str | None, every: int = 100, probe: int = 3) -> None:
        cores = torch.get_num_threads()
        self.candidates = [cores, 1] if threads == "auto" and cores > 1 else []
        self.every, self.probe = every, probe
        self.best = cores
        self.trying: int | None = None  # the candidate being timed this step
        self.last_probe = False
        self.samples: dict[int, list[float]] = {c: [] for c in self.candidates}

    def choose(self, step: int) -> None:
        """Set the thread count for optimizer step `step` (0-based)."""
        if not self.candidates:
            return
        phase = (step - 1) % self.every
        probing = step >= 1 and phase < self.probe * len(self.candidates)
        self.trying = self.candidates[phase // self.probe] if probing else None
        self.last_probe = probing and phase == self.probe * len(self.candidates) - 1
        threads = self.trying if probing else self.best
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    def record(self, seconds: float, work: int) -> None:
        """Report the step just run: its wall time and its padded tokens."""
        if self.trying is None:
            return
        self.samples[self.trying].append(seconds / max(work, 1))
        if self.last_probe:
            self.best = min(self.candidates, key=lambda c: statistics.median(self.samples[c]))
            self.samples = {c: [] for c in self.candidates}
