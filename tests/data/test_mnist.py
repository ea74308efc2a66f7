"""Tests of the MNIST readers: the real mnist.npz, synthetic IDX files and invalid files."""

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from arflows.data import load_dataset
from arflows.data.mnist import read_idx

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
MNIST_NPZ = SHARED_DATA / "mnist" / "mnist.npz"

needs_mnist = pytest.mark.skipif(not MNIST_NPZ.is_file(), reason=f"real MNIST not found at {MNIST_NPZ}")


def _split_arrays(dataset, split):
    pairs = [dataset.split(split)[index] for index in range(dataset.num_examples(split))]
    return torch.stack([q for q, _ in pairs]).numpy(), np.array([label for _, label in pairs])


def _assert_disjoint_cover(dataset, total):
    indices = np.concatenate([dataset.indices(split) for split in dataset.split_names])
    assert len(indices) == total
    assert len(np.unique(indices)) == total


@needs_mnist
def test_mnist_real_npz():
    dataset = load_dataset(f"mnist:{MNIST_NPZ}")

    assert dataset.name == "mnist"
    assert dataset.spec == f"mnist:{MNIST_NPZ}"
    assert dataset.num_bins == 256
    assert dataset.data_shape == (1, 28, 28)
    assert dataset.class_names == tuple("0123456789")
    assert [dataset.num_examples(split) for split in dataset.split_names] == [54000, 6000, 10000]
    _assert_disjoint_cover(dataset, 70000)
    assert dataset.indices("test").min() == 60000
    assert dataset.indices("validation").max() < 60000

    with np.load(MNIST_NPZ) as raw:
        x_test, y_test = raw["x_test"], raw["y_test"]
    q, label = dataset.split("test")[0]
    assert q.dtype == torch.int64
    assert q.shape == (1, 28, 28)
    assert torch.equal(q[0], torch.from_numpy(x_test[0].astype(np.int64)))
    assert label == int(y_test[0])
    assert int(dataset.images.max()) == 255

    batch, labels = next(iter(torch.utils.data.DataLoader(dataset.split("train"), batch_size=64)))
    assert batch.shape == (64, 1, 28, 28)
    assert batch.dtype == torch.int64
    assert labels.shape == (64,)


@needs_mnist
def test_mnist_real_folder_and_seed():
    from_folder = load_dataset(f"mnist:{MNIST_NPZ.parent}", max_examples=3000)
    same_seed = load_dataset(f"mnist:{MNIST_NPZ}", max_examples=3000)
    other_seed = load_dataset(f"mnist:{MNIST_NPZ}", max_examples=3000, seed=1)

    assert [from_folder.num_examples(split) for split in from_folder.split_names] == [2700, 300, 3000]
    assert np.array_equal(from_folder.images, same_seed.images)
    for split in from_folder.split_names:
        assert np.array_equal(from_folder.indices(split), same_seed.indices(split))
    assert not np.array_equal(from_folder.images, other_seed.images)


def _write_idx(path, array, compress=True):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(path, "wb") as file:
            file.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def tiny_mnist_idx(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, size=(30, 28, 28), dtype=np.uint8),
        "y_train": rng.integers(0, 10, size=30, dtype=np.uint8),
        "x_test": rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8),
        "y_test": rng.integers(0, 10, size=6, dtype=np.uint8),
    }
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", arrays["x_train"])
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", arrays["y_train"])
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", arrays["x_test"])
    # One file uncompressed, as some mirrors ship them.
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", arrays["y_test"], compress=False)
    return tmp_path, arrays


def test_mnist_idx_files(tiny_mnist_idx):
    folder, arrays = tiny_mnist_idx
    dataset = load_dataset(f"mnist:{folder}", validation_fraction=0.2)

    assert dataset.data_shape == (1, 28, 28)
    assert [dataset.num_examples(split) for split in dataset.split_names] == [24, 6, 6]
    assert np.array_equal(dataset.images[:30, 0], arrays["x_train"])
    test_images, test_labels = _split_arrays(dataset, "test")
    assert np.array_equal(test_images[:, 0], arrays["x_test"])
    assert np.array_equal(test_labels, arrays["y_test"])
    _, train_labels = _split_arrays(dataset, "train")
    assert np.array_equal(train_labels, arrays["y_train"][dataset.indices("train")])


