"""Peak memory and step time of LoRA training under peftx's low-memory options.

For each model (a gpt2-medium-shaped GPT-2 with random weights, the offline pretrained MiniLM) and each
configuration (fp32, bf16, 8-bit, 8-bit + gradient checkpointing, 4-bit + gradient checkpointing) x
optimizer (adamw, adamw8bit), a fresh Python process loads the model, trains LoRA (r=8 on attention
and feed-forward matrices) on random ListOps-symbol batches of batch x seq tokens, and reports its
peak memory (process RSS high-water mark on CPU, max allocated on CUDA) and the mean time of the
timed steps (after one warm-up step). Memory and time are also given as ratios to fp32 + adamw of the
same model, measured in the same invocation. Prints a markdown table (and writes it with --out).

Usage:
    python scripts/bench_memory.py                                  # everything, 3 timed steps
    python scripts/bench_memory.py --models minilm --steps 1 --configs fp32,8bit_ckpt --optimizers adamw
    python scripts/bench_memory.py --gpt2-layers 2 --seq 128        # a quick check at small scale

bf16 runs only where bf16 matmuls are fast (CUDA with bf16, CPUs with AVX512-BF16 or AMX); elsewhere
it is listed as skipped (bf16 on an AVX2-only CPU is hundreds of times slower than fp32) unless
--force-bf16 is given.

`--phases` measures something else: the peak resident memory of each phase (load, train, evaluate,
checkpoint) of one real `peftx run` of recipes/listops_lora.yaml, beside the same run written with
Hugging Face `Trainer` + peft, each in a fresh process (scripts/memory_phases.py). A contender
`peftx:key=value;key=value` runs peftx with more `--set` values, to compare settings in one invocation:

    python scripts/bench_memory.py --phases --set train.steps=60 --set train.eval_every=30
    python scripts/bench_memory.py --phases --contenders 'peftx,peftx:train.keep_freed_memory=false'
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# configuration -> (model section fields, train section fields)
CONFIGS = {
    "fp32": ({}, {"precision": "fp32"}),
    "bf16": ({"dtype": "bfloat16"}, {"precision": "bf16"}),
    "8bit": ({"quantization": "8bit"}, {"precision": "fp32"}),
    "8bit_ckpt": ({"quantization": "8bit"}, {"precision": "fp32", "gradient_checkpointing": True}),
    "4bit_ckpt": ({"quantization": "4bit"}, {"precision": "fp32", "gradient_checkpointing": True}),
}
LABELS = {
    "fp32": "fp32",
    "bf16": "bf16",
    "8bit": "8-bit",
    "8bit_ckpt": "8-bit + checkpointing",
    "4bit_ckpt": "4-bit (nf4) + checkpointing",
}
MODELS = ("gpt2-medium", "minilm")
MIB = 2**20


def model_section(name: str, gpt2_dir: str | None) -> dict:
    if name == "minilm":
        return {"family": "bert", "source": "offline"}
    return {"family": "gpt2", "source": gpt2_dir, "pretrained": True}


def make_gpt2_checkpoint(directory: str, layers: int | None) -> None:
    """A random gpt2-medium-shaped checkpoint on disk, written in a separate process so that building it
    in full precision does not count towards any measured peak; small shards keep loading's peak low."""
    code = (
        "import sys; from peftx.model.loading import load_config, resolve_family\n"
        "from transformers.utils import logging; logging.disable_progress_bar()\n"
        "over = {'n_layer': int(sys.argv[2])} if sys.argv[2] != 'None' else {}\n"
        "config = load_config('gpt2-medium', over)\n"
        "fam = resolve_family('gpt2-medium', config, 'gpt2')\n"
        "fam.build(config).save_pretrained(sys.argv[1], max_shard_size='100MB')\n"
    )
    subprocess.run([sys.executable, "-c", code, directory, str(layers)], check=True, env=_env())


