"""ListOps generator 2 (`task.generator: 2`): LRA's trees, thousands at a time in numpy.

Generator 1 (`peftx.tasks.listops.task.generate_expression`) draws one tree at a time in Python as LRA's
script does, at about a microsecond per symbol; LRA-size data (100k expressions of 500-2,000 symbols, most
draws discarded) takes minutes that way. This draws the same distribution -- below `max_depth` a node is an
operator with probability VALUE_P, the operator uniform over the four, its argument count uniform over
2..max_args, a digit uniform over 0-9 -- for SLOTS trees side by side, one symbol per tree per step, so that
a step is a few array operations over every tree at once. Each tree is written in prefix order (the order
generator 1 writes) and valued as it closes, so no second pass parses it. A slot whose tree ends (closed at
its root, or grown to `max_length`) starts a new tree at the next step.

numpy has no batched tree sampler, and the vectorised branching process is short, so it is written here.
Draws come from numpy's default generator seeded with `seed`, three per slot per step whether used or
not, so the data depend on the seed and the settings alone (not on the machine or the thread count).
"""

from __future__ import annotations

import numpy as np

from peftx.errors import PeftxError
from peftx.tasks.listops.symbols import DIGITS, END, INDEX, OPERATORS, VALUE_P

SLOTS = 4096  # trees side by side (fewer when they are long: the symbol buffer stays within BUFFER bytes)
BUFFER = 1 << 26
# Symbol ids: the operators' are their own order (MIN, MAX, MED, SM); digits are consecutive from "0".
_END = INDEX[END]
_DIGIT0 = INDEX[DIGITS[0]]
_MIN, _MAX, _MED = (INDEX[op] for op in OPERATORS[:3])
assert [INDEX[op] for op in OPERATORS] == [0, 1, 2, 3] and [INDEX[d] for d in DIGITS] == list(
    range(_DIGIT0, _DIGIT0 + 10)
)


