"""Image classification as a sequence task: an image becomes a sequence of patches or of pixels.

- `mode: patches`: non-overlapping p x p patches in row-major order, each flattened (row, column,
  channel) into one vector: 32x32 RGB with p = 4 gives 64 tokens of 48 values (the Frozen Pretrained
  Transformer's CIFAR-10 setting); 28x28 greyscale with p = 4 gives 49 tokens of 16 values.
- `mode: pixels`: one token per pixel (Long Range Arena's "image" task: greyscale, 1,024 tokens for
  CIFAR-10). Use `greyscale: true` for colour images, and `downsample` where the sequence would pass
  the model's positions: 28x28 = 784 pixels exceeds BERT's 512, `downsample: 2` gives 14x14 = 196.
`downsample: f` averages f x f blocks first. Values are stored as uint8 and reach the model as
intensities in [0, 1] (`linear` projects patch vectors; `pixel_vocab` maps each pixel to a number token).

Sources: Fashion-MNIST (idx files; offline from Debian's `dataset-fashion-mnist` package, whose files
are the default `data_dir`), CIFAR-10 (a local copy of its python batches in `data_dir`, else the hub
id `hub_id` through `datasets`), and scikit-learn's bundled 8x8 digits (the tiny set). Validation is
carved out of the training images (seeded, `n_val`), the test split is the dataset's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from peftx.errors import PeftxError
from peftx.spec.input_spec import ContinuousSpec
from peftx.tasks.base import SPLITS, TaskConfig, TaskData, TaskInfo
from peftx.tasks.registry import TASKS
from peftx.tasks.splits import check_splits, majority_accuracy, nearest_centroid_accuracy
from peftx.tasks.vision import image_files
from peftx.util.cache import cached_dataset_dict
from peftx.util.user_paths import UserPath

if TYPE_CHECKING:  # imported where data is made: reading a recipe imports neither
    import datasets
    import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
SHAPES = {"fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3), "digits": (8, 8, 1)}  # (height, width, channels)
LABELS = {
    "fashion_mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),  # fmt: skip
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "digits": tuple(str(d) for d in range(10)),
}
DEFAULT_N_VAL = {"fashion_mnist": 5000, "cifar10": 5000, "digits": 300}
FORMAT_VERSION = 1


def to_sequences(images: np.ndarray, mode: str, patch: int, downsample: int, greyscale: bool) -> np.ndarray:
    """(n, h, w, c) uint8 images -> (n, seq, dim) uint8 sequences (see the module docstring)."""
    import numpy as np

    x = images
    if greyscale and x.shape[-1] == 3:  # ITU-R 601 luma, as Pillow's convert("L")
        x = ((x.astype(np.uint32) * np.array([299, 587, 114])).sum(-1) + 500) // 1000
        x = x[..., None].astype(np.uint8)
    n, h, w, c = x.shape
    if downsample > 1:
        blocks = x.reshape(n, h // downsample, downsample, w // downsample, downsample, c).astype(np.float32)
        x = np.rint(blocks.mean((2, 4))).astype(np.uint8)
        n, h, w, c = x.shape
    if mode == "pixels":
        return x.reshape(n, h * w, c)
    x = x.reshape(n, h // patch, patch, w // patch, patch, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (h // patch) * (w // patch), patch * patch * c)


class VisionConfig(TaskConfig):
    """Images as sequences of patches or pixels (Fashion-MNIST, CIFAR-10, 8x8 digits)."""

    name: Literal["vision"] = "vision"
    dataset: Literal["fashion_mnist", "cifar10", "digits"] = "fashion_mnist"
    """fashion_mnist (60k/10k, 28x28 grey), cifar10 (50k/10k, 32x32 RGB), digits (1,797, 8x8 grey)."""
    data_dir: UserPath | None = None
    """fashion_mnist: folder of idx files (default: Debian's /usr/share/datasets/fashion-mnist);
    cifar10: the cifar-10-batches-py folder (default: load `hub_id`)."""
    hub_id: str = "uoft-cs/cifar10"
    """cifar10 without data_dir: the hub dataset loaded through `datasets`."""
    mode: Literal["patches", "pixels"] = "patches"
    """patches: one token per square patch (its values flattened); pixels: one token per pixel."""
    patch: int = Field(4, ge=1)
    """patches: side of each square patch, in pixels (after downsampling)."""
    downsample: int = Field(1, ge=1)
    """Average f x f pixel blocks first (pixels mode on 28x28 with BERT: 2)."""
    greyscale: bool = False
    """Convert colour images to one channel (pixels mode: one value per token, as LRA)."""
    n_val: int | None = Field(None, ge=1)
    """Validation images carved from train (default 5000; digits: 300)."""
    n_train: int | None = Field(None, ge=1)
    """Use only this many training images (seeded subset); None: all the rest."""
    n_test: int | None = Field(None, ge=1)
    """Use only this many test images (seeded subset); None: all (digits: 300)."""
    data_seed: int = 0
    """Seed of the validation carve-out, the subsets and digits' test split; fixed apart from the
    training seed so that all runs share one dataset."""

    def default_input(self) -> str:
        return "linear"

    def train_size(self) -> int | None:
        total = {"fashion_mnist": 60_000, "cifar10": 50_000, "digits": 1_797 - 300}[self.dataset]
        rest = total - (self.n_val or DEFAULT_N_VAL[self.dataset])
        return min(self.n_train, rest) if self.n_train is not None else rest

    def sequence_shape(self) -> tuple[int, int]:
        """(tokens, values per token) of every image; raises PeftxError when the sizes do not divide."""
        h, w, c = SHAPES[self.dataset]
        c = 1 if self.greyscale else c
        if h % self.downsample or w % self.downsample:
            raise PeftxError(f"task.downsample: {self.downsample} does not divide the {h}x{w} images")
        h, w = h // self.downsample, w // self.downsample
        if self.mode == "pixels":
            return h * w, c
        if h % self.patch or w % self.patch:
            raise PeftxError(f"task.patch: {self.patch} does not divide the {h}x{w} images")
        return (h // self.patch) * (w // self.patch), self.patch * self.patch * c

    def describe(self) -> TaskInfo:
        _, dim = self.sequence_shape()
        return TaskInfo(
            input_spec=ContinuousSpec(dim=dim, scale=1 / 255, kind="intensity"),
            labels=LABELS[self.dataset],
            parse=self.parse,
        )

    def parse(self, line: str) -> np.ndarray:
        """A path to an image (.png, .jpg, ... or .npy) of the dataset's size -> (seq, dim) uint8."""
        h, w, c = SHAPES[self.dataset]
        image = image_files.read_image_file(Path(line.strip()).expanduser(), c)
        if image.shape != (h, w, c):
            raise PeftxError(f"{line.strip()}: image is {image.shape}, {self.dataset} images are {(h, w, c)}")
        return to_sequences(image[None], self.mode, self.patch, self.downsample, self.greyscale)[0]

    def _read(self) -> tuple[image_files.Arrays, str]:
        if self.dataset == "digits":
            images, labels = image_files.read_digits()
            return {"all": (images, labels)}, "scikit-learn load_digits"
        if self.dataset == "fashion_mnist":
            folder = self.data_dir or FASHION_MNIST_DIR
            if self.data_dir is None and not folder.is_dir():
                raise PeftxError(
                    f"{folder}: Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist "
                    "(or set task.data_dir to a folder of its idx files)"
                )
            return image_files.read_idx_dir(folder), str(folder)
        if self.data_dir is not None:
            return image_files.read_cifar_batches(self.data_dir), str(self.data_dir)
        arrays, names = image_files.read_hub(self.hub_id, SHAPES["cifar10"][2])
        if len(names) != len(LABELS["cifar10"]):
            raise PeftxError(f"task.hub_id: {self.hub_id!r} has {len(names)} classes, CIFAR-10 has 10")
        return arrays, self.hub_id

    def _source_key(self) -> dict:
        """What identifies the source files (a changed file gives a new cache entry)."""
        if self.dataset == "digits":
            return {"source": "sklearn"}
        if self.dataset == "cifar10" and self.data_dir is None:
            return {"source": self.hub_id}
        folder = self.data_dir or FASHION_MNIST_DIR
        files = sorted(folder.glob("*")) if folder.is_dir() else []
        return {
            "source": str(folder.resolve()),
            "files": [(p.name, p.stat().st_size, p.stat().st_mtime) for p in files],
        }

    def _build(self) -> datasets.DatasetDict:
        import datasets
        import numpy as np

        arrays, _ = self._read()
        rng = np.random.default_rng(self.data_seed)
        n_val = self.n_val or DEFAULT_N_VAL[self.dataset]
        if self.dataset == "digits":  # no official split: seeded 300 test, n_val validation, the rest train
            images, labels = arrays["all"]
            order = rng.permutation(len(labels))
            test_idx, rest = order[:300], order[300:]
            arrays = {"train": (images[rest], labels[rest]), "test": (images[test_idx], labels[test_idx])}
        images, labels = arrays["train"]
        shape = images.shape[1:]
        if shape != SHAPES[self.dataset]:
            raise PeftxError(f"{self.dataset}: images are {shape}, expected {SHAPES[self.dataset]}")
        if not (0 < n_val < len(labels)):
            raise PeftxError(f"task.n_val: {n_val} is not below the {len(labels)} training images")
        order = rng.permutation(len(labels))
        val_idx, train_idx = order[:n_val], order[n_val:]
        if self.n_train is not None:
            train_idx = train_idx[: self.n_train]
        test_images, test_labels = arrays["test"]
        test_idx = np.arange(len(test_labels))
        if self.n_test is not None:
            test_idx = rng.permutation(len(test_labels))[: self.n_test]
        parts = {
            "train": (images[np.sort(train_idx)], labels[np.sort(train_idx)]),
            "validation": (images[np.sort(val_idx)], labels[np.sort(val_idx)]),
            "test": (test_images[np.sort(test_idx)], test_labels[np.sort(test_idx)]),
        }
        names = list(LABELS[self.dataset])
        features = datasets.Features(
            {
                "values": datasets.Sequence(datasets.Sequence(datasets.Value("uint8"))),
                "label": datasets.ClassLabel(names=names),
            }
        )
        out = {}
        for split, (x, y) in parts.items():
            if len(y) and (y.min() < 0 or y.max() >= len(names)):
                raise PeftxError(f"{self.dataset}: {split} labels outside 0..{len(names) - 1}")
            seqs = to_sequences(x, self.mode, self.patch, self.downsample, self.greyscale)
            out[split] = datasets.Dataset.from_dict({"values": seqs, "label": y}, features=features)
        return datasets.DatasetDict(out)

    def load(self) -> TaskData:
        import numpy as np

        seq, dim = self.sequence_shape()
        key = {"format": FORMAT_VERSION, **self.model_dump(mode="json", exclude={"name"}), **self._source_key()}
        splits = cached_dataset_dict("vision", key, self._build)
        check_splits(splits, f"vision {self.dataset}", self._describe_source(), len(LABELS[self.dataset]))
        flat = {s: _flat_values(splits[s]) for s in ("train", "test")}
        y = {s: np.asarray(splits[s]["label"]) for s in ("train", "test")}
        baselines = {
            "majority_class": majority_accuracy(y["train"].tolist(), y["test"].tolist()),
            "nearest_centroid": nearest_centroid_accuracy(flat["train"], y["train"], flat["test"], y["test"]),
        }
        sizes = {s: len(splits[s]) for s in SPLITS}
        notes = [
            f"vision: {self.dataset} from {self._describe_source()}, {self.mode} -> {seq} tokens of {dim} values, "
            f"downsample {self.downsample}, greyscale {self.greyscale}; splits {sizes} (validation carved from "
            f"train with data_seed={self.data_seed})"
        ]
        return TaskData(splits=splits, info=self.describe(), baselines=baselines, notes=notes)

    def _describe_source(self) -> str:
        if self.dataset == "digits":
            return "scikit-learn"
        if self.dataset == "cifar10" and self.data_dir is None:
            return f"hub {self.hub_id}"
        return str(self.data_dir or FASHION_MNIST_DIR)


def _flat_values(ds: datasets.Dataset) -> np.ndarray:
    """(n, seq * dim) float32 intensities of a split of equal-length images (for baselines)."""
    import numpy as np
    import pyarrow.compute as pc

    col = ds.data.column("values").combine_chunks()
    flat = pc.list_flatten(pc.list_flatten(col)).to_numpy(zero_copy_only=False)
    return flat.reshape(len(ds), -1).astype(np.float32) / 255


TASKS.register(VisionConfig)
