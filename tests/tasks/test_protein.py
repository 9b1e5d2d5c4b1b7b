"""The protein task: alphabet and cropping, TAPE's JSON / LMDB and FASTA + label files, SCL2205's
files with their split overlaps dropped (all on fixtures written here), errors, and an end-to-end run."""

from __future__ import annotations

import csv
import json
import pickle

import numpy as np
import pytest

from peftx.errors import PeftxError
from peftx.recipe import validate_recipe
from peftx.runs.predict import Predictor
from peftx.runs.run import run
from peftx.tasks.protein.task import AMINO_ACIDS, NUM_FOLDS, SCL_LABELS, VOCAB, ProteinConfig, crop, encode
from tests.support.tiny import tiny_recipe

TAPE_SPLITS = ("train", "valid", "test_fold_holdout", "test_superfamily_holdout", "test_family_holdout")
RECORDS = {
    split: [
        {"primary": "MKV" * (i + 1) + "LLW", "fold_label": (7 * i) % NUM_FOLDS, "id": f"{split}{i}"} for i in range(4)
    ]
    for split in TAPE_SPLITS
}
RECORDS["train"][0]["fold_label"] = NUM_FOLDS - 1


def test_alphabet_and_crops():
    assert len(AMINO_ACIDS) == 25 and set("ACDEFGHIKLMNPQRSTVWY") < set(AMINO_ACIDS)
    ids = encode("mkVX")
    assert [VOCAB.symbols[i] for i in ids] == ["M", "K", "V", "X"]
    with pytest.raises(ValueError, match="'1' is not an amino-acid letter"):
        encode("MK1")
    seq = np.arange(10)
    assert crop(seq, 5, "start").tolist() == [0, 1, 2, 3, 4]
    assert crop(seq, 5, "ends").tolist() == [0, 1, 2, 8, 9]
    assert crop(seq, 20, "ends").tolist() == list(range(10))
    task = ProteinConfig(max_residues=4)
    assert [VOCAB.symbols[i] for i in task.parse(" mkv  wyac\n")] == ["M", "K", "A", "C"]
    with pytest.raises(PeftxError, match="'\\*' is not an amino-acid letter"):
        task.parse("MK*")


def write_tape(folder, fmt: str) -> None:
    folder.mkdir(exist_ok=True)
    for split, records in RECORDS.items():
        stem = folder / f"remote_homology_{split}"
        if fmt == "json":
            stem.with_suffix(".json").write_text(json.dumps(records))
        elif fmt == "lmdb":
            import lmdb

            env = lmdb.open(str(stem.with_suffix(".lmdb")), map_size=1 << 20)
            with env.begin(write=True) as txn:
                txn.put(b"num_examples", pickle.dumps(len(records)))
                for i, rec in enumerate(records):
                    txn.put(str(i).encode(), pickle.dumps({**rec, "evolutionary": np.zeros((3, 30))}))
            env.close()
        else:
            stem.with_suffix(".fasta").write_text(
                "".join(f">{r['id']} some description\n{r['primary'][:4]}\n{r['primary'][4:]}\n" for r in records)
            )
            stem.with_suffix(".labels").write_text(
                "id\tlabel\n" + "".join(f"{r['id']}\t{r['fold_label']}\n" for r in records)
            )


@pytest.mark.parametrize("fmt", ["json", "lmdb", "fasta"])
def test_tape_remote_homology_formats(tmp_path, fmt):
    if fmt == "lmdb":
        pytest.importorskip("lmdb")
    write_tape(tmp_path, fmt)
    data = ProteinConfig(dataset="remote_homology", data_dir=tmp_path, format=fmt, test_split="family_holdout").load()
    assert len(data.info.labels) == NUM_FOLDS == 1195
    train = data.splits["train"]
    assert train["label"] == [r["fold_label"] for r in RECORDS["train"]]
    assert "".join(VOCAB.symbols[i] for i in train["tokens"][1]) == RECORDS["train"][1]["primary"]
    assert len(data.splits["test"]) == 4 and "family_holdout" in data.notes[0]
    auto = ProteinConfig(dataset="remote_homology", data_dir=tmp_path).load()
    assert auto.splits["validation"]["label"] == [r["fold_label"] for r in RECORDS["valid"]]


def tape_task(folder, fmt):
    return ProteinConfig(dataset="remote_homology", data_dir=folder, format=fmt)


def test_tape_errors(tmp_path):
    with pytest.raises(PeftxError, match="remote_homology_train: missing remote homology file"):
        tape_task(tmp_path, "auto").load()
    with pytest.raises(PeftxError, match="task.data_dir: remote_homology needs"):
        ProteinConfig(dataset="remote_homology").load()
    write_tape(tmp_path, "json")
    (tmp_path / "remote_homology_valid.json").write_text('[{"primary": "MKV"')
    with pytest.raises(PeftxError, match="remote_homology_valid.json: not valid JSON"):
        tape_task(tmp_path, "json").load()
    (tmp_path / "remote_homology_valid.json").write_text('[{"primary": "MKV"}]')
    with pytest.raises(PeftxError, match="record 0 lacks a usable 'primary' or 'fold_label'"):
        tape_task(tmp_path, "json").load()
    (tmp_path / "remote_homology_valid.json").write_text('[{"primary": "MKV", "fold_label": 5000}]')
    with pytest.raises(PeftxError, match="validation fold label 5000 outside 0..1194"):
        tape_task(tmp_path, "json").load()
    (tmp_path / "remote_homology_valid.json").write_text('[{"primary": "MK7", "fold_label": 1}]')
    with pytest.raises(PeftxError, match="protein validation sequence 0: '7' is not an amino-acid letter"):
        tape_task(tmp_path, "json").load()


