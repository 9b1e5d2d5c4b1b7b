"""Task data checked when it loads: LRA TSV rows (labels in range, brackets, bytes, empty files) with
file:line, empty splits, labels outside the task's classes, and ListOps generation that cannot finish
(an error within seconds, never a hang)."""

from __future__ import annotations

import json
import subprocess
import sys

import datasets
import pytest

from peftx.errors import PeftxError
from peftx.tasks import TASKS
from peftx.tasks.listops.task import generate_splits, load_lra_tsv, parse_expression
from peftx.tasks.protein.files import read_fasta, read_labels, read_tape_json
from peftx.tasks.splits import check_splits
from tests.support.bad_inputs import assert_one_line, invoke, write
from tests.support.tiny import tiny_recipe

HEADER = "Source\tTarget\n"
GOOD_ROW = "( [MAX 2 9 ] )\t9\n"

BAD_TSV = [
    ("label_too_big", HEADER + "[MAX 2 9 ]\t12\n", ":2: Target: '12' is not a label (0-9)"),
    ("label_negative", HEADER + GOOD_ROW + "[MAX 2 9 ]\t-1\n", ":3: Target: '-1' is not a label"),
    ("label_text", HEADER + "[MAX 2 9 ]\tnine\n", ":2: Target: 'nine' is not a label"),
    ("empty_source", HEADER + "\t3\n", ":2: Source: empty"),
    ("unbalanced", HEADER + "[MAX 2 9\t9\n", ":2: not a ListOps expression: unbalanced expression"),
    ("extra_bracket", HEADER + "[MAX 2 9 ] ]\t9\n", ":2: not a ListOps expression"),
    ("unknown_symbol", HEADER + "[MAX 2 x ]\t9\n", ":2: unknown ListOps symbol 'x'"),
    ("short_row", HEADER + "[MAX 2 9 ]\n", ":2: fewer fields than the header's 2"),
    ("long_row", HEADER + "[MAX 2 9 ]\t9\t3\n", ":2: more fields than the header's 2"),
    ("no_header", "", ": expected columns Source and Target"),
    ("header_only", HEADER, ": no examples"),
    ("binary", b"\x00\x01\x02\x03", ":1: binary data (a NUL byte)"),
    ("latin1", (HEADER + GOOD_ROW + "[MAX 2 9 ]\t9 \xe9\n").encode("latin-1"), ":3: not UTF-8 text"),
    ("wrong_columns", "Input\tLabel\n1\t1\n", ": expected columns Source and Target"),
]


def lra_dir(tmp_path, bad_file: str | None = None, content: str | bytes = ""):
    for name in ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv"):
        write(tmp_path / "lra" / name, HEADER + GOOD_ROW)
    if bad_file is not None:
        write(tmp_path / "lra" / bad_file, content)
    return tmp_path / "lra"


@pytest.mark.parametrize("name, content, message", BAD_TSV, ids=[c[0] for c in BAD_TSV])
def test_bad_lra_rows_name_file_and_line(tmp_path, name, content, message):
    folder = lra_dir(tmp_path, "basic_val.tsv", content)
    with pytest.raises(PeftxError, match=None) as e:
        load_lra_tsv(folder)
    assert f"{folder / 'basic_val.tsv'}{message}" in str(e.value) and "\n" not in str(e.value)


def test_lra_rows_that_are_fine(tmp_path):
    splits = load_lra_tsv(lra_dir(tmp_path, "basic_test.tsv", HEADER + GOOD_ROW + "[SM 1 [MIN 3 4 ] ]\t4\n"))
    assert splits["test"]["label"] == [9, 4]


def test_run_on_bad_lra_file_is_one_line_and_leaves_the_data(tmp_path):
    folder = lra_dir(tmp_path, "basic_train.tsv", HEADER + "[MAX 2 9 ]\t-1\n")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    recipe = write(
        tmp_path / "r.yaml", tiny_recipe("bert", tmp_path, task={"name": "listops", "data_dir": str(folder)})
    )
    assert_one_line(invoke("run", recipe, "--quiet"), "basic_train.tsv:2: Target: '-1' is not a label")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing of the user's touched


