"""Commands that quantize nothing neither import bitsandbytes nor print its warnings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Runs a command in a fresh interpreter, then reports whether bitsandbytes was imported.
PROBE = """
import sys
from peftx.cli import app
try:
    app(sys.argv[1:], prog_name="peftx")
except SystemExit as e:
    code = e.code
print("exit", code)
loaded = [m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] == "bitsandbytes"]
print("bitsandbytes imported:", bool(loaded))
"""


def probe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args",
    [("--help",), ("validate", "recipes/listops_frozen.yaml", "recipes/listops_bitfit.yaml")],
    ids=["help", "validate"],
)
def test_no_bitsandbytes_without_quantization(args):
    out = probe(*args)
    assert "exit 0" in out.stdout, out.stderr
    assert "bitsandbytes imported: False" in out.stdout
    text = (out.stdout + out.stderr).lower()
    assert "bitsandbytes" not in text.replace("bitsandbytes imported", "") and "gemm_4bit" not in text


def test_peft_tuners_do_not_import_bitsandbytes_for_plain_models():
    """peft's LoRA and IA3 injection would import bitsandbytes for its 8-bit dispatch (~1.3 s); on a
    model without quantized layers peftx keeps it from doing so, and prints nothing of it."""
    out = probe("validate", "recipes/listops_lora.yaml", "recipes/listops_ia3.yaml")
    assert "exit 0" in out.stdout, out.stderr
    assert "bitsandbytes imported: False" in out.stdout
    text = (out.stdout + out.stderr).lower()
    assert "bitsandbytes" not in text.replace("bitsandbytes imported", "") and "gemm_4bit" not in text


def test_peft_keeps_its_bitsandbytes_checks_after_a_method():
    """The checks are peft's own again once the method's modules are in (quantized models need them)."""
    pytest.importorskip("bitsandbytes")
    code = (
        "import sys\n"
        "from tests.support.tiny import tiny_recipe\n"
        "from tests.support.helpers import build\n"
        "build(tiny_recipe('bert', method={'name': 'lora'}))\n"
        "assert 'bitsandbytes' not in sys.modules\n"
        "import peft.import_utils as u, peft.tuners.lora.model as lm\n"
        "assert lm.is_bnb_available is u.is_bnb_available and u.is_bnb_available()\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip().endswith("ok"), out.stderr


def test_peft_still_finds_bitsandbytes_after_import():
    """peft imported through peftx still reports bitsandbytes installed (its 8-bit dispatch works)."""
    pytest.importorskip("bitsandbytes")
    code = (
        "import peftx.methods, sys\n"
        "import peft.import_utils as u\n"
        "assert 'bitsandbytes' not in sys.modules\n"
        "assert u.is_bnb_available()\n"
        "import bitsandbytes\n"
        "print('ok', bitsandbytes.nn.Linear8bitLt.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok Linear8bitLt" in out.stdout, out.stderr
