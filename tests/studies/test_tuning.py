"""Stopping when learning stops (`train.early_stop`) and the sweep's tuning protocol (`tune:`)."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from peftx.cli import app
from peftx.errors import PeftxError
from peftx.recipe import validate_recipe
from peftx.runs.record import RunRecord
from peftx.runs.run import run
from peftx.studies.report.writer import load_results, summarize
from peftx.studies.selection import choose
from peftx.studies.sweep import expand, load_sweep, load_sweeps
from peftx.studies.sweep_plan import plan
from peftx.studies.sweep_worker import run_sweep
from tests.support.tiny import tiny_recipe

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
    # configuration after configuration: lora's 3 rates on seed 0, its 6 later points, then bitfit's
    assert len(points) == 18 and [p.stage for p in points] == ([1] * 3 + [2] * 6) * 2
    assert [p.values["method"]["name"] for p in points] == ["lora"] * 9 + ["bitfit"] * 9
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


def _record(pretrained: bool, lr: float, seed: int, val: float, test: float, stopped: str, steps: int) -> RunRecord:
    recipe = validate_recipe(tiny_recipe("bert", None, seed=seed)).to_dict()
    recipe["model"]["pretrained"] = pretrained
    recipe["train"]["lr"] = lr
    return RunRecord(
        name=f"p{pretrained}-lr{lr}-s{seed}",
        status="completed",
        seed=seed,
        precision="fp32",
        recipe=recipe,
        metrics={"val_accuracy": val, "test_accuracy": test, "test_loss": 1.0, "selected_step": 2, "selection": "best"},
        budget={"trainable": 1000, "total": 100000, "trainable_pct": 1.0},
        history=[{"step": 2, "val_accuracy": val, "val_loss": 1.0, "lr": lr}],
        timing={"wall_seconds": 1.0, "steps": steps, "cap": 300, "stopped": stopped},
    )


def test_report_shows_rate_curves_how_runs_stopped_and_the_pretrained_interval(tmp_path):
    from scipy import stats

    root = tmp_path / "runs"
    records = [
        # pretrained: 1e-3 wins on seed 0 (0.60 > 0.55) and gets seeds 1 and 2, whose lower validation
        # accuracy must not make the report pick 1e-4 instead
        _record(True, 1e-4, 0, 0.55, 0.50, "flat", 150),
        _record(True, 1e-3, 0, 0.60, 0.58, "cap", 300),
        _record(True, 1e-3, 1, 0.40, 0.56, "flat", 200),
        _record(True, 1e-3, 2, 0.40, 0.60, "cap", 300),
        _record(False, 1e-3, 0, 0.35, 0.30, "flat", 150),
        _record(False, 1e-3, 1, 0.35, 0.33, "flat", 150),
        _record(False, 1e-3, 2, 0.35, 0.33, "flat", 200),
    ]
    for r in records:
        (root / r.name).mkdir(parents=True)
        r.write(root / r.name)
    out = runner.invoke(app, ["report", str(root), "--out", str(tmp_path / "rep")])
    assert out.exit_code == 0, out.output
    md = (tmp_path / "rep" / "report.md").read_text()
    assert (tmp_path / "rep" / "rate_curves.png").is_file()
    pre = next(line for line in md.splitlines() if line.startswith("| listops | True"))
    assert "| 0.001 | 0.0001: 55.0, 0.001: 60.0 | 3 | 58.0 ± 1.2 |" in pre
    assert "flat 1, cap 2 (steps 200-300 of 300)" in pre
    assert "flat 3 (steps 150-200 of 300)" in md
    assert " (edge) |" not in md  # two rates tried: no edge to speak of
    # Welch interval of [58, 56, 60] - [30, 33, 33], computed here from its definition
    a, b = [58.0, 56.0, 60.0], [30.0, 33.0, 33.0]
    va, vb = stats.tvar(a) / 3, stats.tvar(b) / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)
    half = stats.t.ppf(0.975, df) * (va + vb) ** 0.5
    diff = sum(a) / 3 - sum(b) / 3
    assert f"| {diff:+.1f} | [{diff - half:+.1f}, {diff + half:+.1f}] |" in md


def test_several_sweeps_are_one_queue(tmp_path):
    """Two tuned sweeps in one call: each keeps its own choice (their points' names are alike)."""
    a, b = tune_raw(tmp_path), tune_raw(tmp_path)
    a["name"], b["name"] = "first", "second"
    for raw in (a, b):
        raw["method"] = {"name": "lora", "r": 4}
        raw["train"] = {**raw["train"], "lr": [3e-3, 1e6]}
        raw["seed"] = [0, 1]
    b["method"] = {"name": "lora", "r": 2}
    paths = []
    for raw in (a, b):
        paths.append(tmp_path / f"{raw['name']}.yaml")
        paths[-1].write_text(yaml.safe_dump(raw))
    log = []
    out = run_sweep(load_sweeps(paths), log=log.append)
    assert len(out.completed) == 4 and len(out.diverged) == 2
    for sweep in ("first", "second"):
        ran = sorted(p.parent.name for p in (tmp_path / "runs" / sweep).glob("*/result.json"))
        assert ran == ["seed=0__lr=0.003", "seed=0__lr=1000000.0", "seed=1__lr=0.003"]
    assert any(line.startswith("[1/8] first/seed=0__lr=0.003") for line in log)
    # the same sweep twice is refused before anything runs
    b["name"] = "first"
    paths[1].write_text(yaml.safe_dump(b))
    with pytest.raises(PeftxError, match="as .*first.yaml does"):
        load_sweeps(paths)


def test_an_interrupted_point_stops_the_sweep(tmp_path, monkeypatch):
    from peftx.errors import Interrupted
    from peftx.studies import sweep_worker as sweep_module

    raw = tune_raw(tmp_path)
    raw.pop("tune")
    calls = []

    def interrupted(recipe, **kwargs):
        calls.append(recipe.output.name)
        raise Interrupted("stopped after step 2 of 4 (checkpoint ...)", "SIGTERM")

    monkeypatch.setattr(sweep_module, "run", interrupted)
    with pytest.raises(Interrupted):
        run_sweep(expand(raw), log=lambda _: None)
    assert len(calls) == 1


def test_report_marks_a_rate_chosen_at_the_grid_edge(tmp_path):
    root = tmp_path / "runs"
    for lr, val in ((1e-4, 0.3), (3e-4, 0.4), (1e-3, 0.5)):  # the largest rate wins: the grid may be too low
        r = _record(True, lr, 0, val, val, "cap", 300)
        (root / r.name).mkdir(parents=True)
        r.write(root / r.name)
    out = runner.invoke(app, ["report", str(root), "--out", str(tmp_path / "rep")])
    assert out.exit_code == 0, out.output
    assert "| 0.001 (edge) |" in (tmp_path / "rep" / "report.md").read_text()
