"""The `peft` method: peft's layer tuners on every family. Each trains a few steps and only its own
parameters (and the head) move; what peft cannot do is a one-line error; budgets count the tuners;
a trained run reloads exactly."""

from __future__ import annotations

import pytest

from peftx.errors import PeftxError
from tests.support.helpers import build, changed, snapshot, train_steps
from tests.support.tiny import FAMILY_NAMES, tiny_recipe

# tuner -> config fields that fit the tiny models (hidden 32)
TUNERS = {
    "loha": {"r": 4},
    "lokr": {"r": 4},
    "vera": {"r": 8},
    "oft": {"oft_block_size": 8, "r": 0},
    "boft": {},
    "adalora": {"init_r": 4, "target_r": 2},
    "fourierft": {"n_frequency": 64},
    "hra": {"r": 4},
    "ln_tuning": {},
    "miss": {"r": 8},
    "randlora": {},
}
# peft implements these for torch Linear layers only; GPT-2's projections are transformers' Conv1D
LINEAR_ONLY = {"loha", "lokr", "oft", "boft", "hra", "miss"}


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("tuner", sorted(TUNERS))
def test_tuner_trains_only_its_parameters(tuner, family):
    raw = tiny_recipe(family, method={"name": "peft", "tuner": tuner, "config": TUNERS[tuner]})
    if family == "gpt2" and tuner in LINEAR_ONLY:
        with pytest.raises(PeftxError, match=rf"^method.config: peft {tuner.upper()} on gpt2: .*Conv1D"):
            build(raw)
        return
    _, _, model, split = build(raw)
    infos = model.param_infos()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {infos[n].role for n in trainable} == {"adapter", "head"}
    before = snapshot(model)
    losses = train_steps(model, split, 3, weight_decay=0.0)
    moved = changed(before, model)
    assert moved <= trainable  # nothing frozen moved: not the body, not the input layer
    assert any(infos[n].role == "adapter" for n in moved)
    assert any(infos[n].role == "head" for n in moved)
    assert all(loss == loss for loss in losses)  # finite


def test_ln_tuning_trains_copies_of_the_layer_norms():
    _, _, model, _ = build(tiny_recipe("bert", method={"name": "peft", "tuner": "ln_tuning"}))
    infos = model.param_infos()
    adapters = [n for n, p in model.named_parameters() if infos[n].role == "adapter" and p.requires_grad]
    norms = [n for n, i in infos.items() if i.role == "layer_norm"]
    assert len(adapters) == len(norms) and all(".ln_tuning_layers.default." in n for n in adapters)


def test_targets_as_roles_names_or_regexes():
    def adapted(targets):
        method = {"name": "peft", "tuner": "loha", "config": {"r": 2, "target_modules": targets}}
        _, _, model, _ = build(tiny_recipe("bert", method=method))
        return sorted({n.split(".hada_")[0] for n, i in model.param_infos().items() if i.role == "adapter"})

    by_name = adapted(["query", "value"])
    assert by_name == [f"backbone.encoder.layer.{i}.attention.self.{m}" for i in (0, 1) for m in ("query", "value")]
    assert adapted([r"encoder\.layer\.1\.attention\.self\.query"]) == [by_name[2]]
    assert len(adapted(["attention"])) == 2 * 4  # the family's attention role: q, k, v, out per layer
    with pytest.raises(PeftxError, match=r"^method.config.target_modules: 'nothing' matches no module of bert$"):
        adapted(["nothing"])


def test_config_mistakes_are_one_line_errors_when_read():
    from peftx.recipe import validate_recipe

    def error(method: dict) -> str:
        with pytest.raises(PeftxError) as e:
            validate_recipe(tiny_recipe("bert", method={"name": "peft", **method}), "r.yaml")
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "LoHaConfig has no field 'rr' (did you mean 'r'?" in error({"tuner": "loha", "config": {"rr": 4}})
    assert "unknown peft_type 'lohaa' (did you mean 'LOHA'?" in error({"tuner": "lohaa"})
    assert "give the tuner once" in error({"config": {"r": 4}})
    assert "PREFIX_TUNING is prompt learning" in error({"tuner": "prefix_tuning"})
    both = error({"config": {"peft_type": "OFT", "r": 4, "oft_block_size": 32}})  # peft's own check, one line
    assert "method: OFTConfig: You can only specify either r (4) or oft_block_size (32)" in both
    assert "TRAINABLE_TOKENS is not supported" in error({"tuner": "trainable_tokens"})


def test_budget_shows_the_tuners():
    from peftx.studies.budget import budget_command

    out = budget_command(
        models=["bert-base-uncased"],
        methods=["peft:loha", "peft:vera", "peft:lokr:config.r=4"],
        fmt="json",
        use_cache=False,
    )
    import json

    rows = json.loads(out.text)
    rows = rows if isinstance(rows, list) else rows["rows"]
    settings = [r["setting"] for r in rows]
    assert settings == ["tuner=loha", "tuner=vera", "tuner=lokr, config={'r': 4}"]
    trainable = [r["budget"]["trainable"] for r in rows]
    # BERT-base, query and value of 12 layers (768 x 768), head 768 x 10 + 10
    head = 768 * 10 + 10
    assert trainable[0] == 12 * 2 * 2 * 8 * (768 + 768) + head  # LoHa: two rank-8 pairs per matrix
    assert trainable[1] == 12 * 2 * (256 + 768) + head  # VeRA: lambda_d (r=256) and lambda_b (out)
    assert trainable[2] < trainable[1]


@pytest.mark.parametrize("tuner", ["vera", "adalora"])
def test_a_trained_run_reloads_exactly(tuner, tmp_path):
    from peftx.recipe import validate_recipe
    from peftx.runs.predict import Predictor
    from peftx.runs.run import run

    raw = tiny_recipe("bart", tmp_path, method={"name": "peft", "tuner": tuner, "config": TUNERS[tuner]})
    out = run(validate_recipe(raw))
    scores = Predictor(out.run_dir).evaluate(["test"])
    assert scores["test"]["accuracy"] == pytest.approx(out.record.metrics.test_accuracy, abs=1e-9)
    assert scores["test"]["loss"] == pytest.approx(out.record.metrics.test_loss, rel=1e-5)
