"""ListOps: the evaluator, the generator's guarantees, the LRA TSV loader, the baselines."""

from __future__ import annotations

import numpy as np
import pytest

from peftx.errors import PeftxError
from peftx.tasks.listops.task import (
    DIGITS,
    END,
    GENERATORS,
    OPERATORS,
    PRESET_GENERATOR,
    PRESETS,
    VOCAB,
    ListOpsConfig,
    encode,
    evaluate,
    generate_splits,
    load_lra_tsv,
    tokenize,
)


@pytest.mark.parametrize(
    "expr, value",
    [
        ("[MAX 2 9 ]", 9),
        ("[MIN 4 7 ]", 4),
        ("[SM 5 6 7 ]", 8),  # 18 mod 10
        ("[MED 1 5 3 ]", 3),
        ("[MED 1 4 ]", 2),  # numpy.median 2.5 truncated by int(), as LRA
        ("[MED 1 2 8 9 ]", 5),
        ("[MAX 2 [MIN 4 7 ] 0 ]", 4),
        ("[SM [MAX 9 1 ] [MIN 3 8 ] [MED 2 2 7 ] ]", 4),  # 9 + 3 + 2
        ("7", 7),
    ],
)
def test_evaluate_hand_written(expr, value):
    assert evaluate(expr.split()) == value


@pytest.mark.parametrize("bad", ["[MAX 2 9", "2 ]", "[MAX ]", "[FOO 1 2 ]"])
def test_evaluate_rejects_malformed(bad):
    with pytest.raises(ValueError):
        evaluate(bad.split())


def test_every_symbol_survives_tokenisation():
    # LRA's TSV form wraps every node in parentheses; they are dropped, brackets are kept.
    text = "( ( ( [MAX 2 ) 9 ) ( ( [MIN 4 ) 7 ) ] ) ] )"
    assert tokenize(text) == ["[MAX", "2", "9", "[MIN", "4", "7", "]", "]"]
    every = " ".join(OPERATORS + (END,) + DIGITS)
    assert [VOCAB.symbols[i] for i in encode(every)] == every.split()


def test_unknown_symbol_is_a_user_error():
    with pytest.raises(PeftxError, match="unknown ListOps symbol '\\[FIRST'"):
        encode("[FIRST 1 2 ]")


@pytest.mark.parametrize("generator", GENERATORS)
def test_generator_is_deterministic_unique_and_bounded(generator):
    args = dict(min_length=6, max_length=30, max_depth=6, max_args=5, n_train=200, n_val=40, n_test=40)
    a = generate_splits(3, **args, generator=generator)
    b = generate_splits(3, **args, generator=generator)
    c = generate_splits(4, **args, generator=generator)
    assert a["train"]["tokens"] == b["train"]["tokens"]
    assert a["train"]["tokens"] != c["train"]["tokens"]
    seqs = [tuple(t) for s in ("train", "validation", "test") for t in a[s]["tokens"]]
    assert len(seqs) == len(set(seqs)) == 280
    assert all(6 < len(t) < 30 for t in seqs)
    for s in ("train", "validation", "test"):
        for toks, label in zip(a[s]["tokens"], a[s]["label"]):
            assert evaluate([VOCAB.symbols[i] for i in toks]) == label
    assert any(VOCAB.symbols[t[-1]] == END for t in seqs)  # closing brackets are kept
    assert a["train"].features == c["test"].features


def _shape(splits) -> dict:
    """Summary statistics of generated expressions: mean length and its standard error, the label and
    root-operator frequencies."""
    toks = [t for s in splits.values() for t in s["tokens"]]
    labels = [y for s in splits.values() for y in s["label"]]
    lengths = np.array([len(t) for t in toks], float)
    return {
        "mean": lengths.mean(),
        "sem": lengths.std() / np.sqrt(len(lengths)),
        "labels": np.bincount(labels, minlength=10) / len(labels),
        "roots": np.bincount([t[0] for t in toks], minlength=len(VOCAB.symbols)) / len(toks),
    }


