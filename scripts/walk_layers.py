"""The walk a newcomer takes through the code, from `peftx.run` to result.json: which files it visits,
and how many of its moves climb back up the layers.

Runs a tiny recipe (ListOps `tiny`, 2 steps) under a profiler hook, keeps every call from one peftx file
into another (each call site once, in the order first taken: reading the code, a call is followed once),
and places each module on its import floor: 0 for a module that imports no other peftx module, else one
above the highest floor it imports (function-level imports count, TYPE_CHECKING ones do not). A move is
*up* when it enters a higher floor than the one it leaves: a module calling what it does not import (a
callback, an object handed down). Also counted: moves into a file the walk already left, and, where
`pyproject.toml` states a layers contract covering every module, moves up those layers.

Run: python scripts/walk_layers.py [--recipe recipes/listops_lora.yaml] [--json OUT]
(from a checkout's root: it measures the peftx it imports from there).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path.cwd()
sys.path.insert(0, str(ROOT))


def import_floors(package_dir: Path) -> dict[str, int]:
    """Each module's floor in the import graph of the package at `package_dir`."""
    mods = {}
    for f in package_dir.rglob("*.py"):
        parts = f.relative_to(package_dir.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    deps: dict[str, set[str]] = {}
    for m, f in mods.items():
        tree = ast.parse(f.read_text())
        skip = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        out = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            out |= {n for n in names if n in mods and n != m}
        deps[m] = out
    floors: dict[str, int] = {}

    def floor(m: str, path: tuple = ()) -> int:
        if m not in floors:
            below = [floor(d, path + (m,)) for d in deps[m] if d not in path]
            floors[m] = 1 + max(below) if below else 0
        return floors[m]

    for m in mods:
        floor(m)
    return floors


def layers(pyproject: Path) -> list[list[str]]:
    """The first `layers` contract: top layer first, each a list of module prefixes."""
    contracts = tomllib.loads(pyproject.read_text())["tool"]["importlinter"]["contracts"]
    first = next(c for c in contracts if c["type"] == "layers")
    return [[m.strip() for m in line.split("|")] for line in first["layers"]]


def layer_of(module: str, stack: list[list[str]]) -> int | None:
    """Index of the layer holding `module` (0 = top); None: in no layer."""
    best, depth = None, -1
    for i, line in enumerate(stack):
        for prefix in line:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = i, len(prefix)
    return best


def module_of(path: str, package_dir: Path) -> str | None:
    p = Path(path)
    try:
        rel = p.resolve().relative_to(package_dir.parent)
    except ValueError:
        return None
    parts = rel.with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


# Methods torch calls on its own (a TorchFunctionMode sees every torch call): no reader follows them.
DISPATCHED = {"__torch_function__", "__torch_dispatch__"}


def trace_run(recipe_path: str, out_dir: str) -> list[tuple[str, str]]:
    """Cross-file calls (caller module, callee module), each call site once, in first-taken order."""
    import importlib

    import peftx
    from peftx.recipe import load_recipe

    try:
        run = importlib.import_module("peftx.runs.run").run
    except ModuleNotFoundError:  # a checkout from before the packages (measured for comparison)
        run = importlib.import_module("peftx.run").run
    package_dir = Path(peftx.__file__).resolve().parent
    recipe = load_recipe(
        recipe_path,
        ["task.preset=tiny", "train.steps=2", "train.eval_every=1", f"output.dir={out_dir}", "output.name=walk"],
    )
    seen: set[tuple] = set()
    moves: list[tuple[str, str]] = []
    modules: dict[str, str | None] = {}

    def mod(code) -> str | None:
        f = code.co_filename
        if f not in modules:
            modules[f] = module_of(f, package_dir) if f.startswith(str(package_dir)) else None
        return modules[f]

    def hook(frame, event, arg):  # noqa: ANN001  (sys.setprofile's protocol)
        if event != "call" or frame.f_back is None or frame.f_code.co_name in DISPATCHED:
            return
        callee = mod(frame.f_code)
        if callee is None:
            return
        back = frame.f_back
        while back is not None and mod(back.f_code) is None:  # through library frames (torch, accelerate)
            back = back.f_back
        if back is None:
            return
        caller = mod(back.f_code)
        site = (back.f_code, back.f_lineno, frame.f_code)
        if caller != callee and site not in seen:
            seen.add(site)
            moves.append((caller, callee))

    sys.setprofile(hook)
    try:
        run(recipe)
    finally:
        sys.setprofile(None)
    return moves


def summarize(moves: list[tuple[str, str]], floors: dict[str, int], stack: list[list[str]]) -> dict:
    files, left, up, back, up_layers = [], set(), 0, 0, 0
    walked = {m for move in moves for m in move} - {"peftx", "peftx.__main__"}
    for caller, callee in moves:
        if not files:
            files.append(caller)
        left.add(caller)
        up += floors[callee] > floors[caller]
        a, b = layer_of(caller, stack), layer_of(callee, stack)
        up_layers += a is not None and b is not None and b < a  # moves between modules the layers place
        back += callee in left
        if callee not in files:
            files.append(callee)
    return {
        "files": len(files),
        "moves": len(moves),
        "up_floors": up,
        "up_layers": up_layers,
        "outside_the_layers": sorted(m for m in walked if layer_of(m, stack) is None),
        "back_into_a_file_left": back,
        "visited": files,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default="recipes/listops_lora.yaml")
    p.add_argument("--json", help="write the summary and every move here")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stack = layers(ROOT / "pyproject.toml")
    floors = import_floors(ROOT / "peftx")
    with tempfile.TemporaryDirectory() as tmp:
        moves = trace_run(a.recipe, tmp)
    summary = summarize(moves, floors, stack)
    outside = summary["outside_the_layers"]
    up_layers = str(summary["up_layers"])
    if outside:
        up_layers += f" (moves between placed modules only; {len(outside)} walked modules are in no layer)"
    print(
        f"{summary['files']} files, {summary['moves']} moves between them; up the import floors: "
        f"{summary['up_floors']}; up the stated layers: {up_layers}; "
        f"back into a file already left: {summary['back_into_a_file_left']}; {max(floors.values()) + 1} import floors"
    )
    for caller, callee in moves:
        arrow = "UP" if floors[callee] > floors[caller] else "  "
        print(f"  {arrow} {caller} ({floors[caller]}) -> {callee} ({floors[callee]})")
    if a.json:
        Path(a.json).write_text(json.dumps(summary | {"moves_list": moves}, indent=1))


if __name__ == "__main__":
    main()
