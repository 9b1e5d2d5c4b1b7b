"""A sweep is an Optuna study: one trial per point that `optuna.load_study` opens, runs finished before
the study told to it without running again, pruning within a configuration's tuning stage (choosing
the rate the full grid chooses), searches drawn from ranges, and the sweep sections' one-line errors."""

from __future__ import annotations

import optuna
import pytest
import yaml
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState
from typer.testing import CliRunner

from peftx.cli import app
from peftx.errors import Interrupted, PeftxError
from peftx.runs.record import RunRecord
from peftx.studies import sweep_worker as sweep_module
from peftx.studies.study_storage import JOURNAL
from peftx.studies.study_trial import GROUP, GroupedPruner
from peftx.studies.sweep import expand, load_sweep
from peftx.studies.sweep_plan import plan
from peftx.studies.sweep_state import tuning_verdict
from peftx.studies.sweep_worker import run_sweep
from tests.support.tiny import tiny_recipe

runner = CliRunner()


def grid_raw(tmp_path, name: str = "grid") -> dict:
    raw = tiny_recipe("bert", tmp_path)
    raw["name"] = name
    raw["train"] = {**raw["train"], "lr": [1e-2, 1e-3], "steps": 2, "eval_every": 2, "threads": 1}
    raw["seed"] = [0, 1]
    return raw


def load(tmp_path, name: str) -> optuna.Study:
    path = tmp_path / "runs" / name / JOURNAL
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(str(path))))


def test_a_finished_sweep_is_a_study_with_one_trial_per_point(tmp_path):
    points = expand(grid_raw(tmp_path))
    assert run_sweep(points, log=lambda _: None).failed == []
    study = load(tmp_path, "grid")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    trials = sorted(study.trials, key=lambda t: t.user_attrs["point"])
    assert [t.user_attrs["point"] for t in trials] == sorted(p.name for p in points)
    by_name = {p.name: p for p in points}
    for t in trials:
        point = by_name[t.user_attrs["point"]]
        record = RunRecord.read(t.user_attrs["run_dir"])
        assert t.user_attrs["run_dir"] == str(point.run_dir) and record.completed
        assert t.state == TrialState.COMPLETE and t.value == record.metrics.val_accuracy
        assert t.params == {"seed": point.values["seed"], "train.lr": point.values["train.lr"]}
        assert t.intermediate_values == {h.step: h.val_accuracy for h in record.history}
    # a second pass runs nothing and adds no trial
    assert run_sweep(expand(grid_raw(tmp_path)), log=lambda _: None).completed == []
    assert len(load(tmp_path, "grid").trials) == 4


def test_runs_finished_before_the_study_are_told_to_it_not_run_again(tmp_path, monkeypatch):
    raw = grid_raw(tmp_path)
    run_sweep(expand(raw), log=lambda _: None)
    before = {p.name: RunRecord.read(p.run_dir) for p in expand(raw)}
    (tmp_path / "runs" / "grid" / JOURNAL).unlink()  # a sweep made before sweeps were studies

    def no_run(recipe, **kwargs):
        raise AssertionError(f"{recipe.output.name} ran again")

    monkeypatch.setattr(sweep_module, "run", no_run)
    log = []
    assert run_sweep(expand(raw), log=log.append).completed == []
    assert sum("done, skipped" in line for line in log) == 4
    trials = load(tmp_path, "grid").trials
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        record = before[t.user_attrs["point"]]
        assert t.value == record.metrics.val_accuracy
        assert t.intermediate_values == {h.step: h.val_accuracy for h in record.history}


def test_an_interrupted_trial_is_queued_again_and_resumes_its_run(tmp_path, monkeypatch):
    raw = grid_raw(tmp_path)
    calls = []
    real = sweep_module.run

    def interrupted_once(recipe, **kwargs):
        calls.append(recipe.output.name)
        if len(calls) == 1:
            raise Interrupted("stopped after step 1 of 2 (checkpoint ...)", "SIGTERM")
        return real(recipe, **kwargs)

    monkeypatch.setattr(sweep_module, "run", interrupted_once)
    with pytest.raises(Interrupted):
        run_sweep(expand(raw), log=lambda _: None)
    trials = load(tmp_path, "grid").trials
    first, retry = trials[0], trials[-1]
    assert first.state == TrialState.FAIL and "interrupted" in first.user_attrs
    assert retry.state == TrialState.WAITING and retry.user_attrs["run_dir"] == first.user_attrs["run_dir"]
    assert [t.state for t in trials[1:]] == [TrialState.WAITING] * 4  # the other points, queued
    out = run_sweep(expand(raw), log=lambda _: None)
    assert len(out.completed) == 4 and calls[1] == calls[0]  # the interrupted point first
    done = [t for t in load(tmp_path, "grid").trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["point"] for t in done) == sorted(p.name for p in expand(raw))


