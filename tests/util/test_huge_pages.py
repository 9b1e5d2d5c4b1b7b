"""The `peftx` command asks torch for huge pages where the kernel offers them, and never overrides a user."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from peftx.util import huge_pages


@pytest.mark.parametrize(
    ("mode", "user", "expected"),
    [
        ("always [madvise] never", None, "1"),
        ("[always] madvise never", None, "1"),
        ("always madvise [never]", None, None),  # the kernel gives none: torch would only warn
        ("always [madvise] never", "0", "0"),  # the user's choice stands
        (None, None, None),  # no THP in this kernel (or not Linux)
    ],
)
def test_huge_pages_are_asked_for_where_offered(tmp_path, monkeypatch, mode, user, expected):
    setting = tmp_path / "enabled"
    if mode is not None:
        setting.write_text(mode + "\n")
    monkeypatch.setattr(huge_pages, "_THP_MODE", setting)
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    if user is not None:
        monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", user)
    assert huge_pages.enable_huge_pages() is (expected == "1")
    assert os.environ.get("THP_MEM_ALLOC_ENABLE") == expected


# The `peftx` command's own process: huge pages asked for before torch's first allocation, so a large
# tensor lands on them.
_COMMAND = """
import runpy, sys
sys.argv = ["peftx", "--version"]
try:
    runpy.run_module("peftx", run_name="__main__")
except SystemExit:
    pass
import torch
x = torch.ones(32 << 20)
print([line.split()[1] for line in open("/proc/self/smaps_rollup") if line.startswith("AnonHugePages")][0])
"""


@pytest.mark.skipif(not huge_pages.kernel_offers_huge_pages(), reason="this kernel offers no huge pages")
def test_the_command_puts_large_tensors_on_huge_pages():
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", _COMMAND], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) >= 64 << 10  # kB: at least half the 128 MiB tensor
