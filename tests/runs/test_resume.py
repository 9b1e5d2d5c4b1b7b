"""Runs that survive: a run killed at any step resumes to the very result of an uninterrupted one;
SIGTERM checkpoints and stops; run directories are never lost; workers share a sweep's grid."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from filelock import FileLock
from safetensors.torch import load_file
from typer.testing import CliRunner

from peftx.cli import app
from peftx.recipe import load_recipe
from peftx.runs.record import RunRecord
from peftx.runs.run import run
from peftx.training.checkpoints import list_checkpoints
from tests.support.tiny import tiny_recipe

runner = CliRunner()
TIMING = ("train_seconds", "examples_per_s", "tokens_per_s", "rss_bytes", "heap_free_bytes")


def long_recipe(tmp_path: Path, name: str = "r", **train) -> Path:
    """A tiny run long enough to be killed in the middle: several epochs, grad_accum 2, log, eval and
    checkpoint steps that do not line up, select: best."""
    raw = tiny_recipe("bert", tmp_path)
    raw["name"] = name
    raw["train"] = {
        **raw["train"],
        "steps": 150,
        "grad_accum": 2,
        "log_every": 2,
        "eval_every": 10,
        "checkpoint_every": 3,
        "threads": 1,
        "eval_batch_size": 64,
        **train,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def peftx(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "peftx", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


def wait_for_checkpoint(proc: subprocess.Popen, run_dir: Path, step: int, timeout: float = 180) -> int:
    """Poll until the run has a checkpoint at or past `step`; returns the newest one's step."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list_checkpoints(run_dir)
        if found and int(found[-1].name.split("-")[1]) >= step:
            return int(found[-1].name.split("-")[1])
        if proc.poll() is not None:
            pytest.fail(f"the run ended before step {step}: {proc.stderr.read()}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"no checkpoint at step {step} within {timeout} s")


def comparable(record: RunRecord) -> dict:
    """What must be identical between a resumed and an uninterrupted run (timings aside)."""
    return {
        "history": [{k: v for k, v in h.model_dump().items() if k not in TIMING} for h in record.history],
        "train_log": [{k: v for k, v in t.model_dump().items() if k not in TIMING} for t in record.train_log],
        "metrics": record.metrics.model_dump(),
        "steps": record.timing.steps,
    }


def same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "weights.safetensors")), load_file(str(b / "weights.safetensors"))
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def test_a_killed_run_resumes_to_the_uninterrupted_result(tmp_path):
    path = long_recipe(tmp_path)
    reference = run(load_recipe(path, ["output.name=reference"]))
    assert reference.record.completed

    kill_at = random.Random().randrange(3, 120)  # any step: mid-epoch, mid-window, between evaluations
    proc = peftx("run", str(path), "--name", "killed", "--quiet")
    run_dir = tmp_path / "runs" / "killed"
    reached = wait_for_checkpoint(proc, run_dir, kill_at)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert RunRecord.read(run_dir).status == "running"  # what a SIGKILL leaves behind

    # a plain rerun refuses (and says how to go on); --resume continues from the last checkpoint
    again = runner.invoke(app, ["run", str(path), "--name", "killed", "--quiet"])
    assert again.exit_code == 2 and "--resume" in again.stderr
    resumed = run(load_recipe(path, ["output.name=killed"]), resume=True)
    record = resumed.record
    assert record.completed and record.resumed and record.resumed[0]["from_step"] >= reached - 3
    assert comparable(record) == comparable(reference.record), f"killed near step {reached}"
    same_weights(run_dir, reference.run_dir)
    assert not (run_dir / "checkpoints").exists()  # a finished run keeps its weights, not its checkpoints
    lines = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert len(lines) == 150 // 2  # one training entry per log step, none twice after the resumption


def test_sigterm_checkpoints_and_resumes_in_bf16(tmp_path):
    """bf16 autocast on a CPU: SIGTERM stops at a step's end with a checkpoint (exit 143, status
    interrupted); the resumed run equals the uninterrupted one bit for bit here too."""
    path = long_recipe(tmp_path, precision="bf16", checkpoint_every=None)
    reference = run(load_recipe(path, ["output.name=reference"]))
    proc = peftx("run", str(path), "--name", "stopped", "--quiet")
    run_dir = tmp_path / "runs" / "stopped"
    deadline = time.monotonic() + 180
    while not (run_dir / "metrics.jsonl").exists() or len((run_dir / "metrics.jsonl").read_text().splitlines()) < 8:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else "slow"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "interrupted:" in stderr and "--resume" in stderr
    record = RunRecord.read(run_dir)
    assert record.status == "interrupted" and len(list_checkpoints(run_dir)) == 1  # checkpoint_every: null
    resumed = run(load_recipe(path, ["output.name=stopped"]), resume=True)
    assert comparable(resumed.record) == comparable(reference.record)
    same_weights(run_dir, reference.run_dir)


