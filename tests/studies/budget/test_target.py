"""Targets (`2%`, `1.5M`) and the search for the largest knob value within one."""

from __future__ import annotations

import pytest

from peftx.errors import PeftxError
from peftx.studies.budget.target import Target, largest_within, parse_target


@pytest.mark.parametrize(
    "f, bound, low, high, expected",
    [
        (lambda k: 1000 + 37 * k, 1000 + 37 * 13 + 5, 1, 1024, 13),  # affine: the usual budget
        (lambda k: 1000 + 37 * k, 1000 + 37 * 13, 1, 1024, 13),  # exactly on a value: it fits
        (lambda k: 10 * k * k, 4000, 1, 1024, 20),  # convex
        (lambda k: [0, 5, 5, 5, 9, 30][k], 8, 1, 5, 3),  # plateaus (layers of equal size)
        (lambda k: 100 + k, 50, 1, 1024, None),  # even the smallest is over
        (lambda k: k, 5000, 1, 1024, 1024),  # everything fits: the largest
        (lambda k: k, 5, 3, 2, None),  # empty range
    ],
)
def test_largest_within_finds_the_largest_fitting_knob(f, bound, low, high, expected):
    calls = []

    def g(k):
        calls.append(k)
        return f(k)

    assert largest_within(g, bound, low, high) == expected
    if expected is not None and expected < high:
        assert f(expected) <= bound < f(expected + 1)
    assert len(calls) <= 3 * (high - low).bit_length() + 4


def test_affine_budgets_take_four_counts():
    calls = []
    largest_within(lambda k: calls.append(k) or 5000 + 1536 * k, 5000 + 1536 * 77 + 100, 1, 1024)
    assert len(calls) <= 4


@pytest.mark.parametrize(
    "text, target",
    [
        ("2%", Target(2.0, True)),
        ("0.5 %", Target(0.5, True)),
        ("1.5M", Target(1.5e6, False)),
        ("150k", Target(1.5e5, False)),
        ("2e6", Target(2e6, False)),
        ("1234", Target(1234.0, False)),
    ],
)
def test_parse_target(text, target):
    assert parse_target(text) == target


@pytest.mark.parametrize("text", ["two", "2%%", "0%", "150%", "-1", "0.2", "1.5Q", ""])
def test_bad_target_is_one_line(text):
    with pytest.raises(PeftxError, match="--target") as e:
        parse_target(text)
    assert "\n" not in str(e.value)
