"""Reports that count right: repeated seeds, task identity (data source, size), baselines per task,
runs that did not complete, curves with seed spread, training loss and the selected step."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from peftx.cli import app
from peftx.errors import PeftxError
from peftx.runs.record import Metrics, RunRecord
from peftx.studies.report.writer import load_results, summarize, write_report

runner = CliRunner()


def recipe(name, pretrained=True, task=None, lr=1e-3, method=None):
    return {
        "name": name,
        "seed": 0,
        "model": {"source": "offline", "pretrained": pretrained},
        "task": task or {"name": "listops", "preset": "cpu", "data_dir": None, "n_train": None},
        "method": method or {"name": "lora", "r": 8},
        "train": {"lr": lr},
        "output": {"dir": "runs", "name": name},
    }


def record(name, seed, val, test, status="completed", baselines=None, trainable=1000, notes=None, **kw):
    r = RunRecord(
        name=name,
        status=status,
        seed=seed,
        precision="fp32",
        recipe=recipe(name, **kw),
        budget={"trainable": trainable, "total": 100_000, "trainable_pct": trainable / 1000},
        baselines=baselines if baselines is not None else {"majority_class": 0.15},
        data_notes=notes or ["ListOps generated: cpu"],
        history=[
            {"step": 10, "val_accuracy": val - 0.1, "val_loss": 2.0, "lr": 1e-3},
            {"step": 20, "val_accuracy": val, "val_loss": 1.5, "lr": 5e-4},
        ],
        train_log=[{"step": s, "loss": 2.5 - 0.05 * s, "lr": 1e-3} for s in (5, 10, 15, 20)],
    )
    if status == "completed":
        r.metrics = Metrics(val_accuracy=val, test_accuracy=test, test_loss=1.0, selected_step=20, selection="best")
    else:
        r.error = "Diverged: training loss is nan at step 12" if status == "diverged" else "RuntimeError: out of memory"
    return r


LRA = {"name": "listops", "preset": "cpu", "data_dir": "/data/lra_release/listops", "n_train": 500}


@pytest.fixture
def runs_dir(tmp_path):
    root = tmp_path / "runs"
    runs = {
        # the same recipe and seed under two names: one seed, run twice
        "a_seed0": record("a_seed0", 0, 0.50, 0.48),
        "a_seed0_again": record("a_seed0_again", 0, 0.50, 0.48),
        "a_seed1": record("a_seed1", 1, 0.60, 0.58),
        "scratch": record("scratch", 0, 0.30, 0.29, pretrained=False),
        # LRA's files: another task, with its own baselines; n_train is ignored there, recorded anyway
        "lra": record("lra", 0, 0.40, 0.37, task=LRA, baselines={"majority_class": 0.17}, notes=["ListOps from LRA"]),
        # a sweep's failed and diverged points
        "sweep/p_failed": record("p_failed", 0, 0.2, 0.2, status="failed", lr=3e-3),
        "sweep/p_diverged": record("p_diverged", 1, 0.2, 0.2, status="diverged", lr=3e-3),
    }
    for where, r in runs.items():
        (root / where).mkdir(parents=True)
        r.write(root / where)
    return root


def test_duplicate_seed_is_counted_once_and_reported(runs_dir):
    rows, _ = summarize(load_results(runs_dir))
    a = next(r for r in rows if r.pretrained and r.task == "listops")
    assert a.seeds == [0, 1] and a.test == [0.48, 0.58]
    assert a.duplicates == [(0, ["a_seed0", "a_seed0_again"])]
    text = (write_report(runs_dir)[0]).read_text()
    assert "| listops | True | 0.001 | 2 (+ duplicates) | 53.0 ± 5.0 |" in text
    assert "seed 0: a_seed0, a_seed0_again" in text


def test_task_identity_includes_data_source_and_baselines_follow_it(runs_dir):
    rows, _ = summarize(load_results(runs_dir))
    tasks = {r.task for r in rows}
    assert tasks == {"listops", "listops (data_dir=listops, n_train=500)"}
    lra = next(r for r in rows if r.task != "listops")
    assert lra.baselines == {"majority_class": 0.17} and lra.test == [0.37]
    text = write_report(runs_dir)[0].read_text()
    assert "### listops (data_dir=listops, n_train=500)" in text
    assert "Baselines on listops (test accuracy): majority class 15.0%" in text
    assert "Baselines on listops (data_dir=listops, n_train=500) (test accuracy): majority class 17.0%" in text
    assert "ListOps from LRA" in text  # what the task said it loaded


def test_runs_that_did_not_complete_are_listed_apart(runs_dir):
    text = write_report(runs_dir)[0].read_text()
    section = text.split("## Runs not reported")[1]
    assert "| sweep/p_failed | failed | 2 | RuntimeError: out of memory |" in section
    assert "| sweep/p_diverged | diverged | 2 | Diverged: training loss is nan at step 12 |" in section
    assert "0.003" not in text.split("## Runs not reported")[0]  # their lr never enters a table


def test_report_names_its_command_and_curves_carry_loss_and_selection(runs_dir, tmp_path):
    out = runner.invoke(app, ["report", str(runs_dir), "--out", str(tmp_path / "rep")])
    assert out.exit_code == 0, out.output
    text = (tmp_path / "rep" / "report.md").read_text()
    assert f"Made by `peftx report {runs_dir} --out {tmp_path / 'rep'}`" in text
    assert "7 result file(s): 5 completed run(s) in 3 configuration(s)" in text
    rows, _ = summarize(load_results(runs_dir))
    a = next(r for r in rows if r.pretrained and r.task == "listops")
    assert a.train_curves[0] == [(5, 2.25), (10, 2.0), (15, 1.75), (20, 1.5)]
    assert a.selected == [(20, 0.5), (20, 0.6)]
    assert {p.name for p in (tmp_path / "rep").iterdir()} >= {
        "accuracy_vs_trainable.png",
        "training_curves.png",
        "pretrained_vs_scratch.png",
    }


def test_only_failed_runs_is_an_error(tmp_path):
    (tmp_path / "x").mkdir()
    record("x", 0, 0.1, 0.1, status="failed").write(tmp_path / "x")
    out = runner.invoke(app, ["report", str(tmp_path)])
    assert out.exit_code == 2 and "no completed runs" in out.stderr


def test_a_section_set_in_some_runs_and_null_in_others_is_a_difference():
    from peftx.studies.report.writer import _mark_sections, flatten

    flats = [
        flatten({"input": {"name": "linear", "align": None}}),
        flatten({"input": {"name": "linear", "align": {"objective": "mmd", "steps": 100}}}),
    ]
    _mark_sections(flats)
    assert [f["input.align"] for f in flats] == ["off", "on"]
    assert flats[1]["input.align.objective"] == "mmd" and "input.align.objective" not in flats[0]


def test_a_report_replaces_its_own_files_and_nothing_else(runs_dir, tmp_path):
    out = tmp_path / "rep"
    write_report(runs_dir, out)
    again = write_report(runs_dir, out)  # a previous report of peftx's own is replaced
    assert out / "report.md" in again
    hand = tmp_path / "notes"
    hand.mkdir()
    (hand / "report.md").write_text("# My notes\n")
    result = runner.invoke(app, ["report", str(runs_dir), "--out", str(hand)])
    assert result.exit_code == 2
    refused = f"error: {hand / 'report.md'}: exists and is not a peftx report; choose another --out"
    assert result.stderr.strip() == refused
    assert (hand / "report.md").read_text() == "# My notes\n" and len(list(hand.iterdir())) == 1
    plots = tmp_path / "plots"
    plots.mkdir()
    (plots / "training_curves.png").write_bytes(b"mine")
    with pytest.raises(PeftxError, match="exists beside no peftx report"):
        write_report(runs_dir, plots)
    assert (plots / "training_curves.png").read_bytes() == b"mine"


def test_unreadable_result_files_are_listed_in_the_report_and_on_stderr(runs_dir, tmp_path):
    (runs_dir / "broken").mkdir()
    (runs_dir / "broken" / "result.json").write_text("{not json")
    unreadable: list[str] = []
    text = write_report(runs_dir, tmp_path / "out", unreadable=unreadable)[0].read_text()
    assert len(unreadable) == 1 and "broken/result.json: not a readable result file" in unreadable[0]
    assert "## Unreadable result files" in text and "broken/result.json" in text