def test_resume_refuses_another_recipe_and_returns_a_completed_run(tmp_path):
    path = long_recipe(tmp_path, steps=6, eval_every=3)
    done = run(load_recipe(path))
    out = runner.invoke(app, ["run", str(path), "--resume", "--quiet"])
    assert out.exit_code == 0, out.output  # completed: nothing to do
    assert RunRecord.read(done.run_dir).started == done.record.started
    # an unfinished run of the same name, resumed with another lr: refused, naming the key
    record = RunRecord.read(done.run_dir)
    record.status = "interrupted"
    record.write(done.run_dir)
    out = runner.invoke(app, ["run", str(path), "--resume", "--set", "train.lr=0.1"])
    assert out.exit_code == 2 and "cannot resume with another recipe: train.lr" in out.stderr
    # a result-neutral field (threads, checkpoints, trackers) may change
    out = runner.invoke(app, ["run", str(path), "--resume", "--set", "train.threads=2", "--quiet"])
    assert out.exit_code == 0, out.output


def test_overwrite_keeps_the_old_run_until_the_new_one_has_built(tmp_path):
    path = long_recipe(tmp_path, steps=4, eval_every=2)
    done = run(load_recipe(path))
    before = {p.name: p.read_bytes() for p in done.run_dir.iterdir() if p.is_file()}
    # a late failure: the recipe validates, the model cannot be built (no such local directory)
    out = runner.invoke(
        app, ["run", str(path), "--overwrite", "--set", f"model.source={tmp_path / 'missing-model'}", "--quiet"]
    )
    assert out.exit_code == 2 and out.stderr.count("\n") == 1, out.output
    assert {p.name: p.read_bytes() for p in done.run_dir.iterdir() if p.is_file()} == before
    assert not list(done.run_dir.parent.glob(".*replaced*"))


@pytest.mark.parametrize("name", ["..", ".", "a/b", ".hidden", "", "x" * 201])
def test_run_names_are_plain_names(tmp_path, name):
    (tmp_path / "recipe.yaml").write_text("mine")  # a project directory that `..` would have named
    path = long_recipe(tmp_path, steps=2)
    out = runner.invoke(app, ["run", str(path), "--name", name, "--overwrite"])
    assert out.exit_code == 2 and "not a plain run name" in out.stderr, out.output
    assert (tmp_path / "recipe.yaml").read_text() == "mine"


def test_a_directory_that_is_no_run_is_never_touched(tmp_path):
    path = long_recipe(tmp_path, steps=2)
    foreign = tmp_path / "runs" / "r"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    (foreign / "recipe.yaml").write_text("mine")
    out = runner.invoke(app, ["run", str(path), "--overwrite"])
    assert out.exit_code == 2 and "not a peftx run directory" in out.stderr
    assert (foreign / "notes.txt").read_text() == "mine"
    # output.dir that is a file
    (tmp_path / "afile").write_text("x")
    out = runner.invoke(app, ["run", str(path), "--set", f"output.dir={tmp_path / 'afile'}"])
    assert out.exit_code == 2 and "output.dir" in out.stderr and out.stderr.count("\n") == 1


def test_a_second_run_of_one_name_refuses_while_the_first_runs(tmp_path):
    path = long_recipe(tmp_path, steps=4)
    runs = tmp_path / "runs"
    runs.mkdir()
    with FileLock(runs / ".r.lock"):  # what a running `peftx run` holds
        out = runner.invoke(app, ["run", str(path), "--overwrite"])
    assert out.exit_code == 2 and "another peftx process is running it" in out.stderr
    assert not (runs / "r").exists()
    # a real one: a second process with --overwrite refuses while the first trains
    proc = peftx("run", str(path), "--quiet", "--set", "train.steps=400")
    try:
        wait_for_checkpoint(proc, runs / "r", 3)
        out = runner.invoke(app, ["run", str(path), "--overwrite"])
        assert out.exit_code == 2 and "another peftx process is running it" in out.stderr
    finally:
        proc.kill()
        proc.wait()


def test_a_run_that_failed_before_training_blocks_no_rerun(tmp_path):
    path = long_recipe(tmp_path, steps=2)
    out = runner.invoke(app, ["run", str(path), "--set", f"model.source={tmp_path / 'missing-model'}"])
    assert out.exit_code == 2
    assert RunRecord.read(tmp_path / "runs" / "r").status == "failed"
    out = runner.invoke(app, ["run", str(path), "--quiet"])
    assert out.exit_code == 0, out.output


