"""Peak resident memory per phase of one training run: peftx's `peftx run`, and the same run written
with Hugging Face `Trainer` + peft (`hf_trainer_baseline.py`), each in a fresh process.

A thread samples the process every 10 ms: the high-water mark of resident memory, and (at most twice a
second) what glibc's allocator holds (heap in use and free, blocks mapped apart). Freed memory mostly
stays with the process, so a phase's own peak says little once an earlier one was higher; each phase
is credited instead with how far it raised the process's peak (the columns add up to the peak, less
the interpreter's start). The phase is read off the main thread's stack (which function of which file
is running), so the runs need no hooks:

    load        reading the recipe, imports, the task's data, building the model
    train       the training steps
    evaluate    validation and test evaluations
    checkpoint  writing checkpoints and the run's files

Usage (through scripts/bench_memory.py --phases, which prints the table):

    python scripts/bench_memory.py --phases --set train.steps=60 --set train.eval_every=30
    python scripts/bench_memory.py --phases --contenders peftx --set train.keep_freed_memory=false
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "listops_lora.yaml"
PHASES = ("load", "train", "evaluate", "checkpoint")
MIB = 2**20
# (part of a file path, function names or None for any) -> phase; the innermost matching frame wins.
RULES = [
    ("peftx/training/evaluation.py", None, "evaluate"),
    ("peftx/runs/predict.py", None, "evaluate"),
    ("transformers/trainer", ("evaluate", "evaluation_loop", "prediction_step", "predict"), "evaluate"),
    ("peftx/training/checkpoints.py", None, "checkpoint"),
    ("peftx/runs/weights.py", ("save_weights", "weights_to_save"), "checkpoint"),
    ("peftx/training/loop.py", ("step", "run", "_micro_step", "backward"), "train"),
    ("transformers/trainer", ("train", "_inner_training_loop", "training_step"), "train"),
]


def phase_of(frame) -> str:
    """The phase a frame stack is in: the first rule matched by the innermost frame that matches any."""
    while frame is not None:
        path, name = frame.f_code.co_filename, frame.f_code.co_name
        for part, names, phase in RULES:
            if part in path and (names is None or name in names):
                return phase
        frame = frame.f_back
    return "load"


def _status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


class Sampler(threading.Thread):
    """Samples memory every `every` seconds and keeps each phase's peak (see the module docstring)."""

    def __init__(self, every: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.every, self.main = every, threading.main_thread().ident
        self.start_bytes = self.high = _status()["VmHWM"]
        self.raised: dict[str, int] = {}  # phase -> bytes it raised the peak by
        self.heap: dict[str, int] = {}  # glibc's view at the last sample that raised the peak
        self.timeline: list[tuple[float, str, int, int]] = []  # (seconds, phase, resident, heap free) every 0.5 s
        self.stopped = threading.Event()
        self.t0 = time.perf_counter()

    def sample(self, phase: str) -> None:
        from peftx.model.memory import process_memory  # walks glibc's free lists: not at every sample

        status, now = _status(), time.perf_counter() - self.t0
        if status["VmHWM"] > self.high:
            self.raised[phase] = self.raised.get(phase, 0) + status["VmHWM"] - self.high
            self.high = status["VmHWM"]
        if not self.timeline or now - self.timeline[-1][0] >= 0.5:
            memory = process_memory()
            if status["VmRSS"] >= self.high - (8 << 20):
                self.heap = {k: v for k, v in memory.items() if "heap" in k or "mmap" in k}
            self.timeline.append((round(now, 2), phase, status["VmRSS"], memory.get("heap_free_bytes", 0)))

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            self.sample(phase_of(sys._current_frames().get(self.main)))

    def finish(self) -> dict:
        self.stopped.set()
        self.join()
        status = _status()
        return {
            "start_bytes": self.start_bytes,
            "peak_bytes": status["VmHWM"],
            "raised_bytes": self.raised,
            "heap_near_peak": self.heap,
            "end_rss_bytes": status["VmRSS"],
            "timeline": self.timeline,
        }


def child(contender: str, overrides: list[str], out: Path) -> None:
    """Inside the measured process: run the contender under a sampler and write what it measured."""
    if contender == "peftx":
        from peftx.util.huge_pages import enable_huge_pages

        enable_huge_pages()  # as the `peftx` command does, before anything allocates a tensor
    sampler = Sampler()
    sampler.start()
    t0 = time.perf_counter()
    if contender == "peftx":
        from peftx.cli import app

        run_dir = tempfile.mkdtemp(prefix="peftx-mem-")
        args = ["run", str(RECIPE), "--quiet", "--set", f"output.dir={run_dir}"]
        try:
            app([*args, *(a for o in overrides for a in ("--set", o))])
        except SystemExit as e:
            if e.code:
                raise
    else:
        sys.path.insert(0, str(ROOT / "scripts"))
        import torch
        from hf_trainer_baseline import build_trainer

        threads = next((o.split("=", 1)[1] for o in overrides if o.startswith("train.threads=")), None)
        if threads is not None and threads.isdigit():
            torch.set_num_threads(int(threads))  # as peftx's train.threads sets its own

        steps = next((int(o.split("=", 1)[1]) for o in overrides if o.startswith("train.steps=")), 600)
        task = [o.removeprefix("task.") for o in overrides if o.startswith("task.")]
        trainer, _, _, data = build_trainer(steps, task_overrides=[f"task.{t}" for t in task] or None)
        trainer.train()
        trainer.evaluate()
        trainer.evaluate(data["test"], metric_key_prefix="test")
    result = sampler.finish() | {"seconds": time.perf_counter() - t0}
    out.write_text(json.dumps(result))


def measure(contender: str, overrides: list[str], env: dict[str, str] | None = None) -> dict:
    """Run `contender` ('peftx' or 'trainer') in a fresh process; its per-phase peaks."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, __file__, contender, str(out), *overrides]
        proc = subprocess.run(
            cmd, env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, capture_output=True, text=True
        )
        if proc.returncode or not out.is_file():
            return {"error": f"exit {proc.returncode}: {(proc.stderr.strip().splitlines() or [''])[-1][:300]}"}
        return json.loads(out.read_text())


def table(results: dict[str, dict]) -> str:
    """Markdown: how far each phase raised each contender's peak, the peak, and the first contender's
    peak as a fraction of each one's."""
    head = "| run | start | " + " | ".join(f"+{p}" for p in PHASES) + " | peak | first's peak / this | seconds |"
    lines = [head, "|---|" + "---:|" * (len(PHASES) + 4)]
    first = next((r for r in results.values() if "peak_bytes" in r), None)
    for name, r in results.items():
        if "peak_bytes" not in r:
            lines.append(f"| {name} | {r['error']} |" + " |" * (len(PHASES) + 3))
            continue
        cells = [f"{r['raised_bytes'].get(p, 0) / MIB:,.0f}" for p in PHASES]
        ratio = f"{first['peak_bytes'] / r['peak_bytes']:.2f}" if first else ""
        row = f"| {name} | {r['start_bytes'] / MIB:,.0f} | " + " | ".join(cells)
        lines.append(row + f" | {r['peak_bytes'] / MIB:,.0f} | {ratio} | {r['seconds']:.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    child(sys.argv[1], sys.argv[3:], Path(sys.argv[2]))
