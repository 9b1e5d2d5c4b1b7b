"""`peftx export`: plain transformers + peft + the exported snippet give peftx's own logits."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from safetensors.torch import load_file
from transformers import AutoModel
from typer.testing import CliRunner

import peftx.export.exporter as export_mod
import peftx.export.hub as hub_mod
from peftx.cli import app
from peftx.errors import PeftxError
from peftx.export.exporter import export_run, task_layers
from peftx.inputs import ExportedInput
from peftx.methods.soft_prompt import SoftPrompt
from peftx.model.loading import load_backbone
from peftx.recipe import validate_recipe
from peftx.runs.predict import Predictor
from peftx.runs.run import run
from peftx.tasks.listops.task import LABELS, VOCAB
from tests.support.helpers import build
from tests.support.tiny import TINY, tiny_recipe

EXPRS = ["[MAX 2 9 ]", "[MIN 4 [SM 3 8 ] 7 ]", "[MED 1 5 3 [MAX 0 0 ] ]", "5", "[SM [MAX 1 2 ] 9 3 4 ]"]

# Every method peft expresses, as peftx runs it: LoRA and its variants, IA3.
PEFT_METHODS = {
    "lora": {"name": "lora", "r": 4},
    "dora": {"name": "lora", "r": 4, "use_dora": True},
    "rslora": {"name": "lora", "r": 4, "use_rslora": True, "train_roles": ["layer_norm"]},
    "ia3": {"name": "ia3"},
    # any peft tuner through the generic `peft` method
    "loha": {"name": "peft", "tuner": "loha", "config": {"r": 4}},
    "lokr": {"name": "peft", "tuner": "lokr", "config": {"r": 4}},
    "vera": {"name": "peft", "tuner": "vera", "config": {"r": 4}},
    "ln_tuning": {"name": "peft", "tuner": "ln_tuning"},
}
OTHER_METHODS = {
    "frozen": {"name": "frozen", "preset": "fpt"},
    "bitfit": {"name": "bitfit"},
    "layers": {"name": "layers", "top": 1},
    "full": {"name": "full"},
    "prompt": {"name": "prompt", "length": 3},
}


def trained_run(tmp_path, family, method, pretrained_body=False, **sections):
    raw = tiny_recipe(family, tmp_path, method=method, **sections)
    if pretrained_body:  # a pretrained body in a local directory: the export names it as its base
        bb = load_backbone(TINY[family]["source"], pretrained=False, overrides=TINY[family]["config_overrides"])
        bb.model.save_pretrained(tmp_path / "base")
        raw["model"] = {"family": family, "source": str(tmp_path / "base"), "pretrained": True}
    return run(validate_recipe(raw)).run_dir


def plain_load(out_dir):
    """The export loaded as a user without peftx would: transformers, peft, task_model.py."""
    task = json.loads((out_dir / "task.json").read_text())
    spec = importlib.util.spec_from_file_location("task_model_under_test", out_dir / "task_model.py")
    snippet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(snippet)
    base = task["export"]["base"] or str(out_dir / "body")
    body = AutoModel.from_pretrained(base)
    if task["export"]["adapter"]:
        body = PeftModel.from_pretrained(body, out_dir)
    return snippet.TaskModel(body, out_dir).eval(), body


def assert_same_logits(run_dir, out_dir):
    model, _ = plain_load(out_dir)
    theirs = model.logits([e.split() for e in EXPRS])
    ours = Predictor(run_dir).logits(EXPRS)
    assert theirs.shape == ours.shape == (len(EXPRS), len(LABELS))
    assert (theirs - ours).abs().max().item() <= 1e-5
    assert model.predict([e.split() for e in EXPRS]) == Predictor(run_dir).predict(EXPRS)


@pytest.mark.parametrize("method", list(PEFT_METHODS))
def test_peft_round_trip(tmp_path, family, method):
    if family == "gpt2" and method in ("loha", "lokr"):
        pytest.skip("peft's LoHa and LoKr take no Conv1D, GPT-2's projection layer (refused at build)")
    run_dir = trained_run(tmp_path, family, PEFT_METHODS[method])
    out = export_run(run_dir, tmp_path / "export")
    assert out.adapter and out.base is None  # from scratch: the body travels too
    assert {"adapter_config.json", "adapter_model.safetensors", "body", "task_layers.safetensors"} <= set(out.files)
    assert_same_logits(run_dir, out.out_dir)
    # peft loads every saved key and expects no other
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, body = plain_load(out.out_dir)
    assert not [w for w in caught if "adapter keys" in str(w.message) or "unexpected" in str(w.message).lower()]
    saved = set(load_file(str(out.out_dir / "adapter_model.safetensors")))
    assert saved == set(get_peft_model_state_dict(body))


@pytest.mark.parametrize("method", ["lora", "ia3"])
def test_an_export_loads_the_plain_way_over_a_hub_shaped_base(tmp_path, family, method):
    """The base as the hub holds it (AutoModel's default class: BERT with its pooler, T5 and BART with
    their decoders) and the export loaded as a user would, default arguments: peft injects adapters
    exactly where peftx trained them (no module of the base that peftx's model lacks, such as BERT's
    pooler.dense, picks up a fresh adapter) and finds every saved key."""
    from transformers import AutoConfig

    bb = load_backbone(TINY[family]["source"], pretrained=False, overrides=TINY[family]["config_overrides"])
    config = AutoConfig.for_model(**bb.model.config.to_dict())
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(tmp_path / "base")
    raw = tiny_recipe(family, tmp_path, method=PEFT_METHODS[method])
    raw["model"] = {"family": family, "source": str(tmp_path / "base"), "pretrained": True}
    run_dir = run(validate_recipe(raw)).run_dir
    out = export_run(run_dir, tmp_path / "export")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, body = plain_load(out.out_dir)
    assert not [w for w in caught if "adapter keys" in str(w.message) or "unexpected" in str(w.message).lower()]
    trained = set(load_file(str(out.out_dir / "adapter_model.safetensors")))
    assert trained == set(get_peft_model_state_dict(body))  # no adapter beyond the trained ones
    theirs = model.logits([e.split() for e in EXPRS])
    assert (theirs - Predictor(run_dir).logits(EXPRS)).abs().max().item() <= 1e-5


def test_pretrained_base_is_named_not_copied(tmp_path, family):
    run_dir = trained_run(tmp_path, family, PEFT_METHODS["lora"], pretrained_body=True)
    out = export_run(run_dir, tmp_path / "export")
    config = json.loads((out.out_dir / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((tmp_path / "base").resolve()) == out.base
    assert "body" not in out.files
    assert_same_logits(run_dir, out.out_dir)


@pytest.mark.parametrize("method", list(OTHER_METHODS))
def test_other_methods_export_the_body(tmp_path, method):
    run_dir = trained_run(tmp_path, "bert", OTHER_METHODS[method], pretrained_body=True)
    out = export_run(run_dir, tmp_path / "export")
    assert not out.adapter and "adapter_config.json" not in out.files
    assert (out.out_dir / "body" / "config.json").is_file() and (out.out_dir / "body" / "model.safetensors").is_file()
    assert_same_logits(run_dir, out.out_dir)


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_prompt_offsets_of_other_families(tmp_path, family):
    run_dir = trained_run(tmp_path, family, OTHER_METHODS["prompt"])
    assert_same_logits(run_dir, export_run(run_dir, tmp_path / "export").out_dir)


PATCHES = {"name": "vision", "dataset": "digits", "patch": 2, "n_train": 256, "n_test": 64, "n_val": 64}
# input section -> (task, the kind of layer it exports as): every built-in kind on continuous inputs
CONTINUOUS_INPUTS = {
    "linear": ({"name": "linear"}, PATCHES, "linear"),
    "linear_learned_framing": ({"name": "linear", "framing": "learned"}, PATCHES, "linear"),
    "pixel_vocab": ({"name": "pixel_vocab", "levels": 16}, {**PATCHES, "mode": "pixels"}, "intensity_bins"),
}


@pytest.mark.parametrize("case", list(CONTINUOUS_INPUTS))
def test_continuous_inputs_round_trip(tmp_path, case):
    section, task, kind = CONTINUOUS_INPUTS[case]
    run_dir = trained_run(tmp_path, "bert", PEFT_METHODS["lora"], input=section, task=task)
    out = export_run(run_dir, tmp_path / "export")
    assert json.loads((out.out_dir / "task.json").read_text())["export"]["input_kind"] == kind
    images = []
    for i, pixels in enumerate(np.random.default_rng(0).integers(0, 256, (4, 8, 8), dtype=np.uint8)):
        np.save(tmp_path / f"image{i}.npy", pixels)
        images.append(str(tmp_path / f"image{i}.npy"))
    ours = Predictor(run_dir)
    model, _ = plain_load(out.out_dir)
    values = [ours.info.parse(path) for path in images]  # (seq, dim) stored pixel values of each image
    assert (model.logits(values) - ours.logits(images)).abs().max().item() <= 1e-5
    assert model.predict(values) == ours.predict(images)


class Declares(torch.nn.Module):
    """An input layer that declares a given export."""

    def __init__(self, exported: ExportedInput) -> None:
        super().__init__()
        self.exported = exported

    def forward(self, batch):
        return torch.zeros(*batch["input_ids"].shape, 32)

    def export_spec(self, spec):
        return self.exported


@pytest.mark.parametrize(
    "exported, message",
    [
        (ExportedInput("mystery", {"table": torch.zeros(3, 32)}), "input: export kind 'mystery' is not one"),
        (
            ExportedInput("linear", {"table": torch.zeros(3, 32)}),
            r"takes tensors \['table', 'proj.weight', 'proj.bias'\]",
        ),
    ],
)
def test_an_export_the_template_cannot_apply_is_refused(exported, message):
    _, task, model, _ = build(tiny_recipe("bert"))
    model.input = Declares(exported)
    with pytest.raises(PeftxError, match=message):
        task_layers(model, task.info.input_spec, body_exported=True)


def test_two_extras_of_one_kind_are_refused():
    """The template inserts one soft prompt; a second extra of that kind would overwrite the first."""
    _, task, model, _ = build(tiny_recipe("bert"))
    model.extras["prompt"] = SoftPrompt(torch.zeros(2, 32), offset=1)
    model.extras["more_prompt"] = SoftPrompt(torch.ones(2, 32), offset=1)
    message = r"method extra 'more_prompt': export name\(s\) \['prompt.vectors', 'prompt_offset'\] already taken"
    with pytest.raises(PeftxError, match=message):
        task_layers(model, task.info.input_spec, body_exported=True)


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_quantized_run_exports_its_adapter_for_the_full_precision_body(tmp_path, bits):
    pytest.importorskip("bitsandbytes")
    model = {**tiny_recipe("bert")["model"], "quantization": bits}
    if bits == "4bit":
        model["quant_type"] = "fp4"
    run_dir = trained_run(tmp_path, "bert", PEFT_METHODS["lora"], model=model)
    out = export_run(run_dir, tmp_path / "export")
    plain, _ = plain_load(out.out_dir)
    full = Predictor(run_dir, ["model.quantization=none", "model.quant_type=null", "train.precision=fp32"])
    assert (plain.logits([e.split() for e in EXPRS]) - full.logits(EXPRS)).abs().max().item() <= 1e-5


def test_prefix_exports_its_tensors_and_says_it_needs_peftx(tmp_path):
    run_dir = trained_run(tmp_path, "bert", {"name": "prefix", "length": 2})
    out = export_run(run_dir, tmp_path / "export")
    assert any(k.startswith("extras.prefix.") for k in load_file(str(out.out_dir / "task_layers.safetensors")))
    with pytest.raises(ValueError, match="reload it with peftx"):
        plain_load(out.out_dir)
    assert "peftx predict" in (out.out_dir / "README.md").read_text()


def test_task_file_in_run_and_export(tmp_path):
    run_dir = trained_run(tmp_path, "bert", PEFT_METHODS["lora"])
    task = json.loads((run_dir / "task.json").read_text())
    assert task["input"]["symbols"] == list(VOCAB.symbols) and task["labels"] == list(LABELS)
    assert task["index_space"] == {"pad": 0, "start": 1, "end": 2, "first_symbol": 3}
    assert task["framing"]["start"] and task["framing"]["end"] and task["family"] == "bert"
    out = export_run(run_dir, tmp_path / "export", command="peftx export r e")
    exported = json.loads((out.out_dir / "task.json").read_text())
    assert {k: v for k, v in exported.items() if k != "export"} == task
    card = (out.out_dir / "README.md").read_text()
    assert "peftx export r e" in card and "test accuracy" in card and "majority" in card
    assert "PeftModel.from_pretrained" in card and "from task_model import TaskModel" in card


def test_model_card_snippet_runs(tmp_path, monkeypatch):
    """The README's loading code, run as written (from the export directory), predicts labels."""
    run_dir = trained_run(tmp_path, "gpt2", PEFT_METHODS["lora"])
    out = export_run(run_dir, tmp_path / "export")
    card = (out.out_dir / "README.md").read_text()
    code = card.split("```python\n")[1].split("```")[0]
    assert code.count("\n") <= 9
    monkeypatch.chdir(out.out_dir)
    monkeypatch.syspath_prepend(str(out.out_dir))
    scope: dict = {}
    exec(compile(code.replace("model.predict(", "predicted = model.predict("), "README.md", "exec"), scope)
    assert len(scope["predicted"]) == 1 and scope["predicted"][0] in LABELS


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_never_overwrites_and_leaves_no_half_export(tmp_path, monkeypatch):
    run_dir = trained_run(tmp_path, "bert", PEFT_METHODS["lora"])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    for overwrite in (False, True):  # what is not an export is never replaced
        with pytest.raises(PeftxError, match="is not a peftx export; choose another OUT_DIR"):
            export_run(run_dir, mine, overwrite=overwrite)
    assert sorted(p.name for p in mine.iterdir()) == ["keep.txt"]
    out_dir = tmp_path / "export"
    export_run(run_dir, out_dir)
    with pytest.raises(PeftxError, match="holds an export already; pass --overwrite"):
        export_run(run_dir, out_dir)
    before = files_of(out_dir)

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(export_mod, "model_card", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        export_run(run_dir, out_dir, overwrite=True)
    assert files_of(out_dir) == before  # the old export stands
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "mine", "runs"]  # no temporary left
    monkeypatch.undo()
    (out_dir / "README.md").write_text("an older card")
    export_run(run_dir, out_dir, overwrite=True)
    assert (out_dir / "README.md").read_text() != "an older card"