def majority_raw(tmp_path, name: str, prune: dict | None) -> dict:
    """Which bit is in the majority: a tiny BERT learns it in a few steps at lr 1e-2, not at 1e-5 or 1e-6."""
    raw = tiny_recipe("bert", tmp_path)
    raw["name"] = name
    split = {s: f"examples/sequences/majority_{s}.csv" for s in ("train", "validation", "test")}
    raw["task"] = {"name": "sequences", "data_files": split, "input_column": "sequence", "label_column": "label"}
    raw["task"]["tokenize"] = "chars"
    raw["input"], raw["method"] = {"name": "learned"}, {"name": "full"}
    # the best rate in the middle: a bad one runs to its end first, then the good one must not be pruned
    raw["train"] = {**raw["train"], "lr": [1e-5, 1e-2, 1e-6], "steps": 24, "eval_every": 4, "batch_size": 32}
    raw["train"]["threads"] = 1
    raw["seed"] = [0, 1]
    raw["tune"] = {"key": "train.lr", "seeds": 1}
    if prune is not None:
        raw["prune"] = prune
    return raw


def chosen(points) -> float:
    later = next(p for p in points if p.stage == 2 and tuning_verdict(p, points)[0] == "run")
    return later.values["train.lr"]


def test_a_pruned_tuning_stage_chooses_the_rate_the_full_grid_chooses(tmp_path):
    full = expand(majority_raw(tmp_path, "full", None))
    # rungs at steps 12 and 24: at 12, lr 1e-2 has begun to learn (78.5% against 46%: all zeros)
    pruned = expand(majority_raw(tmp_path, "asha", {"kind": "asha", "min_resource": 12, "reduction_factor": 2}))
    assert run_sweep(full, log=lambda _: None).pruned == []
    out = run_sweep(pruned, log=lambda _: None)
    assert chosen(pruned) == chosen(full) == 1e-2
    assert out.pruned == ["seed=0__lr=1e-06"]  # 1e-5 ran first (alone at its rungs); 1e-6 fell behind both
    record = RunRecord.read(tmp_path / "runs" / "asha" / "seed=0__lr=1e-06")
    assert record.status == "pruned" and record.metrics is None and record.error is None
    assert record.pruned.step == 12 and "asha" in record.pruned.reason
    assert [h.step for h in record.history] == [4, 8, 12]  # stopped at its first rung, of 24 steps
    trials = {t.user_attrs["point"]: t for t in load(tmp_path, "asha").trials}
    assert trials["seed=0__lr=1e-06"].state == TrialState.PRUNED
    assert trials["seed=1__lr=0.01"].user_attrs[GROUP] is None  # the chosen rate's later seed: never pruned
    assert len(trials) == 4  # the rates not chosen have no trial on seed 1
    # the dry run reads the pruned point from its run directory
    states = {p.name: p.state for p in plan(pruned)}
    assert states["seed=0__lr=1e-06"] == "pruned" and states["seed=1__lr=1e-05"] == "not chosen"


def test_the_pruner_compares_a_trial_with_its_group_alone(tmp_path):
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "j.log")))
    pruner = GroupedPruner(optuna.pruners.MedianPruner(n_startup_trials=1), storage)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize", pruner=pruner)
    dist = {"x": optuna.distributions.FloatDistribution(0, 1)}
    for group, value in (("a", 0.2), ("b", 0.9)):  # one finished trial in each group
        study.add_trial(
            optuna.trial.create_trial(
                params={"x": 0.5},
                distributions=dist,
                value=value,
                intermediate_values={5: value},
                user_attrs={GROUP: group},
            )
        )
    trial = study.ask()
    trial.set_user_attr(GROUP, "a")
    trial.report(0.5, 5)
    assert not trial.should_prune()  # 0.5 beats group a's 0.2; group b's 0.9 is not its business
    trial.set_user_attr(GROUP, "b")
    assert trial.should_prune()


def search_raw(tmp_path) -> dict:
    raw = tiny_recipe("bert", tmp_path)
    raw["name"] = "searched"
    raw["train"] = {**raw["train"], "steps": 2, "eval_every": 2, "threads": 1}
    raw["search"] = {
        "trials": 3,
        "seed": 0,
        "params": {
            "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "method.r": {"type": "int", "low": 2, "high": 4},
            "train.batch_size": {"type": "categorical", "choices": [8, 16]},
        },
    }
    return raw