@pytest.mark.parametrize(
    "settings",
    [
        # the cpu preset's lengths; fewer expressions than the batched generator has slots, where keeping
        # trees in the order they ended (not began) would favour short ones
        dict(min_length=20, max_length=160, max_depth=10, max_args=10, n_train=2500, n_val=0, n_test=0),
        dict(min_length=4, max_length=40, max_depth=4, max_args=4, n_train=2000, n_val=0, n_test=0),
    ],
)
def test_batched_generator_draws_lras_distribution(settings):
    """Version 2 draws other expressions than version 1 but from the same distribution: lengths,
    labels and root operators agree within sampling error."""
    one, two = _shape(generate_splits(0, **settings)), _shape(generate_splits(0, **settings, generator=2))
    assert abs(one["mean"] - two["mean"]) < 4 * np.hypot(one["sem"], two["sem"]), (one["mean"], two["mean"])
    assert 0.5 * np.abs(one["labels"] - two["labels"]).sum() < 0.06
    assert 0.5 * np.abs(one["roots"] - two["roots"]).sum() < 0.06


def test_lra_presets_use_the_batched_generator_and_cpu_keeps_version_1():
    """`cpu` and `tiny` keep the data every committed result was measured on; `task.generator` overrides."""
    tiny = ListOpsConfig(preset="tiny").load()
    assert tiny.splits["train"]["tokens"] == generate_splits(0, **PRESETS["tiny"])["train"]["tokens"]
    two = ListOpsConfig(preset="tiny", generator=2).load()
    assert two.splits["train"]["tokens"] == generate_splits(0, **PRESETS["tiny"], generator=2)["train"]["tokens"]
    assert two.splits["train"]["tokens"] != tiny.splits["train"]["tokens"]
    assert "generator 2" in two.notes[0] and "generator" not in tiny.notes[0]
    assert PRESET_GENERATOR == {"lra": 2, "lra512": 2, "cpu": 1, "tiny": 1}


def test_tiny_task_has_baselines():
    data = ListOpsConfig(preset="tiny").load()
    assert set(data.baselines) == {"majority_class", "root_operator"}
    assert 0 < data.baselines["majority_class"] <= data.baselines["root_operator"] + 0.2
    assert len(data.splits["train"]) == 256


def test_lra512_preset_fits_a_512_position_model_whole():
    """LRA's depth and argument counts at lengths a 512-position model holds with [CLS] and [SEP]."""
    p = PRESETS["lra512"]
    assert (p["max_depth"], p["max_args"]) == (PRESETS["lra"]["max_depth"], PRESETS["lra"]["max_args"])
    assert (p["n_train"], p["n_val"], p["n_test"]) == (96_000, 2_000, 2_000)  # LRA's sizes
    data = ListOpsConfig(preset="lra512", n_train=40, n_val=5, n_test=5).load()
    lengths = [len(t) for s in data.splits.values() for t in s["tokens"]]
    assert len(lengths) == 50 and all(200 < n < 510 for n in lengths) and max(lengths) + 2 <= 512


def test_lra_tsv_loader(tmp_path):
    rows = {
        "basic_train.tsv": [("( ( [MAX 2 ) 9 ] )", 9)],
        "basic_val.tsv": [("[MIN 4 7 ]", 4)],
        "basic_test.tsv": [("[SM 5 6 ]", 1)],
    }
    for fname, data in rows.items():
        (tmp_path / fname).write_text("Source\tTarget\n" + "".join(f"{s}\t{t}\n" for s, t in data))
    splits = load_lra_tsv(tmp_path)
    assert splits["train"]["label"] == [9]
    assert [VOCAB.symbols[i] for i in splits["train"]["tokens"][0]] == ["[MAX", "2", "9", "]"]


def test_lra_tsv_loader_errors(tmp_path):
    with pytest.raises(PeftxError, match="basic_train.tsv: missing ListOps file"):
        load_lra_tsv(tmp_path)
    for name in ("basic_train.tsv", "basic_val.tsv", "basic_test.tsv"):
        (tmp_path / name).write_text("Source\tTarget\n[MAX 2 9 ]\t9\n")
    (tmp_path / "basic_val.tsv").write_text("Source\tTarget\n[MAX 2 9 ]\t9\n[MAX 2 x ]\t9\n")
    with pytest.raises(PeftxError, match="basic_val.tsv:3: unknown ListOps symbol 'x'"):
        load_lra_tsv(tmp_path)
    (tmp_path / "basic_val.tsv").write_text("Input\tLabel\n")
    with pytest.raises(PeftxError, match="expected columns Source and Target"):
        load_lra_tsv(tmp_path)
