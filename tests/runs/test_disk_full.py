"""A disk that fills up mid-run: one line and exit 2, no half-written checkpoint left, the record says
what happened, and --resume, once there is room, ends where an uninterrupted run ends."""

from __future__ import annotations

import errno

import yaml
from typer.testing import CliRunner

import peftx.training.checkpoints as checkpoints
from peftx.cli import app
from peftx.recipe import load_recipe
from peftx.runs.record import RunRecord
from peftx.runs.run import run
from tests.runs.test_resume import comparable, same_weights
from tests.support.tiny import tiny_recipe

runner = CliRunner()


def test_a_full_disk_stops_the_run_in_one_line_and_resume_finishes_it(tmp_path, monkeypatch):
    raw = tiny_recipe("bert", tmp_path)
    raw["train"].update(steps=12, eval_every=4, checkpoint_every=4, threads=1)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    reference = run(load_recipe(path, ["output.name=reference"]))

    real, calls = checkpoints._write_digests, []

    def fills_up(directory):
        calls.append(directory)
        if len(calls) == 2:  # the second checkpoint finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device", str(directory / "digests.json"))
        real(directory)

    monkeypatch.setattr(checkpoints, "_write_digests", fills_up)
    result = runner.invoke(app, ["run", str(path), "--name", "full", "--quiet"])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "disk full" in lines[0] and "digests.json" in lines[0]
    run_dir = tmp_path / "runs" / "full"
    record = RunRecord.read(run_dir)
    assert record.status == "failed" and record.error.startswith("disk full") and "--resume" in record.error
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-000004"]  # no .tmp left

    monkeypatch.setattr(checkpoints, "_write_digests", real)  # room again
    resumed = run(load_recipe(path, ["output.name=full"]), resume=True)
    assert resumed.record.completed and resumed.record.resumed[0]["from_step"] == 4
    assert comparable(resumed.record) == comparable(reference.record)
    same_weights(run_dir, reference.run_dir)
