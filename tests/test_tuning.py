"""Stopping when learning stops (`train.early_stop`) and the sweep's tuning protocol (`tune:`)."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from peftx.artifacts import RunRecord
from peftx.cli import app
from peftx.errors import PeftxError
from peftx.recipe import validate_recipe
from peftx.report import load_results, summarize
from peftx.run import run
from peftx.selection import choose
from peftx.sweep import expand, load_sweep, plan, run_sweep
from tests.conftest import tiny_recipe

runner = CliRunner()


def test_choose_compares_values_on_the_seeds_they_share():
    # 1e-3 has seeds 0, 1, 2 (chosen, then run on more seeds); on seed 0 alone it beats 1e-4
    tried = {1e-4: [(0, 0.50)], 1e-3: [(0, 0.60), (1, 0.30), (2, 0.30)], 1e-2: [(0, 0.55)]}
    best, means = choose(tried)
    assert best == 1e-3 and means == {1e-4: 0.50, 1e-3: 0.60, 1e-2: 0.55}
    # no shared seed: each value's mean over all its seeds
    assert choose({1: [(0, 0.4), (1, 0.6)], 2: [(2, 0.45)]})[0] == 1
    # a tie goes to the smaller value
    assert choose({3e-4: [(0, 0.5)], 1e-4: [(0, 0.5)]})[0] == 1e-4
    with pytest.raises(ValueError):
        choose({1e-3: []})


def flat_raw(tmp_path, **early_stop) -> dict:
    raw = tiny_recipe("bert", tmp_path)
    # lr 0 after warm-up: validation accuracy never moves, so the run is flat from its first evaluation
    raw["train"] = {**raw["train"], "steps": 40, "eval_every": 2, "lr": 1e-12, "early_stop": early_stop}
    return raw


def test_early_stop_ends_a_flat_run_and_records_it(tmp_path):
    result = run(validate_recipe(flat_raw(tmp_path, patience=2)))
    timing = result.record.timing
    # evaluation 1 sets the best; evaluations 2 and 3 bring nothing: stop at step 6 of 40
    assert (timing.steps, timing.cap, timing.stopped) == (6, 40, "flat")
    assert [h.step for h in result.record.history] == [2, 4, 6]
    assert result.record.status == "completed" and result.record.metrics.selected_step == 2


def test_without_early_stop_a_run_goes_to_its_cap(tmp_path):
    raw = flat_raw(tmp_path)
    raw["train"] = {**raw["train"], "steps": 6, "early_stop": None}
    timing = run(validate_recipe(raw)).record.timing
    assert (timing.steps, timing.cap, timing.stopped) == (6, 6, "cap")


def test_an_improving_run_is_not_stopped(tmp_path):
    raw = tiny_recipe("bert", tmp_path)
    # min_delta 0 and patience far above the evaluations: runs to its cap, the same as no rule at all
    raw["train"] = {**raw["train"], "steps": 8, "eval_every": 2, "early_stop": {"patience": 10}}
    with_rule = run(validate_recipe(raw)).record
    raw["train"] = {**raw["train"], "early_stop": None}
    raw["output"] = {**raw["output"], "name": "plain"}
    plain = run(validate_recipe(raw)).record
    assert with_rule.timing.stopped == "cap" and with_rule.timing.steps == 8
    assert with_rule.metrics.test_accuracy == plain.metrics.test_accuracy
    assert [h.val_accuracy for h in with_rule.history] == [h.val_accuracy for h in plain.history]


def test_early_stop_fields_are_checked(tmp_path):
    for bad in ({"patience": 0}, {"min_delta": 1.5}, {"patiense": 3}):
        with pytest.raises(PeftxError, match="early_stop"):
            validate_recipe(flat_raw(tmp_path, **bad))


def tune_raw(tmp_path) -> dict:
    raw = tiny_recipe("bert", tmp_path)
    raw["name"] = "tuned"
    raw["method"] = [{"name": "lora", "r": 4}, {"name": "bitfit"}]
    raw["train"] = {**raw["train"], "lr": [1e-4, 3e-3, 3e-2], "steps": 4, "eval_every": 2}
    raw["seed"] = [0, 1, 2]
    raw["tune"] = {"key": "train.lr", "seeds": 1}
    return raw


def test_tuning_runs_every_rate_on_one_seed_then_the_chosen_one(tmp_path):
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump(tune_raw(tmp_path)))
    points = load_sweep(path)
    assert len(points) == 18 and [p.stage for p in points] == [1] * 6 + [2] * 12
    assert {p.state for p in plan(points)} == {"todo", "after tuning"}
    log = []
    out = run_sweep(points, log=log.append)
    root = tmp_path / "runs" / "tuned"
    ran = sorted(p.parent.name for p in root.glob("*/result.json"))
    assert len(out.completed) == len(ran) == 6 + 2 * 2  # 3 rates x 2 methods on seed 0; 2 more seeds each
    for method in ("lora", "bitfit"):
        records = [RunRecord.read(root / n) for n in ran if f"__{method}" in n]
        assert len(records) == 5
        tuning = {r.recipe["train"]["lr"]: r.metrics.val_accuracy for r in records if r.seed == 0}
        chosen, _ = choose({lr: [(0, acc)] for lr, acc in tuning.items()})
        assert sorted(r.seed for r in records if r.recipe["train"]["lr"] == chosen) == [0, 1, 2]
        assert all(r.seed == 0 for r in records if r.recipe["train"]["lr"] != chosen)
    assert sum("not run" in line for line in log) == 8
    # the report chooses the same rate as the sweep did, and reports its three seeds
    rows, _ = summarize(load_results(root))
    assert len(rows) == 2 and all(r.seeds == [0, 1, 2] for r in rows)
    # a second pass runs nothing, and the dry run says which points were not chosen
    assert run_sweep(load_sweep(path), log=log.append).completed == []
    states = [p.state for p in plan(load_sweep(path))]
    assert states.count("done") == 10 and states.count("not chosen") == 8


def test_a_diverged_rate_is_not_chosen(tmp_path):
    raw = tune_raw(tmp_path)
    raw["method"] = {"name": "lora", "r": 4}
    raw["train"] = {**raw["train"], "lr": [3e-3, 1e6]}
    raw["seed"] = [0, 1]
    path = tmp_path / "tuned.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = run_sweep(load_sweep(path), log=lambda _: None)
    assert len(out.diverged) == 1 and len(out.completed) == 2
    assert all("lr=0.003" in name for name in out.completed)


@pytest.mark.parametrize(
    "tune, message",
    [
        ({"key": "train.steps"}, "not an axis"),
        ({"key": "seed"}, "not an axis"),
        ({"seeds": 3}, "more than tune.seeds"),
        ({"seeds": 0}, "tune.seeds"),
        ({"keys": "train.lr"}, "expected a mapping"),
        ("train.lr", "expected a mapping"),
    ],
)
def test_bad_tune_sections_are_one_line(tmp_path, tune, message):
    raw = tune_raw(tmp_path)
    raw["tune"] = tune
    with pytest.raises(PeftxError, match=message):
        expand(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = runner.invoke(app, ["sweep", str(path), "--dry-run"])
    assert out.exit_code == 2 and "Traceback" not in out.output
