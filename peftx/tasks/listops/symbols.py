"""ListOps' symbols: the vocabulary, the evaluator, and parsing of expressions written as text.

Shared by the generators (task.py, numpy_generator.py) and the reader of LRA's files (lra_files.py).
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING

from peftx.errors import PeftxError
from peftx.spec.input_spec import SymbolVocab

if TYPE_CHECKING:
    import datasets

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
DIGITS = tuple(str(d) for d in range(10))
VALUE_P = 0.25  # LRA's: below the maximum depth, a node is an operator with this probability

VOCAB = SymbolVocab(
    symbols=OPERATORS + (END,) + DIGITS,
    version="listops-v1",
    # Spelled as words a language model knows; each is one token in BERT's uncased vocabulary.
    text={"[MIN": "min", "[MAX": "max", "[MED": "median", "[SM": "sum", END: "]"},
)
LABELS = DIGITS
INDEX = {s: i for i, s in enumerate(VOCAB.symbols)}


@cache
def features() -> datasets.Features:
    """The columns of every ListOps split (`datasets` is imported here, when data is made or read:
    reading a recipe imports none of it)."""
    import datasets

    return datasets.Features(
        {"tokens": datasets.Sequence(datasets.Value("int8")), "label": datasets.ClassLabel(names=list(LABELS))}
    )


def evaluate(tokens: list[str]) -> int:
    """Value of a ListOps expression given as tokens (parentheses already removed).

    Raises:
        ValueError: the expression is malformed.
    """
    stack: list[list] = []
    value = None
    for tok in tokens:
        if tok in OPERATORS:
            stack.append([tok])
        elif tok == END:
            if not stack or len(stack[-1]) < 2:
                raise ValueError("']' without an open operator or arguments")
            op, *args = stack.pop()
            if op == "[MIN":
                v = min(args)
            elif op == "[MAX":
                v = max(args)
            elif op == "[MED":
                s = sorted(args)
                n = len(s)
                # numpy.median then int(), as LRA computes it: the mean of the middle two, truncated.
                v = s[n // 2] if n % 2 else int((s[n // 2 - 1] + s[n // 2]) / 2)
            else:
                v = sum(args) % 10
            if stack:
                stack[-1].append(v)
            else:
                value = v
        elif tok in DIGITS:
            if stack:
                stack[-1].append(int(tok))
            else:
                value = int(tok)
        else:
            raise ValueError(f"unknown ListOps symbol {tok!r}")
    if stack or value is None:
        raise ValueError("unbalanced expression")
    return value


def tokenize(text: str) -> list[str]:
    """Split a ListOps string (LRA TSV form, parentheses allowed) into symbols."""
    return [t for t in text.replace("(", " ").replace(")", " ").split()]


def encode(text: str) -> list[int]:
    """Symbol ids of a ListOps string; raises PeftxError naming an unknown symbol."""
    ids = []
    for tok in tokenize(text):
        if tok not in INDEX:
            raise PeftxError(f"unknown ListOps symbol {tok!r} (valid: {' '.join(VOCAB.symbols)})")
        ids.append(INDEX[tok])
    return ids


def parse_expression(text: str) -> list[int]:
    """Symbol ids of one well-formed ListOps expression (what `peftx predict` reads).

    Raises:
        PeftxError: an unknown symbol, or brackets that do not balance (an operator without its `]`).
    """
    ids = encode(text)
    try:
        evaluate(tokenize(text))
    except ValueError as e:
        raise PeftxError(f"not a ListOps expression: {e}") from None
    return ids
