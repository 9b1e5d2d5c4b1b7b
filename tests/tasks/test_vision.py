"""The vision task: images -> patch or pixel sequences, the readers of each published format (on
small fixture files written here), clear errors, and an end-to-end run that predicts from image files."""

from __future__ import annotations

import gzip
import pickle
import struct

import datasets
import numpy as np
import pytest

from peftx.errors import PeftxError
from peftx.recipe import validate_recipe
from peftx.runs.predict import Predictor
from peftx.runs.run import run
from peftx.tasks.vision import task as vision
from peftx.tasks.vision.task import VisionConfig, to_sequences
from tests.support.tiny import tiny_recipe

RNG = np.random.default_rng(0)


def write_idx(path, arr: np.ndarray, gz: bool = True) -> None:
    data = b"\0\0\x08" + bytes([arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


@pytest.fixture
def fashion_dir(tmp_path):
    folder = tmp_path / "fashion"
    folder.mkdir()
    for stem, n in (("train", 20), ("t10k", 6)):
        write_idx(folder / f"{stem}-images-idx3-ubyte.gz", RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{stem}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return folder


def write_cifar(folder, n: int = 2) -> dict:
    folder.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": RNG.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(range(n))}
        (folder / name).write_bytes(pickle.dumps(batch))
        batches[name] = batch
    return batches


def test_patches_pixels_downsample_and_greyscale_layout():
    img = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)
    patches = to_sequences(img, "patches", 2, 1, False)
    assert patches.shape == (1, 4, 4) and patches[0, :2].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert to_sequences(img, "pixels", 1, 1, False)[0, :, 0].tolist() == list(range(16))
    assert to_sequences(img, "pixels", 1, 2, False)[0, :, 0].tolist() == [2, 4, 10, 12]  # 2x2 block means, rounded
    rgb = np.zeros((1, 2, 2, 3), dtype=np.uint8)
    rgb[0, 0, 0] = (255, 0, 0)
    rgb[0, 0, 1] = (0, 0, 9)
    assert to_sequences(rgb, "patches", 2, 1, False)[0, 0, :6].tolist() == [255, 0, 0, 0, 0, 9]  # (row, col, channel)
    assert to_sequences(rgb, "pixels", 1, 1, True)[0, :2, 0].tolist() == [76, 1]  # ITU-R 601 luma


def test_fashion_mnist_idx_files(fashion_dir):
    task = VisionConfig(dataset="fashion_mnist", data_dir=fashion_dir, n_val=4)
    data = task.load()
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 16, "validation": 4, "test": 6}
    spec = data.info.input_spec
    assert (spec.dim, spec.scale, spec.kind) == (16, 1 / 255, "intensity")
    assert data.info.labels[9] == "Ankle boot"
    assert set(data.baselines) == {"majority_class", "nearest_centroid"}
    with gzip.open(fashion_dir / "t10k-images-idx3-ubyte.gz") as f:
        first = np.frombuffer(f.read()[16:], dtype=np.uint8).reshape(6, 28, 28, 1)[0]
    seq = np.asarray(data.splits["test"][0]["values"], dtype=np.uint8)
    assert seq.shape == (49, 16) and (seq == to_sequences(first[None], "patches", 4, 1, False)[0]).all()
    pixels = VisionConfig(dataset="fashion_mnist", data_dir=fashion_dir, n_val=4, mode="pixels", downsample=2)
    assert pixels.sequence_shape() == (196, 1)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / "t10k-labels-idx1-ubyte.gz").unlink(), r"t10k-labels-idx1-ubyte\.gz: missing idx file"),
        (lambda d: (d / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip"), r"idx3-ubyte\.gz: cannot read"),
        (
            lambda d: (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04")),
            "bad magic number",
        ),
        (
            lambda d: write_idx(d / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8)[:0].reshape(0)),
            "do not match",
        ),
        (
            lambda d: (d / "t10k-labels-idx1-ubyte.gz").write_bytes(
                gzip.compress(b"\0\0\x08\x01" + struct.pack(">I", 99) + b"\0" * 6)
            ),
            "holds 6 bytes of data, its header says 99",
        ),
    ],
)
def test_idx_errors_are_one_line(fashion_dir, damage, message):
    damage(fashion_dir)
    with pytest.raises(PeftxError, match=message) as e:
        VisionConfig(dataset="fashion_mnist", data_dir=fashion_dir, n_val=4).load()
    assert "\n" not in str(e.value)


