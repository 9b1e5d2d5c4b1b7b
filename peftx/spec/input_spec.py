"""What a task's inputs are, as batching (`peftx.training.batching`) and the input adapters (`peftx.inputs`) see
them: discrete symbols or real vectors. A leaf module, so that tasks, input adapters and batching share
it without knowing each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar


@dataclass(frozen=True)
class SymbolVocab:
    """Inputs are sequences of discrete task symbols (column `tokens`: ids into `symbols`).

    Attributes:
        symbols: the task's literal, ordered symbol list; ids are positions in it.
        version: changes whenever `symbols` changes, so saved runs can refuse a different vocabulary.
        text: default spelling of each symbol in a language model's vocabulary (`pretrained_vocab`).
    """

    column: ClassVar[str] = "tokens"
    symbols: tuple[str, ...]
    version: str
    text: dict[str, str] = field(default_factory=dict)

    def spelling(self, symbol: str) -> str:
        return self.text.get(symbol, symbol)


@dataclass(frozen=True)
class ContinuousSpec:
    """Inputs are sequences of real vectors (column `values`: (seq, dim)).

    Attributes:
        dim: length of each vector.
        scale: stored values times `scale` are what the model sees (images store uint8 pixels with
            scale 1/255, so the model sees intensities in [0, 1]).
        kind: what the vectors are, for adapters that care (`pixel_vocab` needs "intensity").
    """

    column: ClassVar[str] = "values"
    dim: int
    scale: float = 1.0
    kind: str = "features"


InputSpec = SymbolVocab | ContinuousSpec

__all__ = ["ContinuousSpec", "InputSpec", "SymbolVocab"]