def grid(tmp_path: Path, seeds: int = 4) -> Path:
    raw = yaml.safe_load(long_recipe(tmp_path, steps=60).read_text())
    raw["name"] = "grid"
    raw["seed"] = list(range(seeds))
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_killed_sweep_point_resumes(tmp_path):
    path = grid(tmp_path, seeds=2)
    ref = runner.invoke(app, ["sweep", str(path), "--quiet", "--set", f"output.dir={tmp_path / 'ref'}"])
    assert ref.exit_code == 0, ref.output
    proc = peftx("sweep", str(path), "--quiet")
    point = tmp_path / "runs" / "grid" / "seed=1"
    wait_for_checkpoint(proc, point, 20)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = runner.invoke(app, ["sweep", str(path), "--quiet"])
    assert out.exit_code == 0, out.output
    assert "seed=0: done, skipped" in out.stderr
    record = RunRecord.read(point)
    assert record.resumed and record.resumed[0]["from_step"] >= 20
    assert comparable(record) == comparable(RunRecord.read(tmp_path / "ref" / "grid" / "seed=1"))
    same_weights(point, tmp_path / "ref" / "grid" / "seed=1")


def test_two_workers_share_a_grid_and_take_over_a_dead_ones_point(tmp_path):
    path = grid(tmp_path, seeds=4)
    root = tmp_path / "runs" / "grid"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = peftx("sweep", str(path), env=env)
    wait_for_checkpoint(first, root / "seed=0", 6)
    second = peftx("sweep", str(path), env=env)
    # kill the first worker mid-point, once the second has started on another point
    deadline = time.monotonic() + 180
    while not list_checkpoints(root / "seed=1") and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    first.wait()
    _, log2 = second.communicate(timeout=600)
    assert second.returncode == 0, log2
    log1 = first.stderr.read()
    records = {p.name: RunRecord.read(p) for p in root.iterdir() if p.is_dir()}
    assert sorted(records) == [f"seed={s}" for s in range(4)]
    assert all(r.completed for r in records.values())
    started = [line for log in (log1, log2) for line in log.splitlines() if "] seed=" in line and ":" not in line]
    # each point was started by one worker, except the one the dead worker held, which the other resumed
    taken_over = [n for n, r in records.items() if r.resumed]
    assert len(taken_over) <= 1
    for name in records:
        count = sum(line.split()[1] == name for line in started)
        assert count == (2 if name in taken_over else 1), (name, started)
    # and resuming changed nothing: the taken-over point equals a seed's uninterrupted run
    assert all(any(line.split()[1] == n and line.endswith("(resumed)") for line in started) for n in taken_over)
    for name in taken_over:
        ref = run(load_recipe(long_recipe(tmp_path, steps=60), [f"seed={name[5:]}", "output.name=ref"]))
        assert comparable(records[name]) == comparable(ref.record)


def torchrun(path: Path, *args: str) -> subprocess.Popen:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1"]
    cmd += [f"--master_port={port}", "-m", "peftx", "run", str(path), "--quiet", *args]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_processes_stop_on_sigterm_and_resume_to_the_same_result(tmp_path):
    """torchrun passes SIGTERM to both ranks; they agree on the step, checkpoint (each its own random
    states), stop; a two-process resume ends as the uninterrupted two-process run, bit for bit."""
    path = long_recipe(tmp_path, steps=60, batch_size=8)
    ref = torchrun(path, "--name", "ref")
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-3000:]
    proc = torchrun(path, "--name", "stopped")
    run_dir = tmp_path / "runs" / "stopped"
    wait_for_checkpoint(proc, run_dir, 9)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and RunRecord.read(run_dir).status == "interrupted", err[-3000:]
    ckpt = list_checkpoints(run_dir)[-1]
    assert {p.name for p in ckpt.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    again = torchrun(path, "--name", "stopped", "--resume")
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    record = RunRecord.read(run_dir)
    assert record.resumed and record.processes.world_size == 2
    assert comparable(record) == comparable(RunRecord.read(tmp_path / "runs" / "ref"))
    same_weights(run_dir, tmp_path / "runs" / "ref")


def test_sweep_workers_option_runs_the_grid_once(tmp_path):
    path = grid(tmp_path, seeds=3)
    subprocess.run(  # short points: the grid, not the training, is under test
        [
            sys.executable,
            "-c",
            "import yaml,sys; p=sys.argv[1]; r=yaml.safe_load(open(p)); "
            "r['train']['steps']=6; yaml.safe_dump(r, open(p,'w'))",
            str(path),
        ],
        check=True,
    )
    done = subprocess.run(
        [sys.executable, "-m", "peftx", "sweep", str(path), "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    started = [line for line in done.stderr.splitlines() if "] seed=" in line and ":" not in line]
    assert sorted(line.split()[1] for line in started) == ["seed=0", "seed=1", "seed=2"]
    assert all(RunRecord.read(p).completed for p in (tmp_path / "runs" / "grid").iterdir() if p.is_dir())
    bad = runner.invoke(app, ["sweep", str(path), "--workers", "2", "--overwrite"])
    assert bad.exit_code == 2 and "--overwrite with --workers" in bad.stderr