@pytest.mark.parametrize("where", ["run", "inside", "parent"])
def test_a_target_that_is_holds_or_lies_in_the_run_is_refused(tmp_path, where):
    run_dir = trained_run(tmp_path, "bert", PEFT_METHODS["lora"])
    (tmp_path / "runs" / "notes.txt").write_text("keep")
    target = {"run": run_dir, "inside": run_dir / "export", "parent": run_dir.parent}[where]
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    with pytest.raises(PeftxError, match="is, holds or lies inside the run being exported"):
        export_run(run_dir, target, overwrite=True)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_of_two_racing_exports_the_second_refuses(tmp_path, monkeypatch):
    """Both start while OUT_DIR does not exist; the one that finishes second finds it taken."""
    run_dir = trained_run(tmp_path, "bert", PEFT_METHODS["lora"])
    out_dir = tmp_path / "export"
    card = export_mod.model_card

    def meanwhile(*a, **k):  # the other export lands while this one writes its files
        monkeypatch.setattr(export_mod, "model_card", card)
        export_run(run_dir, out_dir)
        return card(*a, **k)

    monkeypatch.setattr(export_mod, "model_card", meanwhile)
    with pytest.raises(PeftxError, match="was written by another process meanwhile"):
        export_run(run_dir, out_dir)
    first = {p.name for p in out_dir.iterdir()}
    assert "adapter_model.safetensors" in first and export_mod.is_export(out_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "runs"]  # no temporary left