def test_fasta_and_lmdb_errors(tmp_path):
    write_tape(tmp_path, "fasta")
    labels = tmp_path / "remote_homology_train.labels"
    labels.write_text("train0\t1\n")
    with pytest.raises(PeftxError, match="no label for 3 FASTA id"):
        tape_task(tmp_path, "fasta").load()
    labels.write_text("train0\tfold_a\n")
    with pytest.raises(PeftxError, match="train.labels:1: label 'fold_a' is not an integer"):
        tape_task(tmp_path, "fasta").load()
    (tmp_path / "remote_homology_train.fasta").write_text("MKV\n>x\nMKV\n")
    with pytest.raises(PeftxError, match="train.fasta:1: sequence line before the first '>' header"):
        tape_task(tmp_path, "fasta").load()
    pytest.importorskip("lmdb")
    (tmp_path / "remote_homology_train.lmdb").mkdir()
    with pytest.raises(PeftxError, match="missing TAPE LMDB database"):
        tape_task(tmp_path, "lmdb").load()
    import lmdb

    env = lmdb.open(str(tmp_path / "remote_homology_train.lmdb"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"other", b"1")
    env.close()
    with pytest.raises(PeftxError, match="not a TAPE LMDB database"):
        tape_task(tmp_path, "lmdb").load()


def write_scl(folder) -> None:
    """SCL2205's four files, with one training sequence repeated in test and one in validation."""
    folder.mkdir()
    rows = [(f"P{i:05d}", "MKVL" * (i + 1) + "ACDE"[i % 4], i % 13) for i in range(30)]
    rows.append(("DUPTEST", rows[25][1], 3))  # train copy of test entry 25
    rows.append(("DUPVAL", rows[21][1], 4))  # train copy of validation entry 21
    with (folder / "scl2205.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["entry", "seq", "scl"])
        w.writerows(rows)
    (folder / "entries.json").write_text(json.dumps({str(i): r[0] for i, r in enumerate(rows)}))
    splits = {"trn": list(range(20)) + [30, 31], "evl": [20, 21, 22], "tst": list(range(23, 30)), "cv": {}}
    (folder / "splits.json").write_text(json.dumps(splits))
    names = {str(i): n for i, n in enumerate(SCL_LABELS)}
    (folder / "labels.json").write_text(json.dumps({"index_to_label": names, "label_to_index": {}}))


def test_scl2205_files_drop_overlaps_and_note_it(tmp_path):
    write_scl(tmp_path / "scl")
    data = ProteinConfig(data_dir=tmp_path / "scl", max_residues=8).load()
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 20, "validation": 3, "test": 7}
    assert data.info.labels == SCL_LABELS and len(SCL_LABELS) == 13
    assert "dropped 2 training sequence(s) that also occur in validation or test, and 0 validation" in data.notes[0]
    assert max(len(t) for t in data.splits["train"]["tokens"]) == 8
    assert set(data.baselines) == {"majority_class", "composition_nearest_centroid"}


def test_scl2205_errors(tmp_path):
    with pytest.raises(PeftxError, match="splits.json: missing SCL2205 file"):
        write_scl(tmp_path / "scl")
        (tmp_path / "scl" / "splits.json").unlink()
        ProteinConfig(data_dir=tmp_path / "scl").load()
    (tmp_path / "scl" / "splits.json").write_text('{"trn": [999], "evl": [], "tst": []}')
    with pytest.raises(PeftxError, match="malformed SCL2205 files"):
        ProteinConfig(data_dir=tmp_path / "scl").load()
    (tmp_path / "scl" / "labels.json").write_text(json.dumps({"index_to_label": {"0": "Cytoplasm"}}))
    (tmp_path / "scl" / "splits.json").write_text('{"trn": [0], "evl": [1], "tst": [2]}')
    with pytest.raises(PeftxError, match="labels.json: labels differ from SCL2205's 13"):
        ProteinConfig(data_dir=tmp_path / "scl").load()


def test_installed_scldata_matches_the_literal_labels():
    from peftx.tasks.protein.files import scldata_dir

    pytest.importorskip("scldata")
    names = json.loads((scldata_dir() / "labels.json").read_text())["index_to_label"]
    assert tuple(names[str(i)] for i in range(len(names))) == SCL_LABELS


def test_end_to_end_protein_run_and_predict(tmp_path):
    write_tape(tmp_path / "tape", "json")
    task = {"name": "protein", "dataset": "remote_homology", "data_dir": str(tmp_path / "tape"), "max_residues": 10}
    recipe = validate_recipe(tiny_recipe("bert", tmp_path, task=task))
    assert recipe.input.name == "pretrained_vocab"
    out = run(recipe)
    assert out.result["status"] == "completed" and "majority_class" in out.result["baselines"]
    seqs = [r["primary"] for r in RECORDS["test_fold_holdout"]]
    preds = Predictor(out.run_dir).predict(seqs)
    acc = np.mean([p == str(r["fold_label"]) for p, r in zip(preds, RECORDS["test_fold_holdout"])])
    assert acc == pytest.approx(out.result["metrics"]["test_accuracy"], abs=1e-9)
