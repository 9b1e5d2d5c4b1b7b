"""The house rules a machine can check: the top of the package holds only the command line, the errors
and the registries; no function runs past ~60 lines without its reason written beside it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "peftx"
TOP_LEVEL = {"__init__.py", "__main__.py", "cli.py", "errors.py", "registry.py"}
MAX_LINES = 60
REASON = "# long:"  # on the line above a longer function: why it is better whole


def test_top_level_holds_only_the_shell():
    assert {p.name for p in PACKAGE.glob("*.py")} == TOP_LEVEL


def _has_reason(lines: list[str], first: int) -> bool:
    """Whether the comment block right above line `first` (1-based) gives a reason."""
    i = first - 2
    while i >= 0 and lines[i].strip().startswith("#"):
        if lines[i].strip().startswith(REASON):
            return True
        i -= 1
    return False


def long_functions() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            length = node.end_lineno - node.lineno + 1
            if length > MAX_LINES and not _has_reason(lines, first):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_runs_long_without_a_reason():
    assert long_functions() == []


def test_the_check_finds_a_long_function(tmp_path, monkeypatch):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "peftx").mkdir()
    (tmp_path / "peftx" / "m.py").write_text(f"def f():\n{body}\n\n\n{REASON} a reason\ndef g():\n{body}\n")
    monkeypatch.setitem(globals(), "PACKAGE", tmp_path / "peftx")
    assert long_functions() == [f"peftx/m.py:1 f ({MAX_LINES + 1} lines)"]
