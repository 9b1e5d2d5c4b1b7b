"""Paths a user writes (in a recipe or on the command line), read the way a shell would read them: `~`
is the home folder and `$VAR` / `${VAR}` an environment variable. One helper for input and output paths
alike, so that `output.dir: ~/runs` writes under the home folder instead of creating a folder named `~`,
and `$TMPDIR/data` names the same folder for reading as for writing.

A variable that is not set, or `~name` for an unknown user, is refused rather than kept literally (a
folder named `$TMPDIR` in the working directory is never what was meant).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator

_VARIABLE = re.compile(r"\$(\w+|\{[^}]*\})")


def expand_path(path: str | Path) -> Path:
    """`path` with `~` and environment variables expanded.

    Args:
        path: a path as the user wrote it.

    Returns:
        The expanded path (unchanged when it holds neither).

    Raises:
        ValueError: an environment variable that is not set, or `~name` for an unknown user.
    """
    text = str(path)
    if "$" in text:
        unset = [m.group(1).strip("{}") for m in _VARIABLE.finditer(text) if m.group(1).strip("{}") not in os.environ]
        if unset:
            raise ValueError(f"{text}: environment variable ${unset[0]} is not set")
        text = os.path.expandvars(text)
    if text.startswith("~"):
        expanded = os.path.expanduser(text)
        if expanded.startswith("~"):
            raise ValueError(f"{text}: no user {text[1:].split('/')[0]!r} for '~'")
        text = expanded
    return Path(text)


def _expand_field(value: object) -> object:
    return expand_path(value) if isinstance(value, str | Path) else value


UserPath = Annotated[Path, BeforeValidator(_expand_field)]
"""A recipe field holding a path, expanded by `expand_path` when the recipe is validated."""