def test_unfinished_run_is_refused(tmp_path):
    run_dir = trained_run(tmp_path, "bert", PEFT_METHODS["lora"])
    record = json.loads((run_dir / "result.json").read_text())
    record["status"] = "failed"
    (run_dir / "result.json").write_text(json.dumps(record))
    with pytest.raises(PeftxError, match="status is 'failed'"):
        export_run(run_dir, tmp_path / "export")


def test_cli_export_and_offline_push(tmp_path):
    run_dir = trained_run(tmp_path, "bert", PEFT_METHODS["lora"])
    runner = CliRunner()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok = runner.invoke(app, ["export", str(run_dir), str(tmp_path / "e1")])
    assert ok.exit_code == 0, ok.output
    assert "written: " in ok.stdout and (tmp_path / "e1" / "adapter_model.safetensors").is_file()
    # HF_HUB_OFFLINE=1 (conftest): one line, exit 2, before anything is exported
    pushed = runner.invoke(app, ["export", str(run_dir), str(tmp_path / "e2"), "--push-to-hub", "me/tiny"])
    assert pushed.exit_code == 2
    assert pushed.stderr.strip().splitlines() == [
        "error: --push-to-hub: cannot reach the Hugging Face hub for me/tiny (offline or HF_HUB_OFFLINE=1)"
    ]
    assert not (tmp_path / "e2").exists()
    again = runner.invoke(app, ["export", str(run_dir), str(tmp_path / "e1")])
    assert again.exit_code == 2 and "holds an export already; pass --overwrite" in again.stderr