def _splits(**sizes) -> datasets.DatasetDict:
    features = datasets.Features(
        {"tokens": datasets.Sequence(datasets.Value("int8")), "label": datasets.Value("int64")}
    )
    return datasets.DatasetDict(
        {
            s: datasets.Dataset.from_dict({"tokens": [[1]] * n, "label": [0] * n}, features=features)
            for s, n in sizes.items()
        }
    )


def test_empty_or_missing_splits_and_labels_out_of_range_are_refused():
    with pytest.raises(PeftxError, match="data: t validation split is empty"):
        check_splits(_splits(train=2, validation=0, test=2), "t", "data", 3)
    with pytest.raises(PeftxError, match="data: t data lacks its test split"):
        check_splits(_splits(train=2, validation=2), "t", "data", 3)
    bad = _splits(train=3, validation=1, test=1)
    bad["train"] = bad["train"].map(lambda ex, i: {"label": -1 if i == 2 else 0}, with_indices=True)
    with pytest.raises(PeftxError, match="data: t train example 2: label -1 outside 0..2"):
        check_splits(bad, "t", "data", 3)
    check_splits(_splits(train=1, validation=1, test=1), "t", "data", 3)


@pytest.mark.parametrize("generator", [1, 2])
def test_generation_that_cannot_finish_fails_in_seconds(generator):
    # max_depth 2, max_args 2: lengths 1 and 4 only, 410 distinct expressions for 1,000 asked
    with pytest.raises(PeftxError, match=r"only 410 of the 1,000 asked for .* ask for fewer"):
        generate_splits(
            0,
            min_length=0,
            max_length=5,
            max_depth=2,
            max_args=2,
            n_train=800,
            n_val=100,
            n_test=100,
            generator=generator,
        )


def test_run_that_could_hang_exits_2_within_a_timeout(tmp_path):
    task = {"name": "listops", "preset": "tiny", "min_length": 0, "max_length": 5, "max_depth": 2, "max_args": 2}
    task |= {"n_train": 800, "n_val": 100, "n_test": 100}
    recipe = write(tmp_path / "r.yaml", tiny_recipe("bert", tmp_path, task=task))
    env = {"PEFTX_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "peftx", "run", recipe, "--quiet"], capture_output=True, text=True, timeout=240, env=env
    )
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "draws without a new expression" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("text", ["[MAX 2 9", "[MAX 2 9 ] ]", "]", "[MAX ]", "()"])
def test_predict_parse_refuses_unbalanced_expressions(text):
    with pytest.raises(PeftxError, match="not a ListOps expression"):
        parse_expression(text)
    assert parse_expression("( [MAX 2 9 ] )") == parse_expression("[MAX 2 9 ]")


def test_protein_text_files_refuse_bytes_and_name_lines(tmp_path):
    fasta = tmp_path / "x.fasta"
    fasta.write_bytes(b">a\nMKV\n>b\nMK\xffV\n")
    with pytest.raises(PeftxError, match=r"x.fasta:4: not UTF-8 text"):
        read_fasta(fasta)
    labels = tmp_path / "x.labels"
    labels.write_bytes(b"a\t1\n\x00")
    with pytest.raises(PeftxError, match=r"x.labels:2: binary data"):
        read_labels(labels)
    js = tmp_path / "x.json"
    js.write_text('[{"primary": "MKV", "fold_label": 1},\n{"primary": ]')
    with pytest.raises(PeftxError, match=r"x.json: not valid JSON \(line 2"):
        read_tape_json(js)


def test_vector_values_beyond_float32_are_data_errors_at_file_and_line(tmp_path):
    """1e308 is a finite float64 but inf in float32: a data error at its line, not a divergence."""

    path = tmp_path / "v.jsonl"
    rows = [{"x": [[0.5, 1.0]], "y": i % 2} for i in range(6)]
    rows[3]["x"] = [[0.5, 1e308]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = TASKS.get("sequences").model_validate(
        {
            "name": "sequences",
            "data_files": {s: str(path) for s in ("train", "validation", "test")},
            "input_column": "x",
            "label_column": "y",
        }
    )
    with pytest.raises(PeftxError, match=r"v.jsonl:4: column 'x': 1e\+308 is too large for float32") as e:
        task.load()
    assert "\n" not in str(e.value)