def _env(malloc_threshold: int | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if malloc_threshold:
        # glibc raises its mmap threshold as large blocks are freed, then keeps freed activation memory
        # in its heap: the RSS peak grows step after step. A fixed threshold returns it to the system.
        env["MALLOC_MMAP_THRESHOLD_"] = str(malloc_threshold)
    return env


def measure(spec: dict) -> dict:
    """Run inside the child process: build, train, report. `spec` holds model, config, optimizer, sizes."""
    import datasets
    import numpy as np
    import torch

    from peftx.model.memory import model_memory
    from peftx.recipe import validate_recipe
    from peftx.training.job import TrainJob
    from peftx.training.loop import train
    from peftx.training.points import TrainPoint
    from peftx.training.session import open_session
    from peftx.util.env import peak_memory

    baseline = peak_memory()["peak_rss_bytes"]  # the interpreter and libraries, before any model
    model_fields, train_fields = CONFIGS[spec["config"]]
    total = spec["warmup"] + spec["steps"]
    raw = {
        "model": {**model_section(spec["model"], spec["gpt2_dir"]), **model_fields},
        "task": {"name": "listops", "preset": "tiny"},
        "method": {"name": "lora", "r": 8, "targets": ["attention", "feed_forward"]},
        "train": {
            "steps": total,
            "batch_size": spec["batch"],
            "optimizer": spec["optimizer"],
            "warmup": 0,
            "eval_every": 10**9,  # one evaluation, after the last step: its peak is an inference one
            "log_every": 1,
            "group_by_length": False,
            "pad_to_multiple": 1,
            **train_fields,
        },
    }
    session = open_session(validate_recipe(raw), load_task=False)
    model, info = session.model, session.info
    load_peak = peak_memory()
    specials = model.specials
    framing = (specials.bos is not None) + (specials.eos is not None)
    rng = np.random.default_rng(0)
    n_symbols = len(info.input_spec.symbols)
    # exactly one batch of (batch, seq): the one loop sees the same shape every step
    tokens = rng.integers(0, n_symbols, size=(spec["batch"], spec["seq"] - framing)).tolist()
    labels = rng.integers(0, info.num_classes, size=spec["batch"]).tolist()
    split = session.split(datasets.Dataset.from_dict({"tokens": tokens, "label": labels}))
    stamps = []

    def on_point(point) -> None:
        if isinstance(point, TrainPoint):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    t0 = time.perf_counter()
    outcome = train(TrainJob(model, split, split, session.recipe.train, 0, session.accelerator), on_point)
    # step i's time: from the previous step's end (the first step: from the start of training)
    times = [b - a for a, b in zip([t0, *stamps[:-1]], stamps)]
    last = outcome.history[-1]
    timed = times[spec["warmup"] :]
    mem = peak_memory()
    kind = "peak_cuda_allocated_bytes" if "peak_cuda_allocated_bytes" in mem else "peak_rss_bytes"
    return {
        "peak_bytes": mem[kind],
        "load_peak_bytes": load_peak[kind],
        "peak_kind": kind,
        "step_s": sum(timed) / len(timed),
        "loss": last.val_loss,
        "import_rss_bytes": baseline,
        **model_memory(session.accelerator.unwrap_model(model)),
        "optimizer_state_bytes": outcome.optimizer_state_bytes,
    }


def run_child(spec: dict, timeout: float | None, malloc_threshold: int | None) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=_env(malloc_threshold),
        timeout=timeout,
    )
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail[:200]}"}


def bf16_is_fast() -> bool:
    import torch

    from peftx.util.env import cpu_has_fast_bf16

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_fast_bf16()