def test_push_uses_the_hub_api(tmp_path, monkeypatch):
    """With a reachable hub, the export goes up through huggingface_hub (the API calls, recorded)."""
    calls = []

    class FakeApi:
        def create_repo(self, repo, private, exist_ok):
            calls.append(("create", repo, private, exist_ok))
            return f"https://huggingface.co/{repo}"

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(("upload", folder_path, repo_id))

    monkeypatch.setattr(hub_mod, "hub_reachable", lambda: True)
    monkeypatch.setattr(hub_mod, "HfApi", FakeApi)
    url = hub_mod.push_to_hub(tmp_path, "me/tiny", private=True)
    assert url == "https://huggingface.co/me/tiny"
    assert calls == [("create", "me/tiny", True, True), ("upload", str(tmp_path), "me/tiny")]
    with pytest.raises(PeftxError, match="not a repository id"):
        hub_mod.check_hub("no-owner")


def test_a_shuffled_body_is_exported_not_named_and_an_ablated_one_is_refused(tmp_path):
    raw = tiny_recipe("bert", tmp_path, method=PEFT_METHODS["lora"])
    bb = load_backbone(TINY["bert"]["source"], pretrained=False, overrides=TINY["bert"]["config_overrides"])
    bb.model.save_pretrained(tmp_path / "base")
    raw["model"] = {"family": "bert", "source": str(tmp_path / "base"), "init": "shuffled"}
    run_dir = run(validate_recipe(raw)).run_dir
    out = export_run(run_dir, tmp_path / "export")
    assert out.base is None and "body" in out.files  # the original checkpoint is not these weights
    assert_same_logits(run_dir, out.out_dir)
    raw["model"] = {**raw["model"], "init": "pretrained", "body": "none"}
    raw["output"]["name"] = "ablated"
    ablated = run(validate_recipe(raw)).run_dir
    with pytest.raises(PeftxError, match="model.body: none has no plain transformers form"):
        export_run(ablated, tmp_path / "export2")