def _medians(counts: np.ndarray) -> np.ndarray:
    """Medians from histograms of values (rows of 10 counts): the middle two values (one when the count
    is odd) in sorted order, their mean truncated, as LRA's int(numpy.median(...))."""
    cum = counts.cumsum(1)
    n = cum[:, -1:]
    lo = (cum <= (n - 1) // 2).sum(1)  # the first value whose cumulative count passes the rank
    hi = (cum <= n // 2).sum(1)
    return (lo + hi) // 2


def shortage(
    misses: int, found: int, total: int, min_length: int, max_length: int, max_depth: int, max_args: int
) -> PeftxError:
    """The error of either generator when the settings allow fewer distinct expressions than asked for."""
    return PeftxError(
        f"task: after {misses:,} draws without a new expression, only {found:,} of the {total:,} asked for "
        f"(n_train + n_val + n_test) exist with lengths in ({min_length}, {max_length}), max_depth {max_depth} "
        f"and max_args {max_args}; widen min_length..max_length, raise max_depth / max_args, or ask for fewer"
    )


# long: one vectorised state machine over a dozen arrays that every phase of a step reads and writes;
# split into functions, each would take and return them all.
def generate_batched(
    seed: int, min_length: int, max_length: int, max_depth: int, max_args: int, total: int, max_misses: int
) -> dict[bytes, int]:
    """`total` distinct expressions with `min_length < length < max_length`, in the order they were
    kept: symbol ids as bytes (one per symbol) mapped to the expression's value.

    Raises:
        PeftxError: `max_misses` finished trees in a row brought no new expression (the settings allow
            fewer distinct expressions than asked for).
    """
    rng = np.random.default_rng(seed)
    slots = max(64, min(SLOTS, BUFFER // max_length))
    rows = np.arange(slots)
    tokens = np.zeros((slots, max_length), np.int8)
    flat_tokens, row_start = tokens.reshape(-1), rows * max_length  # flat indexing: faster than [rows, cols]
    length = np.zeros(slots, np.int64)
    level = np.zeros(slots, np.int64)  # open operators; the next node drawn is at depth level + 1
    closing = np.zeros(slots, bool)  # the innermost open operator has all its arguments: emit "]"
    # Per open operator, at [slot * max_depth + level]: which, arguments still to draw, and the
    # histogram of its arguments' values so far.
    base = rows * max_depth
    ops = np.zeros(slots * max_depth, np.int8)
    left = np.zeros(slots * max_depth, np.int32)
    low = np.zeros(slots * max_depth, np.int8)  # running MIN, MAX and SM of its arguments
    high = np.zeros(slots * max_depth, np.int8)
    summed = np.zeros(slots * max_depth, np.int8)  # kept mod 10
    counts = np.zeros((slots * max_depth, 10), np.int32)  # for MED
    flat_counts = counts.reshape(-1)
    start = np.zeros(slots, np.int64)  # the step at which each slot's tree began
    kept: list[tuple[int, int, bytes, int]] = []  # (start step, slot, symbols, value) of trees in range
    distinct: set[bytes] = set()
    misses = since_new = 0
    step = 0
    while True:
        # float32 draws (faster); a product can round up to its bound, hence the minimum()s.
        u = rng.random((3, slots), dtype=np.float32)
        # Every slot writes one symbol: "]" where its innermost operator has all its arguments, else a
        # node (an operator, opened; or a digit, complete).
        is_op = ~closing & (level < max_depth - 1) & (u[0] <= VALUE_P)
        is_digit = ~(closing | is_op)
        op = np.minimum(u[1] * 4, 3).astype(np.int8)
        digit = np.minimum(u[1] * 10, 9).astype(np.int8)
        flat_tokens[row_start + length] = np.where(closing, _END, np.where(is_op, op, _DIGIT0 + digit))
        length += 1
        value = np.where(is_digit, digit, -1)  # the value of the node each slot completed, -1: none
        c = np.flatnonzero(closing)
        level[c] -= 1
        at = base[c] + level[c]
        op_c = ops[at]
        value[c] = np.where(op_c == _MIN, low[at], np.where(op_c == _MAX, high[at], summed[at]))
        med = op_c == _MED
        value[c[med]] = _medians(counts[at[med]])
        o = np.flatnonzero(is_op)
        at = base[o] + level[o]
        ops[at] = op[o]
        left[at] = 2 + np.minimum(u[2, o] * (max_args - 1), max_args - 2).astype(np.int32)
        low[at], high[at], summed[at], counts[at] = 9, 0, 0, 0
        level[o] += 1
        # A completed node below the root counts as an argument of its operator.
        s = np.flatnonzero((value >= 0) & (level > 0))
        at = base[s] + level[s] - 1
        v = value[s]
        low[at] = np.minimum(low[at], v)
        high[at] = np.maximum(high[at], v)
        summed[at] = (summed[at] + v) % 10
        flat_counts[at * 10 + v] += 1
        left[at] -= 1
        closing[s] = left[at] == 0
        # Trees that ended: closed at the root, or too long already (generator 1 abandons them too).
        too_long = length >= max_length
        done = (value >= 0) & (level == 0) & ~too_long
        ended = np.flatnonzero(done | too_long)
        found = np.flatnonzero(done & (length > min_length))
        before = len(distinct)
        for i in found:
            symbols = tokens[i, : length[i]].tobytes()
            distinct.add(symbols)
            kept.append((int(start[i]), int(i), symbols, int(value[i])))
        new = len(distinct) > before
        step += 1
        length[ended] = level[ended] = 0
        closing[ended] = False
        start[ended] = step
        # Trees are kept in the order they began, not the order they ended: the order of ending favours
        # short trees (a long one still running when generation stops would be left out), while which
        # tree begins next depends only on the trees before it, so this order is a sequence of
        # independent draws, as generator 1's. Every tree begun before the earliest still running is final.
        if len(distinct) >= total and step % 64 == 0:
            frontier = int(start.min())
            final = sorted(k for k in kept if k[0] < frontier)
            seen: dict[bytes, int] = {}
            for _, _, symbols, v in final:
                seen.setdefault(symbols, v)
                if len(seen) == total:
                    return seen
        misses = 0 if new else misses + len(ended)
        since_new = 0 if new else since_new + 1
        # A slot needs max_length steps to end its longest tree: before that, misses prove nothing.
        if misses >= max_misses and since_new > max_length:
            raise shortage(misses, len(distinct), total, min_length, max_length, max_depth, max_args)
