"""Third-party plug-ins: the example package in examples/, found through its entry points (its
pyproject's declarations, as an installed distribution's metadata), runs end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import tomllib
import yaml
from typer.testing import CliRunner

from peftx.cli import app
from peftx.inputs import INPUTS
from peftx.tasks import TASKS

runner = CliRunner()

EXAMPLE = Path(__file__).parents[1] / "examples" / "peftx-example-plugin"


def install_metadata(site: Path) -> Path:
    """Write the dist-info an install of the example would write (name, version, entry points), so
    that `importlib.metadata` finds it on the path without touching the environment."""
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    groups = "".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in eps.items())
        for group, eps in project["entry-points"].items()
    )
    (info / "entry_points.txt").write_text(groups)
    return site


@pytest.fixture
def example_installed(tmp_path, monkeypatch):
    """The example package and its metadata on the path; registries rescan their entry points, and
    forget the plug-ins again after the test."""
    monkeypatch.syspath_prepend(str(install_metadata(tmp_path / "site")))
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    monkeypatch.chdir(EXAMPLE.parents[1])  # the recipe's data path is relative to the project root
    for registry in (TASKS, INPUTS):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        monkeypatch.setattr(registry, "_plugins_loaded", False)
    for module in [m for m in sys.modules if m.startswith("peftx_example_plugin")]:
        monkeypatch.delitem(sys.modules, module)
    yield
    for module in [m for m in sys.modules if m.startswith("peftx_example_plugin")]:
        del sys.modules[module]


def peftx(args: list[str]):
    return runner.invoke(app, args)


def test_example_plugin_runs_end_to_end_and_predicts(tmp_path, example_installed):
    recipe = yaml.safe_load((EXAMPLE / "recipe.yaml").read_text())
    recipe["train"]["steps"] = 4
    recipe["output"] = {"dir": str(tmp_path / "runs")}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))

    shown = peftx(["recipe", "show", "task.labelled_lines"])
    assert shown.exit_code == 0 and "test_fraction" in shown.stdout, shown.output

    done = peftx(["run", str(path), "--quiet"])
    assert done.exit_code == 0, done.output
    run_dir = tmp_path / "runs" / "example_plugin"
    res = json.loads((run_dir / "result.json").read_text())
    assert res["status"] == "completed" and res["recipe"]["input"]["name"] == "onehot"
    symbols = 6  # the digits 0-4 and '|'
    assert res["budget"]["by_role"]["input"]["trainable"] == symbols * 64

    inputs = tmp_path / "in.txt"
    inputs.write_text("4 4 | 0 0\n0 | 3\n")
    pred = peftx(["predict", str(run_dir), str(inputs)])
    assert pred.exit_code == 0, pred.output
    rows = [line.split("\t") for line in pred.stdout.strip().splitlines()]
    assert rows[0] == ["input", "prediction"] and [r[1] in ("less", "more") for r in rows[1:]] == [True, True]

    bad = tmp_path / "bad.txt"
    bad.write_text("4 7 | 0\n")
    unknown = peftx(["predict", str(run_dir), str(bad)])
    assert unknown.exit_code == 2 and "bad.txt:1: unknown symbol(s) ['7']" in unknown.stderr


def test_an_unknown_plugin_name_lists_the_installed_ones(tmp_path, example_installed):
    recipe = yaml.safe_load((EXAMPLE / "recipe.yaml").read_text())
    recipe["input"] = {"name": "onehott"}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = peftx(["validate", str(path)])
    assert out.exit_code == 2 and "onehot" in out.stderr and "Traceback" not in out.stderr