def test_a_search_draws_its_budget_of_trials_from_the_ranges(tmp_path):
    raw = search_raw(tmp_path)
    points = expand(raw)
    assert [p.name for p in points] == ["search"]
    out = run_sweep(points, log=lambda _: None)
    assert sorted(out.completed) == ["trial-0000", "trial-0001", "trial-0002"]
    trials = load(tmp_path, "searched").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        recipe = RunRecord.read(t.user_attrs["run_dir"]).recipe
        assert 1e-4 <= t.params["train.lr"] <= 1e-2 and t.params["method.r"] in (2, 3, 4)
        assert recipe["train"]["lr"] == t.params["train.lr"] and recipe["method"]["r"] == t.params["method.r"]
        assert recipe["train"]["batch_size"] == t.params["train.batch_size"]
    assert run_sweep(expand(raw), log=lambda _: None).completed == []  # the budget is spent
    path = tmp_path / "searched.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = runner.invoke(app, ["sweep", str(path), "--dry-run"])
    assert out.exit_code == 0 and "3 trials, tpe" in out.stdout and "3 done" in out.stdout
    assert runner.invoke(app, ["validate", str(path)]).exit_code == 0


@pytest.mark.parametrize(
    "section, message",
    [
        ({"search": {"trials": 2, "params": {"train.lr": {"type": "float", "low": 1, "hihg": 2}}}}, "search.params"),
        ({"search": {"trials": 0, "params": {"train.lr": {"type": "float", "low": 1, "high": 2}}}}, "search.trials"),
        (
            {"search": {"trials": 2, "params": {"train.lr": {"type": "floaty", "low": 1}}}},
            "search.params.train.lr.type",
        ),
        ({"search": {"trials": 2, "params": {"train.lr": {"type": "float", "low": 1, "high": 0.5}}}}, "above high"),
        ({"search": {"trials": 2, "params": {"train.lrr": {"type": "float", "low": 1, "high": 2}}}}, "train.lrr"),
        ({"search": {"trials": 2, "params": {"train.lr": {"type": "float", "low": -1, "high": 2}}}}, "train.lr"),
        ({"prune": {"kind": "asha", "reduction_factor": 1}}, "prune.reduction_factor"),
        ({"prune": {"kind": "median", "min_resource": 2}}, "prune.min_resource: unknown key"),
        ({"prune": {"kind": "halving"}}, "prune.kind: expected one of asha, hyperband, median, none"),
        (
            {
                "seed": [0, 1],
                "search": {"trials": 2, "params": {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-3}}},
            },
            "not both",
        ),
    ],
)
def test_bad_sweep_sections_are_one_line_naming_the_key(tmp_path, section, message):
    raw = {**tiny_recipe("bert", tmp_path), **section}
    with pytest.raises(PeftxError, match=message):
        expand(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = runner.invoke(app, ["sweep", str(path), "--dry-run"])
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert out.stderr.strip().count("\n") == 0 and message.split(":")[0] in out.stderr


def test_a_plain_run_refuses_sweep_sections(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**tiny_recipe("bert", tmp_path), "prune": {"kind": "asha"}}))
    out = runner.invoke(app, ["run", str(path)])
    assert out.exit_code == 2 and "holds sweep sections (prune)" in out.stderr


def test_the_offline_study_shows_the_same_points_as_before(tmp_path):
    """The points of recipes/offline/listops_peft.yaml as the file-lock sweep named them: same names, so
    the same run directories, and the committed study's runs count as done."""
    configs = ["lora-r11-alpha22", "ia3", "bitfit", "frozen-fpt"]
    expected = [
        (f"seed={seed}__{config}__lr={lr}", "todo" if seed == 0 else "after tuning")
        for config in configs
        for seed in (0, 1, 2)
        for lr in ("0.0003", "0.001", "0.003")
    ]
    points = load_sweep("recipes/offline/listops_peft.yaml", [f"output.dir={tmp_path}"])
    assert [(p.name, p.state) for p in plan(points)] == expected
    out = runner.invoke(
        app, ["sweep", "recipes/offline/listops_peft.yaml", "--dry-run", "--set", f"output.dir={tmp_path}"]
    )
    assert out.exit_code == 0, out.output
    assert "36 runs" in out.stdout and not (tmp_path / "listops_peft").exists()  # no study made


def test_a_study_of_another_sweep_in_the_storage_is_refused(tmp_path):
    a, b = grid_raw(tmp_path), grid_raw(tmp_path)
    b["output"] = {"dir": str(tmp_path / "elsewhere")}
    b["seed"], b["train"]["lr"] = [0], [1e-2]
    url = f"sqlite:///{tmp_path / 'study.db'}"
    run_sweep(expand(a), log=lambda _: None, storage=url)
    with pytest.raises(PeftxError, match="another `name`"):
        run_sweep(expand(b), log=lambda _: None, storage=url)
    study = optuna.load_study(study_name="grid", storage=url)
    assert len(study.trials) == 4 and study.user_attrs["peftx_sweep_dir"] == str(tmp_path / "runs" / "grid")


def test_a_study_that_cannot_be_opened_is_one_line(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid_raw(tmp_path)))
    out = runner.invoke(app, ["sweep", str(path), "--storage", "postgresql://u:secret@127.0.0.1:1/none", "--quiet"])
    assert out.exit_code == 2 and "cannot open the study's database" in out.stderr and "port 1" in out.stderr
    assert "secret" not in out.stderr and out.stderr.strip().count("\n") == 0
