"""What every bad-input test asserts: exit code 2, one `error:` line naming the file and key or line,
no traceback."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from peftx.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line(result, *fragments: str) -> str:
    """The result is a user error: exit 2, one line on stderr holding every fragment, no traceback."""
    stderr = result.stderr.strip()
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not (result.exception and not isinstance(result.exception, SystemExit))
    assert stderr.count("\n") == 0 and stderr.startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in stderr, (fragment, stderr)
    return stderr


def write(path, data) -> str:
    """Write a dict as YAML, a str as UTF-8, bytes as they are; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, dict):
        data = yaml.safe_dump(data, sort_keys=False)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)
