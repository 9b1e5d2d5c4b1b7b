"""peftx: parameter-efficient fine-tuning of pretrained language models on non-language tasks.

Python API (the CLI calls the same functions):
    from peftx import load_recipe, run, Predictor
    result = run(load_recipe("recipes/listops_lora.yaml", ["train.steps=100"]))
    Predictor(result.run_dir).predict(["[MAX 2 9 [MIN 4 7 ] 0 ]"])
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
from importlib import import_module
from typing import Any

# bitsandbytes warns on every import, on CPUs with AVX512-BF16, that an optional 4-bit kernel from the
# hub could not be fetched; its own fallback is used and works. Keep that one line off every command
# that does load it (quantized models, 8-bit optimizers, peft's LoRA/IA3 dispatch).
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: "gemm_4bit_forward" not in record.getMessage()
)


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
                for name in ("is_bnb_available", "is_bnb_4bit_available"):
                    getattr(getattr(utils, name, None), "cache_clear", lambda: None)()


class _PeftWithoutBitsandbytes(importlib.abc.MetaPathFinder):
    """`import peft` without importing bitsandbytes.

    peft imports bitsandbytes at its own import (`peft/helpers.py`, for one SVD helper peftx never
    calls), which costs a second and prints bitsandbytes' kernel warning in every command, also
    where nothing is quantized. peft's module runs while `import bitsandbytes` fails; bitsandbytes
    stays installed and importable, and peft still loads it where a quantized layer or 8-bit
    dispatch needs it (`peftx.model.quantization`, peft's LoRA/IA3 layer dispatch). No library offers this.
    """

    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201  (importlib's protocol)
        if name != "peft":
            return None
        sys.meta_path.remove(self)  # once: find peft's own spec, then step aside
        spec = importlib.util.find_spec("peft")
        if spec is not None and spec.loader is not None:
            spec.loader = _PeftLoader(spec.loader)
        return spec


if "peft" not in sys.modules:
    sys.meta_path.insert(0, _PeftWithoutBitsandbytes())

__version__ = "0.1.0"

_LAZY = {
    "load_recipe": "peftx.recipe",
    "validate_recipe": "peftx.recipe",
    "run": "peftx.runs.run",
    "Predictor": "peftx.runs.predict",
    "PeftxError": "peftx.errors",
}


def __getattr__(name: str) -> Any:
    # Lazy: `import peftx` (and `peftx --help`) should not pay for importing torch and transformers.
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'peftx' has no attribute {name!r}")


__all__ = list(_LAZY)
