"""Broken run directories and inputs under `predict` and `evaluate` (weights truncated, empty, garbage
or non-finite; result.json and recipe.yaml broken; predict inputs in odd encodings), and `report` on
broken result files: one line, exit 2."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from tests.support.bad_inputs import assert_one_line, invoke, write
from tests.support.tiny import tiny_recipe


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished tiny run (trained once for this module)."""
    tmp = tmp_path_factory.mktemp("trained")
    result = invoke("run", write(tmp / "tiny.yaml", tiny_recipe("bert", tmp)), "--quiet")
    assert result.exit_code == 0, result.output
    run_dir = tmp / "runs" / "tiny_bert"
    write(tmp / "in.txt", "[MAX 2 9 ]\n")
    return run_dir


def _non_finite(d):
    state = load_file(str(d / "weights.safetensors"))
    name = next(n for n, t in state.items() if t.is_floating_point())
    state[name][...] = float("inf")
    save_file(state, str(d / "weights.safetensors"))


def _weights(d, data: bytes | None = None) -> bytes:
    """The run's weights file's bytes; with `data`, replace them."""
    if data is not None:
        (d / "weights.safetensors").write_bytes(data)
    return (d / "weights.safetensors").read_bytes()


def _result(d, **changes):
    data = json.loads((d / "result.json").read_text()) | changes
    (d / "result.json").write_text(json.dumps(data))


BROKEN_RUNS = [
    ("weights_truncated", lambda d: _weights(d, _weights(d)[:300]), "weights.safetensors: not a readable safetensors"),
    ("weights_empty", lambda d: (d / "weights.safetensors").write_bytes(b""), "weights.safetensors: not a readable"),
    ("weights_garbage", lambda d: _weights(d, b"\x93NUMPY" * 500), "not a readable safetensors"),
    ("weights_missing", lambda d: (d / "weights.safetensors").unlink(), "weights.safetensors: missing"),
    ("weights_non_finite", _non_finite, "holds non-finite values (inf or nan)"),
    ("result_truncated", lambda d: (d / "result.json").write_text((d / "result.json").read_text()[:99]),
     "result.json: not a readable result file"),
    ("result_empty", lambda d: (d / "result.json").write_text(""), "result.json: not a readable result file"),
    ("result_binary", lambda d: (d / "result.json").write_bytes(b"\xff\xfe\x00\x01"), "result.json: not a readable"),
    ("result_list", lambda d: (d / "result.json").write_text("[]"), "result.json: not a run record"),
    ("result_schema_text", lambda d: _result(d, schema_version="2"), "result.json: schema_version: expected an int"),
    ("result_schema_newer", lambda d: _result(d, schema_version=99), "schema_version 99 is newer"),
    ("result_status", lambda d: _result(d, status=3), "result.json: status: Input should be"),
    ("result_running", lambda d: _result(d, status="running"), "run status is 'running', not 'completed'"),
    ("recipe_binary", lambda d: (d / "recipe.yaml").write_bytes(b"\x00\x00"), "recipe.yaml:1: binary data"),
    ("recipe_missing", lambda d: (d / "recipe.yaml").unlink(), "recipe.yaml: no such recipe file"),
    ("recipe_duplicate_key", lambda d: (d / "recipe.yaml").write_text((d / "recipe.yaml").read_text() + "seed: 1\n"),
     "recipe.yaml:"),
]  # fmt: skip


@pytest.mark.parametrize("name, mutate, message", BROKEN_RUNS, ids=[c[0] for c in BROKEN_RUNS])
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_broken_run_directory_is_one_line(trained, tmp_path, command, name, mutate, message):
    run_dir = tmp_path / name
    shutil.copytree(trained, run_dir)
    mutate(run_dir)
    args = [command, run_dir] + ([trained.parent.parent / "in.txt"] if command == "predict" else [])
    assert_one_line(invoke(*args), message)


BAD_INPUTS = [
    ("unbalanced", "[MAX 2 9 ]\n[MAX 2 9\n", "in.txt:2: not a ListOps expression: unbalanced"),
    ("unknown_symbol", "\n\n[MAX 2 x ]\n", "in.txt:3: unknown ListOps symbol 'x'"),
    ("utf16_without_bom", "[MAX 2 9 ]\n".encode("utf-16-le"), "in.txt:1: binary data"),
    ("binary", b"\x89PNG\r\n\x1a\n\x00\x00", "in.txt:1: not UTF-8 text (byte 0x89"),
    ("latin1", "[MAX 2 9 ]\n[MIN 1 2 ] \xe9\n".encode("latin-1"), "in.txt:2: not UTF-8 text"),
    ("tsv_extra_field", "Source\tTarget\n[MAX 2 9 ]\t9\t1\n", "in.txt:2: more fields than the header's 2"),
    ("tsv_empty_source", "Source\tTarget\n\t9\n", "in.txt:2: Source: empty"),
]


@pytest.mark.parametrize("name, content, message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_predict_inputs_are_one_line_naming_file_and_line(trained, tmp_path, name, content, message):
    assert_one_line(invoke("predict", trained, write(tmp_path / "in.txt", content)), message)


def test_predict_inputs_that_are_fine(trained, tmp_path):
    for content in ("[MAX 2 9 ]\n".encode("utf-16"), "\ufeff[MAX 2 9 ]\r\n".encode(), b""):
        out = invoke("predict", trained, write(tmp_path / "in.txt", content))
        assert out.exit_code == 0, out.output
    assert_one_line(invoke("predict", trained, tmp_path), f"{tmp_path}: is a folder, not a input file")
    assert_one_line(invoke("predict", trained, tmp_path / "none.txt"), "none.txt: no such input file")


def test_report_skips_or_names_broken_result_files(trained, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(trained, runs / "good")
    (runs / "broken").mkdir()
    (runs / "broken" / "result.json").write_bytes(b"\xff\x00garbage")
    out = invoke("report", runs, "--out", tmp_path / "out")
    assert "Traceback" not in out.output and out.exit_code in (0, 2), out.output
    if out.exit_code == 2:
        assert_one_line(out, "broken")


def test_predict_from_stdin_names_stdin_and_line(trained):
    from peftx.cli import app
    from tests.support.bad_inputs import runner

    out = runner.invoke(app, ["predict", str(trained), "-"], input="[MAX 2 9 ]\n[MIN 1\n")
    assert_one_line(out, "<stdin>:2: not a ListOps expression")
    out = runner.invoke(app, ["predict", str(trained), "-"], input=b"[MAX 2 \xff ]\n")
    assert_one_line(out, "<stdin>:1: not UTF-8 text")
