"""Mistakes on the command line itself (a missing argument, an unknown option, a bad value) are one line
and exit code 2, like every other mistake in the input."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize(
    "args, message",
    [
        (["run"], "peftx run: Missing argument 'recipe'. (see "),
        (["run", "r.yaml", "--bogus"], "peftx run: No such option: --bogus (see "),
        (["evaluate", "d", "--json", "--split"], "Option '--split' requires an argument."),
        (["nonsense"], "No such command 'nonsense'."),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(args, message):
    done = subprocess.run([sys.executable, "-m", "peftx", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]  # one line
    assert done.stderr.startswith("error: ") and message in done.stderr
    assert "Traceback" not in done.stderr and not done.stdout
