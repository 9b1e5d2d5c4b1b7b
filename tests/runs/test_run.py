"""End to end through the Python API: result file, reload to identical predictions, typed points."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from peftx.errors import PeftxError
from peftx.model.loading import load_backbone
from peftx.recipe import validate_recipe
from peftx.runs.display import RunDisplay
from peftx.runs.predict import Predictor
from peftx.runs.record import RunRecord
from peftx.runs.run import run
from peftx.tasks.listops.task import ListOpsConfig
from peftx.training.points import EvalPoint, Point, TrainPoint
from tests.support.tiny import TINY, tiny_recipe

EXPRS = ["[MAX 2 9 ]", "[MIN 4 [SM 3 8 ] 7 ]", "[MED 1 5 3 [MAX 0 0 ] ]", "5"]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("pretrained_body", [False, True])
def test_reload_gives_identical_predictions(tmp_path, family, pretrained_body, precision):
    raw = tiny_recipe(family, tmp_path)
    raw["train"]["precision"] = precision
    if pretrained_body:  # a body loaded from a directory: the run saves only what it trained
        bb = load_backbone(TINY[family]["source"], pretrained=False, overrides=TINY[family]["config_overrides"])
        bb.model.save_pretrained(tmp_path / "body")
        raw["model"] = {"family": family, "source": str(tmp_path / "body"), "pretrained": True}
    recipe = validate_recipe(raw)
    out = run(recipe)
    trained = out.result
    assert trained["status"] == "completed" and trained["precision"] == precision
    saved = load_file(str(out.run_dir / "weights.safetensors"))
    body = [n for n in saved if n.startswith("backbone.") and "lora_" not in n]
    assert bool(body) is not pretrained_body  # from scratch: the random body is saved; pretrained: not
    pred = Predictor(out.run_dir)
    # the reloaded model scores the test split exactly as the trained one did, in the run's precision
    task = recipe.task.load()
    from peftx.tasks.listops.task import VOCAB

    texts = [" ".join(VOCAB.symbols[i] for i in t) for t in task.splits["test"]["tokens"]]
    labels = task.splits["test"]["label"]
    logits = pred.logits(texts)
    acc = sum(int(p) == y for p, y in zip(logits.argmax(-1).tolist(), labels)) / len(labels)
    assert acc == pytest.approx(trained["metrics"]["test_accuracy"], abs=1e-9)
    loss = F.cross_entropy(logits, torch.tensor(labels)).item()
    assert loss == pytest.approx(trained["metrics"]["test_loss"], rel=1e-6)
    if precision == "bf16":  # the loss check can tell precisions apart
        fp32 = Predictor(out.run_dir, overrides=["train.precision=fp32"]).logits(texts)
        assert F.cross_entropy(fp32, torch.tensor(labels)).item() != pytest.approx(loss, rel=1e-6)
    # and a second reload agrees with the first to the bit
    assert torch.equal(Predictor(out.run_dir).logits(EXPRS), pred.logits(EXPRS))


def test_failed_run_records_status(tmp_path, monkeypatch):
    import peftx.runs.run as run_mod

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(run_mod, "train", boom)
    recipe = validate_recipe(tiny_recipe("bert", tmp_path))
    with pytest.raises(RuntimeError):
        run(recipe)
    res = json.loads((tmp_path / "runs" / "tiny_bert" / "result.json").read_text())
    assert res["status"] == "failed" and "disk on fire" in res["error"]


def test_epochs_and_grad_accum(tmp_path):
    raw = tiny_recipe("gpt2", tmp_path)
    raw["train"] = {**raw["train"], "steps": None, "epochs": 0.5, "grad_accum": 2, "batch_size": 16}
    res = run(validate_recipe(raw)).result
    assert res["timing"]["steps"] == 4  # 256 examples / (16 x 2) = 8 steps an epoch


class RecordingDisplay(RunDisplay):
    """A quiet display that keeps every point the run shows it."""

    def __init__(self) -> None:
        super().__init__(enabled=False)
        self.points: list[Point] = []

    def step(self, point: Point) -> None:
        self.points.append(point)
        super().step(point)


def test_a_runs_points_are_typed_and_are_what_it_records(tmp_path):
    raw = tiny_recipe("gpt2", tmp_path)
    raw["train"] = {**raw["train"], "steps": 6, "log_every": 2, "eval_every": 3}
    display = RecordingDisplay()
    out = run(validate_recipe(raw), display=display)
    points = display.points
    assert [(type(p), p.step) for p in points] == [
        (TrainPoint, 2),
        (EvalPoint, 3),
        (TrainPoint, 4),
        (TrainPoint, 6),
        (EvalPoint, 6),
    ]
    # result.json holds exactly these points, and metrics.jsonl one line each, in the order they came
    record = RunRecord.read(out.run_dir)
    assert record.train_log == [p for p in points if isinstance(p, TrainPoint)]
    assert record.history == [p for p in points if isinstance(p, EvalPoint)]
    lines = [json.loads(line) for line in (out.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lines == [{"kind": "eval" if isinstance(p, EvalPoint) else "train", **p.model_dump()} for p in points]


def test_a_global_batch_beyond_a_split_known_only_once_loaded_is_refused_before_a_step(tmp_path, monkeypatch):
    monkeypatch.setattr(ListOpsConfig, "train_size", lambda self: None)  # as for data read from files
    raw = tiny_recipe("bert", tmp_path)
    raw["train"]["grad_accum"] = 1000  # the tiny preset trains on 256 examples
    with pytest.raises(PeftxError, match=r"train\.grad_accum: 1,000 x train\.batch_size 16 = 16,000 examples"):
        run(validate_recipe(raw))
    record = RunRecord.read(tmp_path / "runs" / "tiny_bert")
    assert record.status == "failed" and not record.train_log
