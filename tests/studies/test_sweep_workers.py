"""Two `peftx sweep` processes on one grid, through each kind of storage: the journal file, SQLite, and
a real PostgreSQL server started here on loopback. Every point runs exactly once, and the point of a
worker killed mid-run is finished by the other, resumed from its checkpoint."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from peftx.runs.record import RunRecord
from peftx.studies.study_storage import JOURNAL, database_url
from tests.support.tiny import tiny_recipe

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(command: list[str]) -> list[str]:
    """The server refuses to run as root: as root, run its tools as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL cluster on 127.0.0.1, stopped and removed after the module's tests."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found and shutil.which("initdb") is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run installs it)")
    bin_dir = found[-1].parent if found else Path(shutil.which("initdb")).parent
    base = Path(tempfile.mkdtemp(prefix="peftx-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
    port, data = _free_port(), base / "data"
    steps = [
        [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "log"), "-w", "start", "-o",
         f"-p {port} -k {base} -c listen_addresses=127.0.0.1"],
    ]  # fmt: skip
    for step in steps:
        done = subprocess.run(_as_postgres(step), capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            shutil.rmtree(base, ignore_errors=True)
            why = (done.stderr or done.stdout).strip().splitlines()
            pytest.skip(f"PostgreSQL could not start here: {Path(step[0]).name}: {why[-1] if why else done.returncode}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        stop = [str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]
        subprocess.run(_as_postgres(stop), capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)


def _grid(tmp_path: Path) -> Path:
    raw = tiny_recipe("bert", tmp_path)
    raw["name"] = "shared"
    # long enough (a few seconds a point on one thread) to be killed after its first checkpoint
    raw["train"] = {**raw["train"], "steps": 60, "eval_every": 10, "checkpoint_every": 10, "threads": 1}
    raw["seed"] = [0, 1, 2]
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _worker(recipe: Path, storage: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "peftx", "sweep", str(recipe), "--quiet", "--heartbeat", "1", *storage]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _held_with_checkpoint(study_of, worker: subprocess.Popen, deadline: float) -> str:
    """Wait until `worker` runs a point that has written a checkpoint; that point's run directory."""
    while time.monotonic() < deadline and worker.poll() is None:
        try:
            trials = study_of().get_trials(states=(TrialState.RUNNING,))
        except (KeyError, ValueError, OSError):  # the study (or its directory) is not made yet
            trials = []
        for t in trials:
            if _ran_by(t, worker) and any((Path(t.user_attrs["run_dir"]) / "checkpoints").glob("step-*")):
                return t.user_attrs["run_dir"]
        time.sleep(0.1)
    pytest.fail("the first worker never ran a point that wrote a checkpoint")


def _ran_by(trial, worker: subprocess.Popen) -> bool:
    return trial.user_attrs.get("worker", "").endswith(f":{worker.pid}")


@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgresql"])
def test_two_workers_run_every_point_once_and_finish_a_killed_workers_point(tmp_path, kind, request):
    recipe = _grid(tmp_path)
    if kind == "journal":
        storage, url = [], None
        path = tmp_path / "runs" / "shared" / JOURNAL

        def study_of():
            return optuna.load_study(study_name="shared", storage=JournalStorage(JournalFileBackend(str(path))))
    else:
        url = f"sqlite:///{tmp_path / 'study.db'}" if kind == "sqlite" else request.getfixturevalue("postgres_url")
        storage = ["--storage", url]

        def study_of():
            return optuna.load_study(study_name="shared", storage=database_url(url))

    first = _worker(recipe, storage, tmp_path / "first.log")
    second = _worker(recipe, storage, tmp_path / "second.log")
    try:
        killed = _held_with_checkpoint(study_of, first, time.monotonic() + 240)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        assert second.wait(timeout=300) == 0, (tmp_path / "second.log").read_text()[-3000:]
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                proc.kill()

    points = sorted(p.parent.name for p in (tmp_path / "runs" / "shared").glob("*/result.json"))
    assert points == ["seed=0", "seed=1", "seed=2"]
    for name in points:
        record = RunRecord.read(tmp_path / "runs" / "shared" / name)
        assert record.completed
        if str(tmp_path / "runs" / "shared" / name) == killed:  # resumed from its checkpoint, once
            assert len(record.resumed) == 1 and record.resumed[0]["from_step"] >= 10
        else:  # run once, from its first step to its last
            assert record.resumed == []

    trials = study_of().trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["point"] for t in complete) == points  # one completed trial per point
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.user_attrs["run_dir"] for t in failed] == [killed]  # the killed worker's, failed by its heartbeat
    assert len(trials) == len(points) + 1
    retried = next(t for t in complete if t.user_attrs["run_dir"] == killed)
    assert _ran_by(retried, second) and retried.system_attrs["failed_trial"] == failed[0].number