def test_missing_debian_package_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(vision, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(PeftxError, match="apt-get install dataset-fashion-mnist"):
        VisionConfig().load()


def test_cifar10_python_batches(tmp_path):
    batches = write_cifar(tmp_path / "cifar-10-batches-py")
    data = VisionConfig(dataset="cifar10", data_dir=tmp_path / "cifar-10-batches-py", n_val=2).load()
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 8, "validation": 2, "test": 2}
    assert data.info.input_spec.dim == 48 and data.info.labels[0] == "airplane"
    row = batches["test_batch"][b"data"][0]
    first = np.asarray(data.splits["test"][0]["values"], dtype=np.uint8)
    assert first.shape == (64, 48) and first[0, :3].tolist() == [row[0], row[1024], row[2048]]  # R, G, B of (0, 0)
    grey = VisionConfig(dataset="cifar10", data_dir=tmp_path / "cifar-10-batches-py", n_val=2, mode="pixels")
    assert grey.sequence_shape() == (1024, 3)
    assert grey.model_copy(update={"greyscale": True}).sequence_shape() == (1024, 1)


def test_cifar10_errors(tmp_path):
    folder = tmp_path / "c"
    write_cifar(folder)
    (folder / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(PeftxError, match="data_batch_3: not a CIFAR-10 python batch"):
        VisionConfig(dataset="cifar10", data_dir=folder, n_val=2).load()
    (folder / "data_batch_3").unlink()
    with pytest.raises(PeftxError, match="data_batch_3: missing CIFAR-10 batch"):
        VisionConfig(dataset="cifar10", data_dir=folder, n_val=2).load()


def test_cifar10_from_the_hub(monkeypatch):
    from PIL import Image

    names = list(vision.LABELS["cifar10"])
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    images = [Image.fromarray(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(6)]
    split = datasets.Dataset.from_dict({"img": images, "label": list(range(6))}, features=features)
    monkeypatch.setattr(datasets, "load_dataset", lambda hub_id: datasets.DatasetDict(train=split, test=split))
    data = VisionConfig(dataset="cifar10", hub_id="someone/cifar10-copy", n_val=2).load()
    assert len(data.splits["train"]) == 4
    first = np.asarray(data.splits["test"][0]["values"], dtype=np.uint8)
    assert first[0, :3].tolist() == np.asarray(images[0])[0, 0].tolist()

    def offline(hub_id):
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(PeftxError, match="task.hub_id: cannot load 'uoft-cs/cifar10' .*task.data_dir"):
        VisionConfig(dataset="cifar10", n_val=2).load()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"patch": 5}, "task.patch: 5 does not divide the 28x28 images"),
        ({"mode": "pixels", "downsample": 3}, "task.downsample: 3 does not divide"),
    ],
)
def test_sizes_that_do_not_divide(fields, message):
    with pytest.raises(PeftxError, match=message):
        VisionConfig(**fields).describe()


def test_parse_reads_npy_and_image_files(tmp_path):
    from PIL import Image

    task = VisionConfig(dataset="digits", patch=2)
    img = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    np.save(tmp_path / "a.npy", img)
    np.save(tmp_path / "f.npy", img / 255.0)
    Image.fromarray(img).save(tmp_path / "a.png")
    expected = to_sequences(img[None, ..., None], "patches", 2, 1, False)[0]
    for name in ("a.npy", "f.npy", "a.png"):
        assert (task.parse(str(tmp_path / name)) == expected).all(), name
    np.save(tmp_path / "big.npy", np.zeros((9, 9), np.uint8))
    with pytest.raises(PeftxError, match=r"image is \(9, 9, 1\), digits images are \(8, 8, 1\)"):
        task.parse(str(tmp_path / "big.npy"))
    with pytest.raises(PeftxError, match="no such image file"):
        task.parse(str(tmp_path / "none.png"))
    (tmp_path / "bad.png").write_text("x")
    with pytest.raises(PeftxError, match="not an image file"):
        task.parse(str(tmp_path / "bad.png"))


def test_end_to_end_digits_run_and_predict_from_files(tmp_path):
    task = {"name": "vision", "dataset": "digits", "patch": 2, "n_train": 128, "n_val": 32, "n_test": 32}
    recipe = validate_recipe(tiny_recipe("bert", tmp_path, task=task))
    assert recipe.input.name == "linear"  # the vision task's default adapter
    out = run(recipe)
    assert out.result["status"] == "completed" and out.result["budget"]["by_group"]["input"]["trainable"] > 0
    test = recipe.task.load().splits["test"]
    paths = []
    for i, values in enumerate(test["values"]):
        image = np.asarray(values, dtype=np.uint8).reshape(4, 4, 2, 2).transpose(0, 2, 1, 3).reshape(8, 8)
        paths.append(str(tmp_path / f"{i}.npy"))
        np.save(paths[-1], image)
    preds = Predictor(out.run_dir).predict(paths)
    acc = np.mean([p == test.features["label"].int2str(y) for p, y in zip(preds, test["label"])])
    assert acc == pytest.approx(out.result["metrics"]["test_accuracy"], abs=1e-9)