def device_name() -> str:
    import platform

    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def table(rows: list[dict]) -> str:
    out = [
        "| model | configuration | optimizer | peak memory (MiB) | vs fp32 LoRA | of which loading (MiB) "
        "| step (s) | vs fp32 LoRA | weights (MiB) | optimizer state (MiB) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = {r["model"]: r for r in rows if r["config"] == "fp32" and r["optimizer"] == "adamw" and "peak_bytes" in r}
    for r in rows:
        head = f"| {r['model']} | {LABELS[r['config']]} | {r['optimizer']} "
        if "peak_bytes" not in r:
            out.append(head + f"| {r.get('error') or r.get('skipped')} | | | | | | |")
            continue
        b = base.get(r["model"])
        mem_ratio = f"{r['peak_bytes'] / b['peak_bytes']:.0%}" if b else "n/a"
        time_ratio = f"{r['step_s'] / b['step_s']:.2f}x" if b else "n/a"
        out.append(
            head + f"| {r['peak_bytes'] / MIB:,.0f} | {mem_ratio} | {r['load_peak_bytes'] / MIB:,.0f} "
            f"| {r['step_s']:.2f} | {time_ratio} "
            f"| {r['weight_bytes'] / MIB:,.1f} | {r['optimizer_state_bytes'] / MIB:,.1f} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: gpt2-medium, minilm")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated: {', '.join(CONFIGS)}")
    ap.add_argument("--optimizers", default="adamw,adamw8bit", help="comma-separated train.optimizer values")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per configuration (after --warmup)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512, help="tokens per sequence, framing included")
    ap.add_argument("--gpt2-layers", type=int, default=None, help="fewer layers than gpt2-medium's 24 (quick checks)")
    ap.add_argument("--force-bf16", action="store_true", help="run bf16 even where it is slow")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per configuration")
    ap.add_argument(
        "--malloc-mmap-threshold",
        type=int,
        default=131072,
        help="MALLOC_MMAP_THRESHOLD_ for the measured processes (CPU RSS; 0: glibc's default)",
    )
    ap.add_argument("--out", type=Path, default=None, help="also write the table (and raw JSON) here")
    ap.add_argument("--phases", action="store_true", help="peak memory per phase of one run, beside the Trainer")
    ap.add_argument("--contenders", default="peftx,trainer", help="--phases: peftx[:key=value;...], trainer")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="--phases: recipe value (repeatable)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(measure(json.loads(args.child))), flush=True)
        return
    if args.phases:
        phases(args)
        return

    models = [m for m in args.models.split(",") if m]
    configs = [c for c in args.configs.split(",") if c]
    for name in models:
        if name not in MODELS:
            ap.error(f"--models: unknown {name!r} (valid: {', '.join(MODELS)})")
    for name in configs:
        if name not in CONFIGS:
            ap.error(f"--configs: unknown {name!r} (valid: {', '.join(CONFIGS)})")
    if "fp32" not in configs:
        configs.insert(0, "fp32")  # the reference every ratio is taken against
    optimizers = [o for o in args.optimizers.split(",") if o]
    if "adamw" not in optimizers:
        optimizers.insert(0, "adamw")
    slow_bf16 = not bf16_is_fast() and not args.force_bf16
    rows = []
    with tempfile.TemporaryDirectory(prefix="peftx-bench-") as tmp:
        gpt2_dir = None
        if "gpt2-medium" in models:
            gpt2_dir = str(Path(tmp) / "gpt2-medium-random")
            make_gpt2_checkpoint(gpt2_dir, args.gpt2_layers)
        for model in models:
            for config in configs:
                for optimizer in optimizers:
                    row = {"model": model, "config": config, "optimizer": optimizer}
                    if config == "bf16" and slow_bf16:
                        rows.append({**row, "skipped": "skipped: bf16 matmuls are slow on this CPU (--force-bf16)"})
                        continue
                    spec = {
                        **row,
                        "gpt2_dir": gpt2_dir,
                        "batch": args.batch,
                        "seq": args.seq,
                        "steps": args.steps,
                        "warmup": args.warmup,
                    }
                    t0 = time.perf_counter()
                    try:
                        result = run_child(spec, args.timeout, args.malloc_mmap_threshold or None)
                    except subprocess.TimeoutExpired:
                        result = {"error": f"timed out after {args.timeout:.0f} s"}
                    rows.append({**row, **result})
                    print(
                        f"{model} {config} {optimizer}: {json.dumps(result)} ({time.perf_counter() - t0:.0f} s)",
                        file=sys.stderr,
                        flush=True,
                    )
    shape = f"batch {args.batch} x {args.seq} tokens, LoRA r=8 on attention + feed-forward"
    if args.gpt2_layers:
        shape += f", gpt2-medium shape with {args.gpt2_layers} layers"
    text = f"{shape}; {args.steps} timed step(s) after {args.warmup} warm-up"
    baselines = sorted(r["import_rss_bytes"] for r in rows if "import_rss_bytes" in r)
    if baselines and any(r.get("peak_kind") == "peak_rss_bytes" for r in rows):
        median = baselines[len(baselines) // 2] / MIB
        text += f"; peak process RSS, including ~{median:,.0f} MiB of interpreter and libraries"
        if args.malloc_mmap_threshold:
            text += f", MALLOC_MMAP_THRESHOLD_={args.malloc_mmap_threshold}"
    elif any(r.get("peak_kind") == "peak_cuda_allocated_bytes" for r in rows):
        text += "; peak CUDA memory allocated (torch.cuda.max_memory_allocated)"
    text = f"{device_name()}: {text}"
    text += "\n\n" + table(rows)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1))


def phases(args: argparse.Namespace) -> None:
    """`--phases`: each contender's peak memory per phase, one fresh process each, as a table."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from memory_phases import measure as measure_run
    from memory_phases import table as phase_table

    results, loads = {}, []
    for contender in [c for c in args.contenders.split(",") if c]:
        name, _, extra = contender.partition(":")
        t0 = time.perf_counter()
        results[contender] = measure_run(name, args.overrides + [e for e in extra.split(";") if e])
        loads.append(os.getloadavg()[1])
        print(f"{contender}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        head = f"{device_name()}, load average {min(loads):.1f}-{max(loads):.1f} (5 min, after each run)"
        text = f"{head}; --set {' '.join(args.overrides) or '(none)'}: resident memory (MiB), and how far each "
        text += f"phase raised the peak\n\n{phase_table(results)}"
        if args.out is not None:  # after every contender: a long comparison cut short keeps what it measured
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n")
            args.out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(text)


if __name__ == "__main__":
    main()