def test_mnist_idx_missing_file(tiny_mnist_idx):
    folder, _ = tiny_mnist_idx
    (folder / "t10k-images-idx3-ubyte.gz").unlink()

    with pytest.raises(ValueError, match=r"lacks \['t10k-images-idx3-ubyte\(.gz\)'\]"):
        load_dataset(f"mnist:{folder}")


def test_read_idx_rejects_bad_files(tmp_path):
    corrupt = tmp_path / "corrupt.gz"
    corrupt.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(ValueError, match=f"cannot read IDX file {corrupt}"):
        read_idx(corrupt)

    not_idx = tmp_path / "not_idx"
    not_idx.write_bytes(b"\x89PNG\r\n")
    with pytest.raises(ValueError, match="is not an IDX file: its first bytes are 89504e47"):
        read_idx(not_idx)

    short = tmp_path / "short"
    _write_idx(short, np.zeros((3, 4, 4), dtype=np.uint8), compress=False)
    short.write_bytes(short.read_bytes()[:-1])
    with pytest.raises(
        ValueError, match=r"has 63 bytes, but its header \(shape \(3, 4, 4\), dtype uint8\) implies 64"
    ):
        read_idx(short)


def _write_mnist_npz(path, **overrides):
    arrays = {
        "x_train": np.zeros((4, 28, 28), dtype=np.uint8),
        "y_train": np.arange(4),
        "x_test": np.zeros((2, 28, 28), dtype=np.uint8),
        "y_test": np.arange(2),
    }
    arrays.update(overrides)
    np.savez(path, **arrays)


def test_mnist_npz_rejects_bad_content(tmp_path):
    wide = tmp_path / "wide.npz"
    _write_mnist_npz(wide, x_train=np.full((4, 28, 28), 300, dtype=np.int64))
    with pytest.raises(
        ValueError, match=r"x_train .* has values in \[300, 300\]; expected integers in \[0, 255\]"
    ):
        load_dataset(f"mnist:{wide}")

    floats = tmp_path / "floats.npz"
    _write_mnist_npz(floats, x_test=np.zeros((2, 28, 28)))
    with pytest.raises(ValueError, match="has dtype float64; expected integers"):
        load_dataset(f"mnist:{floats}")

    incomplete = tmp_path / "incomplete.npz"
    np.savez(incomplete, x_train=np.zeros((1, 28, 28), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"lacks the arrays \['y_train', 'x_test', 'y_test'\]"):
        load_dataset(f"mnist:{incomplete}")

    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(ValueError, match=f"cannot read MNIST file {corrupt}"):
        load_dataset(f"mnist:{corrupt}")


def test_mnist_crop_and_resize(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(10, 28, 28), dtype=np.uint8)
    path = tmp_path / "mnist.npz"
    _write_mnist_npz(path, x_train=images, y_train=np.zeros(10, dtype=np.uint8))

    cropped = load_dataset(f"mnist:{path}", crop=(20, 10))
    assert cropped.data_shape == (1, 20, 10)
    assert np.array_equal(cropped.images[:10, 0], images[:, 4:24, 9:19])

    resized = load_dataset(f"mnist:{path}", resize=14)
    assert resized.data_shape == (1, 14, 14)
    expected = np.asarray(Image.fromarray(images[0]).resize((14, 14), Image.Resampling.BICUBIC))
    assert np.array_equal(resized.images[0, 0], expected)

    with pytest.raises(ValueError, match="crop 30x30 is larger than the 28x28 image"):
        load_dataset(f"mnist:{path}", crop=30)
    with pytest.raises(ValueError, match=r"crop must be an integer or a \(height, width\) pair, got '20'"):
        load_dataset(f"mnist:{path}", crop="20")
    with pytest.raises(ValueError, match=r"mnist images have 1 channel\(s\), got channels=3"):
        load_dataset(f"mnist:{path}", channels=3)
