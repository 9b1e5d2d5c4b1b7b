"""Third-party plug-ins: the example package in examples/, found through its entry points (its
pyproject's declarations, as an installed distribution's metadata), runs end to end and exports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch
import yaml
from typer.testing import CliRunner

from peftx.cli import app
from peftx.inputs import INPUTS
from peftx.runs.predict import Predictor
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


def run_example(tmp_path: Path) -> Path:
    """The example's recipe, cut to 4 steps, run through the CLI; returns the run directory."""
    recipe = yaml.safe_load((EXAMPLE / "recipe.yaml").read_text())
    recipe["train"]["steps"] = 4
    recipe["output"] = {"dir": str(tmp_path / "runs")}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    done = peftx(["run", str(path), "--quiet"])
    assert done.exit_code == 0, done.output
    return tmp_path / "runs" / "example_plugin"


def test_example_plugin_runs_end_to_end_and_predicts(tmp_path, example_installed):
    shown = peftx(["recipe", "show", "task.labelled_lines"])
    assert shown.exit_code == 0 and "test_fraction" in shown.stdout, shown.output

    run_dir = run_example(tmp_path)
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


# Loads an export in a fresh interpreter where neither peftx nor the plug-in can be imported, as a user
# without them would (transformers, peft and the export's task_model.py), and prints its answers.
LOAD_WITHOUT_PEFTX = """
import json, sys
sys.modules["peftx"] = sys.modules["peftx_example_plugin"] = None  # any import of them fails
from peft import PeftModel
from transformers import AutoModel
export_dir, lines = sys.argv[1], sys.argv[2:]
sys.path.insert(0, export_dir)
from task_model import TaskModel
task = json.load(open(f"{export_dir}/task.json"))
body = AutoModel.from_pretrained(task["export"]["base"] or f"{export_dir}/body")
if task["export"]["adapter"]:
    body = PeftModel.from_pretrained(body, export_dir)
model = TaskModel(body, export_dir).eval()
rows = [line.split() for line in lines]
print(json.dumps({"logits": model.logits(rows).tolist(), "labels": model.predict(rows)}))
"""


def test_example_plugin_exports_and_reloads_without_peftx(tmp_path, example_installed):
    run_dir = run_example(tmp_path)
    out_dir = tmp_path / "export"
    exported = peftx(["export", str(run_dir), str(out_dir)])
    assert exported.exit_code == 0, exported.output
    task = json.loads((out_dir / "task.json").read_text())
    assert task["export"]["input_kind"] == "table"  # what the adapter's export_spec declares

    lines = ["4 4 | 0 0", "0 | 3", "1 2 3 | 4 0 1", "2"]
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1"}
    loaded = subprocess.run(
        [sys.executable, "-c", LOAD_WITHOUT_PEFTX, str(out_dir), *lines],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert loaded.returncode == 0, loaded.stderr
    theirs = json.loads(loaded.stdout.strip().splitlines()[-1])
    run = Predictor(run_dir)
    ours = run.logits(lines)
    assert (torch.tensor(theirs["logits"]) - ours).abs().max().item() <= 1e-5
    assert theirs["labels"] == run.predict(lines)


def test_an_unknown_plugin_name_lists_the_installed_ones(tmp_path, example_installed):
    recipe = yaml.safe_load((EXAMPLE / "recipe.yaml").read_text())
    recipe["input"] = {"name": "onehott"}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = peftx(["validate", str(path)])
    assert out.exit_code == 2 and "onehot" in out.stderr and "Traceback" not in out.stderr
