"""Local model directories: custom code refused unless trusted (and never run), pickle weights refused
unless allowed, corrupt configs and safetensors headers named in one line by validate and run, the
weights' sha256 recorded and pinned."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertConfig, BertModel

from peftx.errors import PeftxError
from peftx.model.files import check_local_dir, file_sha256
from peftx.model.loading import load_backbone
from tests.support.bad_inputs import assert_one_line, invoke, write
from tests.support.tiny import TINY, tiny_recipe


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny pretrained BERT in save_pretrained layout."""
    path = tmp_path_factory.mktemp("model") / "bert"
    BertModel(BertConfig(**TINY["bert"]["config_overrides"]), add_pooling_layer=False).save_pretrained(path)
    return path


def _config(d, **changes):
    data = json.loads((d / "config.json").read_text()) | changes
    (d / "config.json").write_text(json.dumps(data))


def _custom_code(d):
    _config(d, auto_map={"AutoConfig": "custom.CustomConfig"})
    # run, this code would leave a marker file: the tests check it never does
    (d / "custom.py").write_text(
        f"open({str(d / 'RAN')!r}, 'w').close()\nfrom transformers import BertConfig as CustomConfig\n"
    )


def _truncate(path, n: int) -> None:
    path.write_bytes(path.read_bytes()[:-n])


def _pickle_only(d):
    torch.save(load_file(str(d / "model.safetensors")), d / "pytorch_model.bin")
    (d / "model.safetensors").unlink()


BROKEN_DIRS = [
    ("custom_code", _custom_code, "ships its own Python code (auto_map)", "model.trust_remote_code: true"),
    ("custom_tokenizer", lambda d: (d / "tokenizer_config.json").write_text('{"auto_map": {}}'), "auto_map"),
    ("pickle_only", _pickle_only, "holds only pickle weights (pytorch_model.bin)", "model.allow_pickle: true"),
    ("no_weights", lambda d: (d / "model.safetensors").unlink(), "holds no weights file"),
    ("corrupt_header", lambda d: (d / "model.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"{garbage}" * 20),
     "model.safetensors: not a readable safetensors file"),
    ("truncated_weights", lambda d: _truncate(d / "model.safetensors", 999),
     "model.safetensors: not a readable safetensors file"),
    ("config_not_json", lambda d: (d / "config.json").write_text("{nope"), "config.json:1: not valid JSON"),
    ("config_binary", lambda d: (d / "config.json").write_bytes(b"\x00\x01"), "config.json:1: binary data"),
    ("config_list", lambda d: (d / "config.json").write_text("[1]"), "config.json: expected a JSON object"),
    ("config_no_model_type", lambda d: (d / "config.json").write_text("{}"), "model_type: required key is missing"),
    ("config_field_type", lambda d: _config(d, hidden_size="big"), "config.json: ", "hidden_size"),
    ("config_unknown_type", lambda d: _config(d, model_type="llama9"), "config.json: not a config"),
    ("config_zero_layers", lambda d: _config(d, num_hidden_layers=0), "has no encoder layers"),
    ("no_config", lambda d: (d / "config.json").unlink(), "is not a model directory (no config.json)"),
    ("tokenizer_garbage", lambda d: (d / "tokenizer.json").write_text("{garbage"), "cannot load its tokenizer"),
]  # fmt: skip


@pytest.mark.parametrize("case", BROKEN_DIRS, ids=[c[0] for c in BROKEN_DIRS])
@pytest.mark.parametrize("command", ["validate", "run"])
def test_broken_model_directory_is_one_line(model_dir, tmp_path, command, case):
    name, mutate, *messages = case
    d = tmp_path / name
    shutil.copytree(model_dir, d)
    mutate(d)
    recipe = write(tmp_path / "r.yaml", tiny_recipe("bert", tmp_path, model={"source": str(d)}))
    assert_one_line(invoke(command, recipe, *(["--quiet"] if command == "run" else [])), *messages)
    assert not (d / "RAN").exists()  # the directory's own code never ran


def test_trust_and_allow_lift_the_refusals(model_dir, tmp_path):
    d = tmp_path / "pickled"
    shutil.copytree(model_dir, d)
    _pickle_only(d)
    with pytest.raises(PeftxError, match="only pickle weights"):
        load_backbone(str(d))
    bb = load_backbone(str(d), allow_pickle=True)
    assert bb.provenance["sha256"] == file_sha256(d / "pytorch_model.bin")
    custom = tmp_path / "custom"
    shutil.copytree(model_dir, custom)
    _custom_code(custom)
    with pytest.raises(PeftxError, match="auto_map"):
        check_local_dir(custom)
    assert check_local_dir(custom, trust_remote_code=True)["model_type"] == "bert"


def test_sha256_is_recorded_and_pinned(model_dir, tmp_path):
    digest = file_sha256(model_dir / "model.safetensors")
    assert load_backbone(str(model_dir)).provenance["sha256"] == digest
    assert load_backbone(str(model_dir), sha256=digest).provenance["sha256"] == digest
    assert load_backbone(str(model_dir), sha256={"model.safetensors": digest}).provenance["sha256"] == digest
    with pytest.raises(PeftxError, match=f"model.sha256: model.safetensors of .* has sha256 {digest}, not the pinned"):
        load_backbone(str(model_dir), sha256="0" * 64)
    with pytest.raises(PeftxError, match=r"model.sha256: pins \['other.safetensors'\]"):
        load_backbone(str(model_dir), sha256={"other.safetensors": digest})
    raw = tiny_recipe("bert", tmp_path, model={"source": str(model_dir), "sha256": "0" * 64})
    assert_one_line(invoke("run", write(tmp_path / "r.yaml", raw), "--quiet"), "model.sha256: model.safetensors")
    raw["model"]["sha256"] = digest.upper()  # digests compare case-insensitively
    assert invoke("run", write(tmp_path / "r.yaml", raw), "--quiet").exit_code == 0
    record = json.loads((tmp_path / "runs" / "tiny_bert" / "result.json").read_text())
    assert record["backbone"]["sha256"] == digest
