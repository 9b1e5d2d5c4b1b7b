"""`pretrained_vocab`: each task symbol is embedded by the model's own pretrained token embeddings.

This is the paper's key finding: the input layer must reuse the language model's embedding table. Each
symbol is spelled as text (the task's default spelling, overridable in the recipe) and tokenised by the
model's tokenizer. A spelling that becomes several tokens is embedded as the mean of their embeddings
(`pieces: mean`) or as its first token (`pieces: first`); `pieces: error` refuses it. A leading piece
that is a word boundary alone is dropped first: vocabularies with no "space + digit" token (SmolLM2's
byte-level BPE, T5's SentencePiece) spell " 7" as a bare `Ġ` or `▁` and then `7`, and that piece,
shared by every such symbol, says nothing about which symbol it is. Two symbols that end up with the
same token ids are refused (with `pieces: first` that happens to words that share a first piece).

Without a tokenizer (a from-scratch model whose vocabulary is not available offline) symbol i takes
the i-th token id not used by a special token: the weights are random anyway, so only a fixed one-to-one
map matters. The map is a buffer, saved with the run, so a reloaded run embeds exactly as it trained,
and `task.json` records it (`input.token_ids`), so an export says which tokens each symbol stands for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from peftx.errors import PeftxError
from peftx.inputs.base import InputConfig, InputContext
from peftx.inputs.registry import INPUTS
from peftx.spec.index_space import BOS, EOS, NUM_FRAMING, PAD
from peftx.spec.input_spec import SymbolVocab

if TYPE_CHECKING:
    from torch import nn


def spell_tokens(ctx: InputContext, spellings: list[str], pieces: str) -> list[list[int]]:
    """Token ids of each spelling in the model's vocabulary (or a fixed fallback map)."""
    reserved = {i for i in (ctx.specials.pad, ctx.specials.bos, ctx.specials.eos) if i is not None}
    if ctx.tokenizer is None:
        free = [i for i in range(ctx.backbone.get_input_embeddings().num_embeddings) if i not in reserved]
        if len(free) < len(spellings):
            raise PeftxError(
                f"input: {len(spellings)} symbols need as many tokens; the model's vocabulary has {len(free)} free"
            )
        return [[i] for i in free[: len(spellings)]]
    out: list[list[int]] = []
    unk = getattr(ctx.tokenizer, "unk_token_id", None)
    for text in spellings:
        ids = ctx.tokenizer(" " + text if ctx.family.space_prefix else text, add_special_tokens=False).input_ids
        if len(ids) > 1 and not ctx.tokenizer.decode(ids[:1]).strip():
            ids = ids[1:]  # a word boundary alone (`Ġ`, `▁`): see the module docstring
        if not ids or (unk is not None and unk in ids):
            raise PeftxError(f"input.spelling: {text!r} is not in the model's vocabulary")
        if len(ids) > 1 and pieces == "error":
            raise PeftxError(f"input.spelling: {text!r} is {len(ids)} tokens and input.pieces is 'error'")
        ids = ids[:1] if pieces == "first" else ids
        if ids in out:  # two symbols the model could not tell apart
            other = spellings[out.index(ids)]
            raise PeftxError(f"input.spelling: {other!r} and {text!r} are both token(s) {ids} (input.pieces: {pieces})")
        out.append(ids)
    return out


def framing_tokens(ctx: InputContext) -> list[list[int]]:
    """Token ids of the framing indices PAD, BOS, EOS (`peftx.spec.index_space`), in that order; a family
    without a start or end token maps that index to its pad token (never used then)."""
    sp = ctx.specials
    by_index = {PAD: sp.pad, BOS: sp.pad if sp.bos is None else sp.bos, EOS: sp.pad if sp.eos is None else sp.eos}
    return [[by_index[i]] for i in range(NUM_FRAMING)]


class VocabMapping(InputConfig):
    """Fields shared by adapters that map task symbols to the model's own tokens."""

    spelling: dict[str, str] = {}
    """Symbol -> text, overriding the task's default spelling (e.g. {'[SM': 'modulo'})."""
    pieces: Literal["mean", "first", "error"] = "mean"
    """A spelling that is several tokens: mean of their embeddings, the first one, or refuse."""

    def index_tokens(self, ctx: InputContext) -> list[list[int]]:
        """Token ids of every shared index: framing (0-2), then each task symbol (3 + i)."""
        if not isinstance(ctx.spec, SymbolVocab):
            raise PeftxError(f"input.name: {self.name} needs a task with discrete symbols")
        unknown = sorted(set(self.spelling) - set(ctx.spec.symbols))
        if unknown:
            raise PeftxError(f"input.spelling: unknown symbol(s) {unknown} (valid: {' '.join(ctx.spec.symbols)})")
        spellings = [self.spelling.get(s, ctx.spec.spelling(s)) for s in ctx.spec.symbols]
        return framing_tokens(ctx) + spell_tokens(ctx, spellings, self.pieces)


class PretrainedVocabConfig(VocabMapping):
    """Task symbols -> the model's own tokens, embedded by its pretrained embedding table."""

    name: Literal["pretrained_vocab"] = "pretrained_vocab"

    def build(self, ctx: InputContext) -> nn.Module:
        from peftx.inputs.layers import PretrainedVocabEmbedding  # torch, when a model is built

        return PretrainedVocabEmbedding(ctx.backbone.get_input_embeddings(), self.index_tokens(ctx))

    def trained_roles(self) -> set[str]:
        return {"token_embedding"} if self.trainable else set()


INPUTS.register(PretrainedVocabConfig)
