"""Commands that need no model import no torch, transformers, peft, accelerate or datasets.

Each command runs in a fresh interpreter (an empty cache, as a user's first call), and the heavy
modules it left in `sys.modules` are compared with none. Wall times are measured, not asserted here
(a shared machine makes tight times flaky): `python scripts/bench_cold.py --only commands`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HEAVY = ("torch", "transformers", "peft", "accelerate", "datasets")
ROOT = Path(__file__).resolve().parents[1]
# Run one command in-process as `peftx` would, then write the heavy modules it imported to argv[1].
DRIVER = f"""
import json, runpy, sys
out, sys.argv = sys.argv[1], ["peftx", *sys.argv[2:]]
try:
    runpy.run_module("peftx", run_name="__main__")
except SystemExit as e:
    code = e.code
else:
    code = 0
heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
open(out, "w").write(json.dumps({{"code": code, "heavy": heavy}}))
"""


def cold(tmp_path: Path, *args: str) -> dict:
    """Exit code and heavy modules of `peftx <args>` in a fresh interpreter with an empty cache."""
    out = tmp_path / "imports.json"
    env = {"PEFTX_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(out), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.is_file(), proc.stderr[-2000:]
    return json.loads(out.read_text()) | {"stderr": proc.stderr}


def write(tmp_path: Path, raw: dict, name: str) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def lora_recipe(tmp_path: Path) -> dict:
    return {
        "model": {"source": "offline"},
        "task": {"name": "listops", "preset": "tiny"},
        "method": {"name": "lora", "r": 4},
        "train": {"steps": 10, "batch_size": 8},
        "output": {"dir": str(tmp_path / "runs")},
    }


def test_plugin_registries_and_their_config_classes_import_no_torch(tmp_path):
    """Families, methods and input adapters register (config classes, declared shapes) without torch."""
    code = "import sys, peftx.families, peftx.methods, peftx.inputs; print(sorted(m for m in {!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code.format(HEAVY)], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["validate", "--help"], ["budget", "--help"]])
def test_help_and_version_import_no_torch(tmp_path, args):
    result = cold(tmp_path, *args)
    assert result["code"] == 0 and result["heavy"] == []


@pytest.mark.parametrize("section", [[], ["method.lora"], ["task"]])
def test_recipe_show_imports_no_torch(tmp_path, section):
    result = cold(tmp_path, "recipe", "show", *section)
    assert result["code"] == 0 and result["heavy"] == []


def test_a_schema_error_is_reported_without_torch(tmp_path):
    raw = lora_recipe(tmp_path) | {"task": {"name": "listop"}}
    result = cold(tmp_path, "validate", write(tmp_path, raw, "misspelt.yaml"))
    assert result["code"] == 2 and "unknown task 'listop'" in result["stderr"]
    assert result["heavy"] == []


def test_report_imports_no_torch(tmp_path):
    (tmp_path / "runs").mkdir()
    result = cold(tmp_path, "report", str(tmp_path / "runs"))
    assert result["code"] == 2 and "no completed runs" in result["stderr"]
    assert result["heavy"] == []


def test_sweep_dry_run_grid_imports_no_torch(tmp_path):
    raw = lora_recipe(tmp_path) | {"seed": [0, 1], "train": {"steps": 10, "batch_size": 8, "lr": [1e-3, 3e-4]}}
    result = cold(tmp_path, "sweep", write(tmp_path, raw, "grid.yaml"), "--dry-run")
    assert result["code"] == 0 and result["heavy"] == []


def test_default_budget_table_without_cache_imports_no_torch(tmp_path):
    """The default table is counted from declared shapes (an empty cache: nothing is read back)."""
    result = cold(tmp_path, "budget", "--no-cache")
    assert result["code"] == 0 and result["heavy"] == []
