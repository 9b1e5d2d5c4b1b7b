"""peftx: parameter-efficient fine-tuning of pretrained language models on non-language tasks.

Python API (the CLI calls the same functions):
    from peftx import load_recipe, run, Predictor
    result = run(load_recipe("recipes/listops_lora.yaml", ["train.steps=100"]))
    Predictor(result.run_dir).predict(["[MAX 2 9 [MIN 4 7 ] 0 ]"])
"""

from __future__ import annotations

import logging
from importlib import import_module
from typing import Any

from peftx.util.peft_shim import install_import_hook

# bitsandbytes warns on every import, on CPUs with AVX512-BF16, that an optional 4-bit kernel from the
# hub could not be fetched; its own fallback is used and works. Keep that one line off every command
# that does load it (quantized models, 8-bit optimizers, peft's LoRA/IA3 dispatch).
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: "gemm_4bit_forward" not in record.getMessage()
)

install_import_hook()  # `import peft` without bitsandbytes: see peftx.util.peft_shim

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
