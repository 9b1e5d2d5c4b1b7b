"""Showing user data on a terminal: every cell, value, path or message that peftx prints from what a
user gave it passes through `printable` (or `shorten`), so that the bytes a file holds never act on the
terminal and a huge value never floods it.

A control character in an input (ESC `[2J` clears the screen, an OSC sequence retitles the window, a bare
CR overwrites the line) is shown as Python writes it in a string literal (`\\x1b`, `\\r`); everything
else, backslashes included, is shown as it is, so ordinary text prints unchanged.
"""

from __future__ import annotations

import re

# C0 controls (tab and newline included: an echoed cell or message is one line), DEL, C1 controls,
# and the Unicode line and paragraph separators that terminals and editors break lines at.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}

MESSAGE_CHARS = 1000
"""The most characters of one error line, a backstop for values no message shortened: a longer one loses
its middle (its start names the place, its end usually says what to do). Long enough for a message
naming two deep paths whole."""

VALUE_CHARS = 120
"""The most characters of one value quoted inside a message."""


def _escape(match: re.Match) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with every control character written as an escape (`\\x1b`, `\\r`, `\\n`).

    Args:
        text: anything taken from user data: an input cell, a label, a path, a message quoting them.

    Returns:
        One line that prints as the characters it shows.
    """
    return _CONTROL.sub(_escape, text)


def shorten(text: str, limit: int = VALUE_CHARS) -> str:
    """`printable(text)` cut to about `limit` characters by dropping its middle.

    Args:
        text: the text to show.
        limit: the most characters to keep (the note saying how long the text was comes on top).

    Returns:
        The text itself when short enough, else its start and end around `…(N characters)…`.
    """
    if len(text) <= limit:
        shown = printable(text)
        if len(shown) <= limit:
            return shown
    keep_head = limit * 2 // 3
    keep_tail = limit - keep_head
    # escape only the ends that are kept: a 10 MB line costs no copy of itself
    head = printable(text[:keep_head])[:keep_head]
    tail = printable(text[-keep_tail:])[-keep_tail:]
    return f"{head}…({len(text):,} characters)…{tail}"


def quoted(value: object, limit: int = VALUE_CHARS) -> str:
    """`repr(value)` cut to about `limit` characters, for a value quoted in a message."""
    if isinstance(value, str) and len(value) > limit:  # no repr of a 10 MB string
        return f"'{shorten(value, limit)}'"
    return shorten(repr(value), limit)
