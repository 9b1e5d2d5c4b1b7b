"""The `sequences` task: one's own data from CSV / TSV / JSON Lines / Parquet files, run end to end
with every input adapter that fits it, predicted from a file of the same format, and one-line errors
for bad files."""

from __future__ import annotations

import csv
import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from peftx.cli import app
from peftx.errors import PeftxError
from peftx.tasks import TASKS
from tests.support.tiny import tiny_recipe

runner = CliRunner()


def parity_rows(n: int, seed: int) -> list[tuple[str, str]]:
    """(bits, 'even' | 'odd') rows: the parity of a random bit string."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        bits = "".join(rng.choice("01") for _ in range(rng.randint(3, 10)))
        rows.append((bits, "odd" if bits.count("1") % 2 else "even"))
    return rows


def write_csv(path, rows, header=("sequence", "label"), delimiter=","):
    with path.open("w", newline="") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def parity_files(tmp_path) -> dict[str, str]:
    files = {}
    for split, n, seed in (("train", 96, 0), ("validation", 32, 1), ("test", 32, 2)):
        files[split] = str(write_csv(tmp_path / f"{split}.csv", parity_rows(n, seed)))
    return files


def task_config(**fields):
    return TASKS.get("sequences").model_validate({"name": "sequences", **fields})


def write_recipe(tmp_path, raw) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_parity_csv_runs_with_pretrained_vocab_and_predicts_from_csv(tmp_path):
    task = {"name": "sequences", "data_files": parity_files(tmp_path), "tokenize": "chars"}
    raw = tiny_recipe("bert", tmp_path, task=task, input={"name": "pretrained_vocab"})
    result = runner.invoke(app, ["run", write_recipe(tmp_path, raw), "--quiet"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny_bert"
    res = json.loads((run_dir / "result.json").read_text())
    assert res["status"] == "completed"
    assert set(res["baselines"]) == {"majority_class"}
    notes = "\n".join(res["data_notes"])
    # the vocabulary, sorted with its training counts, and length statistics are in the run's notes
    ones = sum(bits.count("1") for bits, _ in parity_rows(96, 0))
    zeros = sum(bits.count("0") for bits, _ in parity_rows(96, 0))
    assert f"(2 symbols, sorted, train counts): 0:{zeros} 1:{ones}" in notes
    assert "train: 96 rows, length min 3" in notes and "max 10" in notes

    inputs = write_csv(tmp_path / "to_predict.csv", [("0110", "even"), ("111", "odd"), ("1", "odd")])
    pred = runner.invoke(app, ["predict", str(run_dir), str(inputs)])
    assert pred.exit_code == 0, pred.output
    lines = pred.stdout.strip().splitlines()
    assert lines[0] == "input\tprediction\ttarget"
    assert [line.split("\t")[0] for line in lines[1:]] == ["0110", "111", "1"]
    assert all(line.split("\t")[1] in ("even", "odd") for line in lines[1:])
    assert "accuracy against Target" in pred.stderr

    unknown = runner.invoke(app, ["predict", str(run_dir), str(write_csv(tmp_path / "bad.csv", [("01x", "odd")]))])
    assert unknown.exit_code == 2
    assert "input 1: unknown symbol 'x' (not among the 2 symbols of the training split)" in unknown.stderr


def test_learned_input_runs_on_the_same_files(tmp_path):
    from peftx.recipe import validate_recipe
    from peftx.runs.run import run

    task = {"name": "sequences", "data_files": parity_files(tmp_path), "tokenize": "chars"}
    out = run(validate_recipe(tiny_recipe("gpt2", tmp_path, task=task, input={"name": "learned"})))
    assert out.record.status == "completed"
    assert out.record.budget.by_role["input"]["trainable"] == (3 + 2) * 32  # framing + 2 symbols, hidden 32


def vector_rows(n: int, seed: int, dim: int = 3) -> tuple[list, list]:
    """Sequences of `dim`-vectors; the label says whether the first coordinates sum above zero."""
    rng = random.Random(seed)
    xs, ys = [], []
    for _ in range(n):
        seq = [[rng.gauss(0, 1) for _ in range(dim)] for _ in range(rng.randint(2, 6))]
        xs.append(seq)
        ys.append(int(sum(v[0] for v in seq) > 0))
    return xs, ys


def write_parquet(path, xs, ys, input_column="sequence"):
    pq.write_table(pa.table({input_column: xs, "label": ys}), path)
    return path


def test_parquet_vectors_run_with_linear_and_predict_from_parquet(tmp_path):
    files = {}
    for split, n, seed in (("train", 64, 0), ("validation", 16, 1), ("test", 16, 2)):
        files[split] = str(write_parquet(tmp_path / f"{split}.parquet", *vector_rows(n, seed)))
    cfg = task_config(data_files=files)
    assert cfg.default_input() == "linear"
    task = {"name": "sequences", "data_files": files}
    raw = tiny_recipe("t5", tmp_path, task=task, input={"name": "linear"})
    result = runner.invoke(app, ["run", write_recipe(tmp_path, raw), "--quiet"])
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny_t5"
    res = json.loads((run_dir / "result.json").read_text())
    assert res["status"] == "completed" and "vectors of 3 numbers per position" in res["data_notes"]
    assert res["budget"]["by_role"]["input"]["trainable"] == 3 * 32 + 32  # Linear(3, hidden 32)

    xs, ys = vector_rows(5, 9)
    pred = runner.invoke(app, ["predict", str(run_dir), str(write_parquet(tmp_path / "p.parquet", xs, ys))])
    assert pred.exit_code == 0, pred.output
    lines = pred.stdout.strip().splitlines()
    assert len(lines) == 6 and all(line.split("\t")[1] in ("0", "1") for line in lines[1:])
    bad = write_parquet(tmp_path / "bad.parquet", [[[1.0, 2.0]]], [0])  # 2 numbers per position, trained on 3
    wrong = runner.invoke(app, ["predict", str(run_dir), str(bad)])
    assert wrong.exit_code == 2 and "input 1: vectors of length 2, the training split's have 3" in wrong.stderr


def test_flat_vectors_with_a_width_and_json_lines(tmp_path):
    path = tmp_path / "all.jsonl"
    rng = random.Random(0)
    path.write_text("".join(json.dumps({"x": [rng.random() for _ in range(4)], "y": i % 3}) + "\n" for i in range(50)))
    data = task_config(data_files=str(path), input_column="x", label_column="y", width=2).load()
    assert data.info.input_spec.dim == 2 and data.info.labels == ("0", "1", "2")
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 40, "validation": 5, "test": 5}
    assert len(data.splits["train"][0]["values"]) == 2  # 4 numbers -> 2 positions of 2
    again = task_config(data_files=str(path), input_column="x", label_column="y", width=2).load()
    assert again.splits["test"]["values"] == data.splits["test"]["values"]  # the held-out split is seeded


def test_string_and_integer_labels_are_sorted(tmp_path):
    rows = [("a b", "10"), ("b", "2"), ("a", "2"), ("b b", "10"), ("c", "1")]
    train = write_csv(tmp_path / "t.tsv", rows, delimiter="\t")
    cfg = task_config(data_files={"train": str(train), "validation": str(train), "test": str(train)})
    data = cfg.load()
    assert data.info.labels == ("1", "2", "10")  # numerically, not "1", "10", "2"
    assert data.info.input_spec.symbols == ("a", "b", "c")
    assert data.baselines["majority_class"] == pytest.approx(2 / 5)


def test_unknown_symbols_error_or_unk(tmp_path):
    train = write_csv(tmp_path / "train.csv", [("a b", "x"), ("b", "y")])
    test = write_csv(tmp_path / "test.csv", [("a", "x"), ("a q", "y")])
    files = {"train": str(train), "validation": str(train), "test": str(test)}
    with pytest.raises(PeftxError) as e:
        task_config(data_files=files).load()
    assert str(e.value) == (
        f"{test}:3: column 'sequence': unknown symbol 'q' (not among the 2 symbols of the training split)"
    )
    data = task_config(data_files=files, unknown="unk").load()
    assert data.info.input_spec.symbols == ("<unk>", "a", "b")
    assert data.splits["test"][1]["tokens"] == [1, 0]


def test_missing_column_unknown_label_and_empty_split_are_one_line_errors(tmp_path):
    train = write_csv(tmp_path / "train.csv", [("0 1", "0"), ("1 1", "1")])
    renamed = write_csv(tmp_path / "renamed.csv", [("0 1", "0")], header=("seq", "label"))
    with pytest.raises(PeftxError, match=r"renamed.csv: no column 'sequence' \(columns: seq, label\)$"):
        task_config(data_files={"train": str(train), "validation": str(train), "test": str(renamed)}).load()

    new_label = write_csv(tmp_path / "test.csv", [("0 1", "0"), ("1", "7")])
    files = {"train": str(train), "validation": str(train), "test": str(new_label)}
    with pytest.raises(PeftxError) as e:
        task_config(data_files=files).load()
    expected = "label '7' does not occur in the training split (labels: 0, 1)"
    assert str(e.value) == f"{new_label}:3: column 'label': {expected}"

    empty = write_csv(tmp_path / "empty.csv", [])
    with pytest.raises(PeftxError, match=r"empty.csv: split 'validation' has no rows$"):
        task_config(data_files={"train": str(train), "validation": str(empty), "test": str(train)}).load()


def test_unreadable_text_files_name_their_line_not_the_library_wrapper(tmp_path):
    """`datasets` wraps every reader's error in "An error occurred while generating the dataset"; the
    message names the file and the line that is wrong instead."""
    latin = tmp_path / "latin.csv"
    latin.write_bytes("sequence,label\n0 1,0\ncaf\xe9,1\n".encode("latin-1"))
    with pytest.raises(PeftxError, match=r"latin.csv:3: not UTF-8 text \(byte 0xe9"):
        task_config(data_files=str(latin)).load()
    early = tmp_path / "early.csv"  # a bad byte on line 2 is line 2's, not the header's
    early.write_bytes(b"sequence,label\n\xff 1,0\n")
    with pytest.raises(PeftxError, match=r"early.csv:2: not UTF-8 text"):
        task_config(data_files=str(early)).load()
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"sequence": "a", "label": 0}\n\n["a", 1]\n')
    with pytest.raises(PeftxError, match=r"rows.jsonl:3: a JSON list, not an object of column values$") as e:
        task_config(data_files=str(rows)).load()
    assert "error occurred" not in str(e.value)


def test_bad_cells_and_files_name_file_row_and_column(tmp_path):
    train = write_csv(tmp_path / "train.csv", [("0 1", "0"), ("", "1")])
    with pytest.raises(PeftxError, match=r"train.csv:3: column 'sequence': empty sequence$"):
        task_config(data_files=str(train)).load()
    blank_label = write_csv(tmp_path / "b.csv", [("0 1", "0"), ("1", "")])
    with pytest.raises(PeftxError, match=r"b.csv:3: column 'label': empty label$"):
        task_config(data_files=str(blank_label)).load()
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("sequence,label\n0 1,0\n1,1,extra\n")
    with pytest.raises(PeftxError, match=r"ragged.csv:3: cannot read as csv \(.*Expected 2 fields in line 3"):
        task_config(data_files=str(ragged)).load()
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"sequence": "a", "label": 0}\n{"sequence": \n')
    with pytest.raises(PeftxError, match=r"broken.jsonl:2: not valid JSON \("):
        task_config(data_files=str(broken)).load()
    uneven = write_parquet(tmp_path / "uneven.parquet", [[[1.0, 2.0], [1.0]]], [0])
    with pytest.raises(PeftxError, match=r"uneven.parquet: row 1, column 'sequence': vectors of different lengths"):
        task_config(data_files=str(uneven)).load()
    with pytest.raises(PeftxError, match=r"missing.csv: no such data file$"):
        task_config(data_files=str(tmp_path / "missing.csv")).load()


def test_recipe_mistakes_are_caught_when_read(tmp_path):
    from peftx.recipe import validate_recipe

    def error(task: dict) -> str:
        with pytest.raises(PeftxError) as e:
            validate_recipe(tiny_recipe("bert", tmp_path, task={"name": "sequences", **task}), "r.yaml")
        return str(e.value)

    assert "give one of data_files (local files) or path" in error({})
    assert "unknown data file type '.xlsx'" in error({"data_files": "data.xlsx"})
    assert "unknown split(s) ['dev']" in error({"data_files": {"train": "a.csv", "dev": "b.csv"}})
    assert "data_files needs a train file" in error({"data_files": {"test": "a.csv"}})


def test_offline_hub_data_set_is_a_one_line_error(tmp_path):
    with pytest.raises(PeftxError, match=r"^task.path: cannot load 'someone/no-such-set' split 'train' \("):
        task_config(path="someone/no-such-set").load()


def test_the_example_recipe_and_files_run(tmp_path, monkeypatch):
    from pathlib import Path

    from peftx.recipe import load_recipe, validate_recipe
    from peftx.runs.predict import predict_path
    from peftx.runs.run import run
    from tests.support.tiny import tiny_model

    root = Path(__file__).parents[2]
    monkeypatch.chdir(root)  # the recipe's paths are relative to the project root
    recipe = load_recipe(
        root / "examples" / "sequences" / "majority.yaml",
        [f"output.dir={tmp_path}", "train.steps=2", "train.eval_every=2", "train.precision=fp32"],
    )
    raw = recipe.to_dict() | {"model": tiny_model("bert")}
    out = run(validate_recipe(raw))
    assert out.record.status == "completed"
    assert any("(2 symbols, sorted, train counts)" in n for n in out.record.data_notes)
    preds = predict_path(out.run_dir, root / "examples" / "sequences" / "majority_predict.csv")
    assert preds.inputs.texts == ["01101", "1110001", "0"] and preds.inputs.targets is None
    assert set(preds.labels) <= {"ones", "zeros"}
