"""The series input adapters `patch_linear` (GPT4TS) and `digits` (LLMTime): what they compute, how many
steps fit, and every objective (classification, regression, forecasting) on every family's tiny model:
the loss falls, only the intended parameters move, predict agrees with evaluate, and an export reloaded
without peftx gives the same outputs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from peftx.export.exporter import export_run
from peftx.inputs.series_layers import DIGIT_SYMBOLS, DigitsInput, PatchInput
from peftx.recipe import validate_recipe
from peftx.runs.predict import Predictor
from peftx.runs.run import run
from peftx.spec.index_space import BOS, EOS, NUM_FRAMING, PAD, VALUE
from tests.export.test_export import plain_load
from tests.support.helpers import build, changed, on_device, snapshot
from tests.support.tiny import tiny_recipe


def framed(series: list[np.ndarray], bos: bool = True, eos: bool = True) -> dict[str, torch.Tensor]:
    """A batch as the continuous collator makes it: VALUE positions between start/end, right-padded."""
    width = max(len(x) for x in series) + bos + eos
    ids = torch.full((len(series), width), PAD)
    values = torch.zeros(len(series), width, series[0].shape[1])
    for i, x in enumerate(series):
        ids[i, : bos + len(x) + eos] = torch.tensor([BOS] * bos + [VALUE] * len(x) + [EOS] * eos)
        values[i, bos : bos + len(x)] = torch.as_tensor(x, dtype=torch.float32)
    return {"input_ids": ids, "values": values, "attention_mask": (ids != PAD).long()}


class Rows(torch.nn.Module):
    """A lookup whose row i is i in every dimension (so an output vector names its index)."""

    weight = torch.zeros(1)

    def forward(self, batch):
        return batch["input_ids"].float().unsqueeze(-1).expand(-1, -1, 4)


def patch_layer(channels=2, patch_len=3, stride=2, independent=False, scaling="none", positions=None):
    layer = PatchInput(channels, patch_len, stride, independent, scaling, 4, Rows(), Rows(), (True, True), positions)
    return layer


def test_patches_are_projections_of_the_right_steps():
    torch.manual_seed(0)
    layer = patch_layer()
    a, b = np.arange(14, dtype=float).reshape(7, 2), np.arange(8, dtype=float).reshape(4, 2) + 100
    embeds, mask = layer(framed([a, b]))
    # 7 steps, patch 3, stride 2 (padded by repeating the last step twice): starts 0, 2, 4, 6 -> 4 patches
    assert mask.tolist() == [[1] * 6, [1] * 4 + [0, 0]]  # 4 and 2 patches, start and end each
    padded = np.concatenate([a, a[-1:], a[-1:]])
    with torch.no_grad():
        for k, s in enumerate((0, 2, 4, 6)):
            want = layer.proj(torch.tensor(padded[s : s + 3].T.reshape(-1), dtype=torch.float32))
            assert torch.allclose(embeds[0, 1 + k], want, atol=1e-6)
    assert embeds[0, 0, 0] == BOS and embeds[0, 5, 0] == EOS and embeds[1, 3, 0] == EOS and embeds[1, 4, 0] == PAD


def test_independent_channels_are_positions_of_their_own():
    torch.manual_seed(0)
    layer = patch_layer(independent=True, positions=8)
    x = np.stack([np.arange(5.0), -np.arange(5.0)], 1)  # (5 steps, 2 channels): 3 patches per channel
    embeds, mask = layer(framed([x]))
    assert mask.sum() == 2 + 2 * 3
    with torch.no_grad():
        padded = np.concatenate([x, x[-1:], x[-1:]])
        for c in range(2):
            for k in range(3):
                patch = torch.tensor(padded[2 * k : 2 * k + 3, c], dtype=torch.float32)
                want = layer.proj(patch) + layer.channel[c] + layer.position[k]
                assert torch.allclose(embeds[0, 1 + 3 * c + k], want, atol=1e-6)


@pytest.mark.parametrize("independent", [False, True])
def test_max_input_length_is_the_most_steps_that_fit(independent):
    layer = patch_layer(independent=independent)
    for positions in (4, 9, 40):
        n = layer.max_input_length(positions) - 2
        need = lambda steps: int(layer.patches(torch.tensor([steps]))) * (2 if independent else 1) + 2  # noqa: E731
        assert need(n) <= positions < need(n + 1) or n == 1


def test_digits_write_sign_and_fixed_precision():
    layer = DigitsInput(2, 1, 2, "none", Rows(), (True, False))
    x = np.array([[-1.256, 0.5], [12.0, 0.0]])  # 12.0 saturates at 9.99
    embeds, mask = layer(framed([x], eos=False))
    tokens = [DIGIT_SYMBOLS[int(v) - NUM_FRAMING] for v in embeds[0, 1:, 0].tolist()]
    assert "".join(tokens) == "-126+050,+999+000,"
    assert mask.tolist() == [[1] * 19] and embeds[0, 0, 0] == BOS
    assert layer.max_input_length(1 + 18) == 1 + 2 and layer.max_input_length(1 + 17) == 1 + 1


# ----------------------------------------------------------------------------------------------------
# every objective x every family, end to end


def series_task(tmp_path, objective: str) -> dict:
    """Small learnable series files: two-channel rising/falling classes (long CSV), a univariate
    slope to regress (wide CSV), or two-channel sines to forecast (long CSV)."""
    rng = np.random.default_rng(0)
    rows = []
    if objective == "forecasting":
        for sid in range(4):
            t = np.arange(30)
            for step in t:
                a, b = np.sin(step / 2 + sid) * (sid + 1) + 5 * sid, np.cos(step / 3) + sid
                rows.append(f"s{sid},{step},{a:.4f},{b:.4f}")
        (tmp_path / "f.csv").write_text("id,time,a,b\n" + "\n".join(rows) + "\n")
        return {"name": "timeseries", "data_files": str(tmp_path / "f.csv"), "horizon": 2, "context": 8}
    for i in range(60):
        n = int(rng.integers(6, 11))
        slope = rng.uniform(-1, 1)
        x = slope * np.arange(n) + rng.normal(0, 0.1, n)
        if objective == "classification":
            label = "up" if slope > 0 else "down"
            rows.extend(f"{i},{t},{x[t]:.4f},{-x[t] + 1:.4f},{label}" for t in range(n))
        else:
            rows.append(f"{i},{slope:.4f}," + ",".join(f"{v:.4f}" for v in x) + "," * (10 - n))
    if objective == "classification":
        (tmp_path / "c.csv").write_text("id,time,a,b,label\n" + "\n".join(rows) + "\n")
        return {"name": "timeseries", "data_files": str(tmp_path / "c.csv")}
    header = "id,label," + ",".join(f"t{t}" for t in range(10))
    (tmp_path / "r.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    return {"name": "timeseries", "data_files": str(tmp_path / "r.csv")}


ADAPTERS = {  # objective -> the input adapter it is run with (each adapter and mode covered)
    "classification": {"name": "patch_linear", "patch_len": 3, "stride": 2, "channels": "independent"},
    "regression": {"name": "digits", "integers": 1, "decimals": 1},
    "forecasting": {"name": "patch_linear", "patch_len": 2, "stride": 2, "positions": "learned", "max_patches": 8},
}
TRAIN = {"lr": 1e-2, "batch_size": 16, "steps": 4, "eval_every": 2, "warmup": 0, "precision": "fp32"}


@pytest.mark.parametrize("objective", list(ADAPTERS))
def test_each_objective_trains_only_its_parameters(tmp_path, family, objective):
    raw = tiny_recipe(family, tmp_path, task=series_task(tmp_path, objective), input=ADAPTERS[objective])
    _, task, model, split = build(raw)
    loss_of = task.info.objective.loss
    before = snapshot(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = on_device(split.collate(list(range(16))), model)
    labels = batch.pop("labels")
    model.eval()  # no dropout: the same batch's loss must fall step by step on the whole
    losses = []
    for _ in range(12):
        loss = loss_of(model(**batch), labels)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    roles = model.param_infos()
    moved = {roles[n].role for n in changed(before, model)}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert changed(before, model) <= trainable
    assert {"adapter", "head"} <= moved <= {"adapter", "head", "input"}
    assert ("input" in moved) == (ADAPTERS[objective]["name"] == "patch_linear")


@pytest.mark.parametrize("objective", list(ADAPTERS))
def test_predict_evaluate_and_plain_export_agree(tmp_path, family, objective):
    raw = tiny_recipe(family, tmp_path, task=series_task(tmp_path, objective), input=ADAPTERS[objective], train=TRAIN)
    run_dir = run(validate_recipe(raw)).run_dir
    result = json.loads((run_dir / "result.json").read_text())["metrics"]
    predictor = Predictor(run_dir)
    scored = predictor.evaluate(["test"])["test"]
    objective_ = predictor.session.task.info.objective  # fitted on the training split, as the run's
    assert result["primary"] == objective_.primary and result["test"][objective_.primary] == pytest.approx(
        scored[objective_.primary], rel=1e-5
    )
    test = predictor.session.task.splits["test"]
    texts = [json.dumps(np.asarray(x).tolist()) for x in test["values"]]
    ours = predictor.logits(texts)
    labels = objective_.label_tensor(test["label"])
    for name, value in objective_.metrics(ours, labels).items():  # predict's outputs score as evaluate did
        assert value == pytest.approx(scored[name], rel=1e-5, abs=1e-7), name
    out = export_run(run_dir, tmp_path / "export")
    plain, _ = plain_load(out.out_dir)
    theirs = plain.logits([np.asarray(x, dtype=np.float32) for x in test["values"]])
    assert theirs.shape == ours.shape and (theirs - ours).abs().max().item() <= 1e-5
    answers = plain.predict([np.asarray(x) for x in test["values"][:4]])
    if objective == "classification":
        assert answers == predictor.predict(texts[:4])
    else:  # numbers: equal to float32 rounding
        assert np.allclose(answers, predictor.predict(texts[:4]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "section",
    [{"name": "digits", "table": "learned", "trainable": True}, {"name": "patch_linear", "patch_len": 4, "stride": 4}],
    ids=["digits_learned", "patch_mixed"],
)
def test_other_modes_export_too(tmp_path, section):
    raw = tiny_recipe("bert", tmp_path, task=series_task(tmp_path, "classification"), input=section, train=TRAIN)
    run_dir = run(validate_recipe(raw)).run_dir
    predictor = Predictor(run_dir)
    predictor.session.load_task()
    values = predictor.session.task.splits["test"]["values"]
    out = export_run(run_dir, tmp_path / "export")
    plain, _ = plain_load(out.out_dir)
    ours = predictor.logits([json.dumps(np.asarray(x).tolist()) for x in values])
    assert (plain.logits([np.asarray(x, dtype=np.float32) for x in values]) - ours).abs().max().item() <= 1e-5
    _, _, model, _ = build(raw)
    trained = {model.param_infos()[n].role for n, p in model.named_parameters() if p.requires_grad}
    assert "input" in trained  # the learned digit table, or the projection


@pytest.mark.parametrize("objective", list(ADAPTERS))
def test_each_objective_trains_in_bf16_autocast(tmp_path, objective):
    """`precision: auto` is bf16 on GPUs and bf16 CPUs: every objective's loss, metrics and output
    scaling (regression's standardisation, forecasting's instance normalisation) stay finite under
    autocast, and the trained weights stay float32."""
    train = {**TRAIN, "precision": "bf16", "steps": 6, "eval_every": 3}
    raw = tiny_recipe("llama", tmp_path, task=series_task(tmp_path, objective), input=ADAPTERS[objective], train=train)
    done = run(validate_recipe(raw))
    record = done.record
    assert record.completed and record.precision == "bf16"
    assert all(p.loss is not None and math.isfinite(p.loss) for p in record.train_log)
    assert record.train_log[-1].loss < record.train_log[0].loss * 1.5  # no blow-up under bf16 rounding
    assert all(math.isfinite(v) for v in record.metrics.test.values())
    saved = load_file(str(done.run_dir / "weights.safetensors"))
    assert all(t.dtype == torch.float32 for n, t in saved.items() if "lora_" in n or n.startswith("head."))
