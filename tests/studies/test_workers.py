"""Bounds on what a sweep or a run may take: `--workers` capped by the points left and the memory
available, a worker killed by a signal named with exit code 128 + N, and a global batch beyond the
training split refused before a run starts."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from peftx.cli import app
from peftx.studies import workers as sweep
from tests.support.tiny import tiny_recipe

runner = CliRunner()
_POPEN = subprocess.Popen  # the real one: the tests patch the module attribute that sweep uses


class _Started:
    """Stands in for subprocess.Popen: records each worker started, runs `script` instead of a sweep."""

    def __init__(self, script: str):
        self.script = script
        self.started: list[list[str]] = []

    def __call__(self, command, env=None):
        self.started.append(command)
        return _POPEN([sys.executable, "-c", self.script])


def _points(n_left: int, n_done: int, monkeypatch) -> list:
    states = ["todo"] * n_left + ["done"] * n_done
    points = [object() for _ in states]
    state_of = dict(zip(map(id, points), states))
    monkeypatch.setattr(sweep, "point_state", lambda p: state_of[id(p)])
    monkeypatch.setattr(sweep, "memory_cap", lambda points: (10_000, ""))  # memory is its own test's
    return points


def test_workers_are_capped_by_the_points_left(monkeypatch):
    started = _Started("pass")
    monkeypatch.setattr(sweep.subprocess, "Popen", started)
    said: list[str] = []
    code = sweep.run_workers(["r.yaml"], [], 6, _points(2, 3, monkeypatch), log=said.append)
    assert code == 0 and len(started.started) == 2
    assert said == ["--workers 6: 2 point(s) left to run, starting 2 worker(s)"]

    started.started.clear()
    said.clear()
    assert sweep.run_workers(["r.yaml"], [], 1000, _points(0, 4, monkeypatch), log=said.append) == 0
    assert len(started.started) == 1 and "0 point(s) left" in said[0]

    started.started.clear()
    said.clear()
    assert sweep.run_workers(["r.yaml"], [], 2, _points(5, 0, monkeypatch), log=said.append) == 0
    assert len(started.started) == 2 and said == []  # no cap: nothing said


def test_workers_are_capped_by_the_memory_available(monkeypatch, tmp_path):
    """Each worker is counted at the largest model state of the points left (checked on the meta
    device) twice over plus a process's overhead; the cap is said with the numbers behind it."""
    from peftx.studies.sweep import load_sweeps

    raw = tiny_recipe("bert", tmp_path)
    raw["seed"] = [0, 1, 2, 3]
    points = load_sweeps([_write(tmp_path, raw)], [])
    per = sweep._worker_bytes(points)
    assert sweep.WORKER_OVERHEAD_BYTES < per < sweep.WORKER_OVERHEAD_BYTES + (10 << 20)  # a tiny model's state
    monkeypatch.setattr(sweep.psutil, "virtual_memory", lambda: type("M", (), {"available": int(2.5 * per)})())
    assert sweep.memory_cap(points)[0] == 2
    started = _Started("pass")
    monkeypatch.setattr(sweep.subprocess, "Popen", started)
    said: list[str] = []
    assert sweep.run_workers(["r.yaml"], [], 4, points, log=said.append) == 0
    assert len(started.started) == 2
    assert len(said) == 1 and said[0].startswith("--workers 4: memory for 2 worker(s) here (about 2.0 GiB each")


@pytest.mark.parametrize("all_killed", [True, False])
def test_a_worker_killed_by_a_signal_is_named_and_gives_128_plus_n(monkeypatch, all_killed):
    kill = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    scripts = iter([kill, kill] if all_killed else ["pass", kill])

    def popen(command, env=None):
        return _POPEN([sys.executable, "-c", next(scripts)])

    monkeypatch.setattr(sweep.subprocess, "Popen", popen)
    said: list[str] = []
    code = sweep.run_workers(["r.yaml"], [], 2, _points(2, 0, monkeypatch), log=said.append)
    assert code == 137  # 128 + SIGKILL, as a shell reports it; never 0 or 247
    killed = [line for line in said if "was killed by SIGKILL" in line]
    assert len(killed) == (2 if all_killed else 1) and all("\n" not in line for line in killed)


def _write(tmp_path, raw):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_a_global_batch_beyond_the_training_split_is_refused_by_validate_run_and_sweep(tmp_path):
    raw = tiny_recipe("bert", tmp_path)  # the tiny ListOps preset: 256 training examples
    raw["train"]["grad_accum"] = 1e9
    path = _write(tmp_path, raw)
    for command in (["validate", path], ["run", path, "--quiet"], ["sweep", path, "--quiet"]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, (command, result.output)
        err = result.stderr.strip()
        assert err.count("\n") == 0 and "train.grad_accum: 1,000,000,000 x train.batch_size 16" in err
        assert "more than the 256 of the training split" in err and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # refused before any run directory was made

    raw["train"]["grad_accum"] = 16  # 16 x 16 = 256: the whole split in one step is fine
    raw["train"]["steps"] = 1
    assert runner.invoke(app, ["validate", _write(tmp_path, raw)]).exit_code == 0
    raw["train"]["grad_accum"] = 1
    raw["train"]["batch_size"] = 1000  # one batch of the whole split
    assert runner.invoke(app, ["validate", _write(tmp_path, raw)]).exit_code == 0
