"""Readers of image-classification data in their published formats, each returning uint8 arrays
(n, height, width, channels) and integer labels.

- idx (MNIST / Fashion-MNIST, gzipped or not): `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`.
- CIFAR-10's "python version": `data_batch_1` ... `data_batch_5`, `test_batch` (pickled dicts).
- a Hugging Face `datasets` hub id (an Image column and a ClassLabel column).
- scikit-learn's bundled 8x8 digits (intensities 0-16, scaled to 0-255).
Missing or malformed files raise a one-line PeftxError naming the file.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import TYPE_CHECKING

from peftx.errors import PeftxError

# numpy is imported by the readers: the vision task registers (and a recipe is read) without it.
if TYPE_CHECKING:
    import numpy as np

    Arrays = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (images (n, h, w, c) uint8, labels (n,))

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def _find(data_dir: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    raise PeftxError(f"{data_dir / (stem + '.gz')}: missing idx file (gzipped or not)")


def read_idx(path: Path) -> np.ndarray:
    """An idx file's array (unsigned-byte data only, as MNIST and Fashion-MNIST use)."""
    import numpy as np

    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise PeftxError(f"{path}: cannot read: {e}") from None
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] != 0x08:
        raise PeftxError(f"{path}: not an unsigned-byte idx file (bad magic number)")
    ndim = data[3]
    head = 4 + 4 * ndim
    if ndim == 0 or len(data) < head:
        raise PeftxError(f"{path}: corrupt idx header")
    dims = struct.unpack(">" + "I" * ndim, data[4:head])
    size = int(np.prod(dims))
    if len(data) - head != size:
        raise PeftxError(f"{path}: holds {len(data) - head} bytes of data, its header says {size}")
    return np.frombuffer(data, dtype=np.uint8, offset=head).reshape(dims)


def read_idx_dir(data_dir: Path) -> Arrays:
    """Train and test images and labels from a folder of idx files."""
    import numpy as np

    if not data_dir.is_dir():
        raise PeftxError(f"{data_dir}: no such folder of idx files")
    out = {}
    for split, (images_stem, labels_stem) in IDX_FILES.items():
        images, labels = read_idx(_find(data_dir, images_stem)), read_idx(_find(data_dir, labels_stem))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise PeftxError(f"{data_dir}: {split} images {images.shape} and labels {labels.shape} do not match")
        out[split] = (images[..., None], labels.astype(np.int64))
    return out


def read_cifar_batches(data_dir: Path) -> Arrays:
    """CIFAR-10's python batches (rows of 3072 bytes: the red, green, then blue 32x32 planes)."""
    import numpy as np

    if not data_dir.is_dir():
        raise PeftxError(f"{data_dir}: no such folder (expected CIFAR-10's cifar-10-batches-py)")
    out = {}
    for split, names in CIFAR_FILES.items():
        images, labels = [], []
        for name in names:
            path = data_dir / name
            if not path.is_file():
                raise PeftxError(
                    f"{path}: missing CIFAR-10 batch (expected {', '.join(sum(CIFAR_FILES.values(), []))})"
                )
            try:
                with path.open("rb") as f:
                    batch = pickle.load(f, encoding="bytes")  # the format is a pickle; read only files you trust
                data = np.asarray(batch[b"data"], dtype=np.uint8)
                y = np.asarray(batch[b"labels"], dtype=np.int64)
            except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as e:
                raise PeftxError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
            if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(y):
                raise PeftxError(f"{path}: expected data of shape (n, 3072) and n labels, got {data.shape}, {y.shape}")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(y)
        out[split] = (np.concatenate(images), np.concatenate(labels))
    return out


def read_hub(hub_id: str, channels: int) -> tuple[Arrays, list[str]]:
    """Train and test splits of an image-classification dataset on the Hugging Face hub (or its cache)."""
    import datasets
    import numpy as np

    try:
        dd = datasets.load_dataset(hub_id)
    except Exception as e:  # the hub raises many kinds (connection, not found, offline mode)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise PeftxError(
            f"task.hub_id: cannot load {hub_id!r} ({first}); offline, point task.data_dir at a local copy"
        ) from None
    missing = {"train", "test"} - set(dd)
    if missing:
        raise PeftxError(f"task.hub_id: {hub_id!r} has no {sorted(missing)} split(s)")
    features = dd["train"].features
    image_col = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
    label_col = next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    if image_col is None or label_col is None:
        raise PeftxError(f"task.hub_id: {hub_id!r} lacks an Image or a ClassLabel column ({list(features)})")
    mode = "L" if channels == 1 else "RGB"
    out = {}
    for split in ("train", "test"):
        ds = dd[split]
        images = np.stack([np.asarray(img.convert(mode), dtype=np.uint8) for img in ds[image_col]])
        out[split] = (images.reshape(*images.shape[:3], channels), np.asarray(ds[label_col], dtype=np.int64))
    return out, list(features[label_col].names)


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits (1,797 images) as (n, 8, 8, 1) uint8 and labels."""
    import numpy as np

    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise PeftxError("task.dataset: digits needs scikit-learn: pip install 'peftx[offline]'") from None
    d = load_digits()
    images = np.rint(d.images * (255 / 16)).astype(np.uint8)  # intensities 0-16 -> 0-255
    return images[..., None], d.target.astype(np.int64)


def read_image_file(path: Path, channels: int) -> np.ndarray:
    """One image as (height, width, channels) uint8: a .npy array (uint8, or floats in [0, 1]) or an
    image file Pillow can open (converted to greyscale or RGB as the task needs)."""
    import numpy as np

    if not path.is_file():
        raise PeftxError(f"{path}: no such image file")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise PeftxError(f"{path}: not a .npy array ({e})") from None
        if arr.dtype != np.uint8:
            if not np.issubdtype(arr.dtype, np.floating) or arr.min() < 0 or arr.max() > 1:
                raise PeftxError(f"{path}: expected uint8 pixels or floats in [0, 1], got {arr.dtype}")
            arr = np.rint(arr * 255).astype(np.uint8)
        return arr[..., None] if arr.ndim == 2 else arr
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise PeftxError(f"{path}: reading image files needs Pillow (pip install pillow); or pass a .npy") from None
    try:
        with Image.open(path) as img:
            arr = np.asarray(img.convert("L" if channels == 1 else "RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise PeftxError(f"{path}: not an image file ({e})") from None
    return arr.reshape(*arr.shape[:2], channels)
