"""peft without bitsandbytes where nothing is quantized: the one place peftx patches peft.

Two seams, both because peft imports bitsandbytes (slow, and it prints a kernel warning on some CPUs)
where a model without quantized layers never needs it, and peft has no switch for either:

- `install_import_hook`: `import peft` runs while `import bitsandbytes` fails. peft imports
  bitsandbytes at its own import (`peft/helpers.py`, for one SVD helper peftx never calls).
- `peft_without_bitsandbytes`: while a method adds its modules to a model without quantized layers,
  peft's tuners are told bitsandbytes is not installed. peft's LoRA and IA3 layer factories import it
  the first time they run, only to offer layers for bitsandbytes' own linear types.

bitsandbytes stays installed and importable, and peft still loads it where a quantized layer or 8-bit
dispatch needs it (`peftx.model.quantization`, peft's LoRA/IA3 layer dispatch). This module imports
neither torch nor peft itself: `import peftx` installs the hook and stays cheap.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__all__ = ["install_import_hook", "loaded_bitsandbytes", "peft_without_bitsandbytes"]

_BNB_CHECKS = ("is_bnb_available", "is_bnb_4bit_available")


class _PeftLoader(importlib.abc.Loader):
    """peft's own loader, run while `import bitsandbytes` fails (see `_PeftWithoutBitsandbytes`)."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec):  # noqa: ANN001, ANN201  (importlib's protocol)
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:  # noqa: ANN001
        hidden = "bitsandbytes" not in sys.modules
        if hidden:
            sys.modules["bitsandbytes"] = None  # `import bitsandbytes` raises ImportError meanwhile
        try:
            self.loader.exec_module(module)
        finally:
            if hidden and sys.modules.get("bitsandbytes", 0) is None:
                del sys.modules["bitsandbytes"]
                # availability checks cached while hidden are asked again (find_spec, no import)
                utils = sys.modules.get("peft.import_utils")
                for name in _BNB_CHECKS:
                    getattr(getattr(utils, name, None), "cache_clear", lambda: None)()


class _PeftWithoutBitsandbytes(importlib.abc.MetaPathFinder):
    """`import peft` without importing bitsandbytes (see the module docstring)."""

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201  (importlib's protocol)
        if name != "peft":
            return None
        sys.meta_path.remove(self)  # once: find peft's own spec, then step aside
        spec = importlib.util.find_spec("peft")
        if spec is not None and spec.loader is not None:
            spec.loader = _PeftLoader(spec.loader)
        return spec


def install_import_hook() -> None:
    """Make the process's first `import peft` run without bitsandbytes; nothing if peft is imported already."""
    if "peft" not in sys.modules:
        sys.meta_path.insert(0, _PeftWithoutBitsandbytes())


def loaded_bitsandbytes() -> ModuleType | None:
    """bitsandbytes where something has imported it already, else None. A quantized weight cannot
    exist before that, so checks for one can answer without importing it (a model with no quantized
    layer never pays for the import, nor prints its warnings)."""
    bnb = sys.modules.get("bitsandbytes")
    return bnb if getattr(bnb, "nn", None) is not None else None


def _has_quantized_layer(model: nn.Module) -> bool:
    bnb = loaded_bitsandbytes()
    if bnb is None:
        return False
    kinds = (bnb.nn.Linear8bitLt, bnb.nn.Linear4bit)
    return any(isinstance(m, kinds) for m in model.modules())


@contextmanager
def peft_without_bitsandbytes(model: nn.Module) -> Iterator[None]:
    """While a method adds its modules to `model`: where `model` has no quantized layer, peft's tuners
    are told bitsandbytes is not installed.

    The layers peft makes are the same either way. The availability checks peft bound by name are
    replaced for the duration, in every peft module that holds them. A quantized model goes through
    untouched.

    Args:
        model: the model the method changes.
    """
    if _has_quantized_layer(model):
        yield
        return
    import peft  # noqa: F401  (loads the tuner modules that hold the checks)

    saved = [
        (mod, name, getattr(mod, name))
        for key, mod in list(sys.modules.items())
        if key.startswith("peft.") and mod is not None
        for name in _BNB_CHECKS
        if callable(getattr(mod, name, None))
    ]
    try:
        for mod, name, _ in saved:
            setattr(mod, name, _unavailable)
        yield
    finally:
        for mod, name, check in saved:
            setattr(mod, name, check)


def _unavailable() -> bool:
    return False
