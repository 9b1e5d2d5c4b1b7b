"""What a model directory or hub checkpoint holds, checked before transformers reads it: its config
(JSON, and custom code in an `auto_map`), its weights files (safetensors with a readable header; pickles
only when allowed), and their sha256 digests (recorded, and compared with a pin)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from huggingface_hub import try_to_load_from_cache
from safetensors import safe_open

from peftx.errors import PeftxError
from peftx.util.text_files import read_text

# Weights files transformers reads: safetensors, and pickles (`torch.load`), which can run code.
SAFE_WEIGHTS = ("*.safetensors",)
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def read_json(path: Path, kind: str) -> dict:
    """A JSON object from a user's file (a model's config.json ...), with one-line errors."""
    text = read_text(path, kind)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise PeftxError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise PeftxError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def remote_code_error(where: str) -> PeftxError:
    return PeftxError(
        f"model.source: {where} ships its own Python code (auto_map), which peftx does not run by default; "
        "set model.trust_remote_code: true if you trust it"
    )


def check_local_dir(path: Path, trust_remote_code: bool = False) -> dict:
    """A local model directory's config.json, refusing custom code unless trusted.

    Raises:
        PeftxError: no config.json, one that is not a JSON object, or an `auto_map` (in config.json or
            tokenizer_config.json) without `trust_remote_code`.
    """
    if not (path / "config.json").is_file():
        raise PeftxError(f"model.source: {str(path)!r} is not a model directory (no config.json)")
    data = read_json(path / "config.json", "model config")
    tokenizer_config = path / "tokenizer_config.json"
    custom = "auto_map" in data or (
        tokenizer_config.is_file() and "auto_map" in read_json(tokenizer_config, "tokenizer config")
    )
    if custom and not trust_remote_code:
        raise remote_code_error(str(path))
    if "model_type" not in data:
        raise PeftxError(f"{path / 'config.json'}: model_type: required key is missing")
    return data


def weights_files(path: Path, allow_pickle: bool = False) -> list[Path]:
    """The weights files transformers would load from a local directory, checked: safetensors files
    must have a readable header; pickles are refused unless `allow_pickle`.

    Raises:
        PeftxError: no weights file, only pickles without `allow_pickle`, or a corrupt safetensors file.
    """
    safe = sorted(p for pattern in SAFE_WEIGHTS for p in path.glob(pattern))
    pickles = sorted(p for pattern in PICKLE_WEIGHTS for p in path.glob(pattern))
    for p in safe:
        try:
            with safe_open(str(p), "pt") as f:
                f.keys()
        except Exception as e:  # safetensors raises its own error types (and OSError) for a bad header
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise PeftxError(f"{p}: not a readable safetensors file ({first})") from None
    if safe:
        return safe
    if pickles and not allow_pickle:
        raise PeftxError(
            f"model.source: {path} holds only pickle weights ({pickles[0].name}); unpickling can run code, so peftx "
            "loads safetensors only: convert them, or set model.allow_pickle: true if you trust the file"
        )
    if not pickles:
        raise PeftxError(f"model.source: {path} holds no weights file (*.safetensors); or use model.pretrained: false")
    return pickles


def file_sha256(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def hub_weights(source: str) -> list[Path]:
    """The weights files of a hub checkpoint in the local cache (after loading it)."""
    found = []
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        path = try_to_load_from_cache(source, name)
        if isinstance(path, str):
            found.append(Path(path))
    index = next((p for p in found if p.name.endswith(".index.json")), None)
    if index is not None:  # sharded: the shards the index names
        shards = sorted(set(read_json(index, "weights index").get("weight_map", {}).values()))
        found = [Path(p) for n in shards if isinstance(p := try_to_load_from_cache(source, n), str)]
    return found[:1] if not index else found


def check_sha256(digests: dict[str, str], pinned: str | dict[str, str] | None, source: str) -> None:
    """Compare the loaded weights' digests with `model.sha256`.

    Raises:
        PeftxError: a digest differs, or the pin does not name the files loaded.
    """
    if pinned is None:
        return
    if isinstance(pinned, str):
        if len(digests) != 1:
            raise PeftxError(
                f"model.sha256: {source!r} loads {len(digests)} weights files; pin each: {{file name: sha256}}"
            )
        pinned = {next(iter(digests)): pinned}
    if set(pinned) != set(digests):
        raise PeftxError(f"model.sha256: pins {sorted(pinned)} but {source!r} loads {sorted(digests)}")
    for name, digest in digests.items():
        if pinned[name] != digest:
            raise PeftxError(f"model.sha256: {name} of {source!r} has sha256 {digest}, not the pinned {pinned[name]}")
