"""Tests of the CIFAR-10 readers on synthetic batches, folders and archives."""

import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from arflows.data import load_dataset
from arflows.data.cifar10 import read_cifar10_archive, read_cifar10_folder

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _split_arrays(dataset, split):
    pairs = [dataset.split(split)[index] for index in range(dataset.num_examples(split))]
    return torch.stack([q for q, _ in pairs]).numpy(), np.array([label for _, label in pairs])


def _cifar_batch(rng, count):
    data = rng.integers(0, 256, size=(count, 3072), dtype=np.uint8)
    labels = rng.integers(0, 10, size=count).tolist()
    return {
        "batch_label": "synthetic",
        "labels": labels,
        "data": data,
        "filenames": [f"{i}.png" for i in range(count)],
    }


@pytest.fixture
def tiny_cifar(tmp_path):
    """A cifar-10-batches-py folder with 5 training batches of 4 images and a test batch of 6."""
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {f"data_batch_{number}": _cifar_batch(rng, 4) for number in range(1, 6)}
    batches["test_batch"] = _cifar_batch(rng, 6)
    batches["batches.meta"] = {"label_names": CIFAR_CLASSES, "num_cases_per_batch": 4, "num_vis": 3072}
    for name, content in batches.items():
        with open(folder / name, "wb") as file:
            pickle.dump(content, file, protocol=2)
    return tmp_path, batches


def test_cifar10_batches_folder(tiny_cifar):
    root, batches = tiny_cifar
    dataset = load_dataset(f"cifar10:{root}", validation_fraction=0.25)

    assert dataset.name == "cifar10"
    assert dataset.num_bins == 256
    assert dataset.data_shape == (3, 32, 32)
    assert dataset.class_names == tuple(CIFAR_CLASSES)
    assert [dataset.num_examples(split) for split in dataset.split_names] == [15, 5, 6]

    # Row r of a batch contains the red, green and blue 32x32 planes of image r in turn.
    train_data = np.concatenate([batches[f"data_batch_{number}"]["data"] for number in range(1, 6)])
    image = dataset.images[7]
    for channel in range(3):
        for row, column in [(0, 0), (5, 17), (31, 31)]:
            assert image[channel, row, column] == train_data[7, channel * 1024 + row * 32 + column]

    test_images, test_labels = _split_arrays(dataset, "test")
    assert np.array_equal(test_images.reshape(6, 3072), batches["test_batch"]["data"])
    assert test_labels.tolist() == batches["test_batch"]["labels"]

    direct = load_dataset(f"cifar10:{root / 'cifar-10-batches-py'}", validation_fraction=0.25)
    assert np.array_equal(direct.images, dataset.images)


def test_cifar10_archive(tiny_cifar, tmp_path):
    root, _ = tiny_cifar
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / "cifar-10-batches-py", arcname="cifar-10-batches-py")

    # The synthetic archive is not the official one, so the MD5 check rejects it before unpickling.
    with pytest.raises(ValueError, match="expected c58f30108f718f92721af3b95e74349a of the official"):
        load_dataset(f"cifar10:{archive}")

    (train, train_labels), (test, test_labels), names = read_cifar10_archive(archive, md5=None)
    (folder_train, folder_train_labels), (folder_test, folder_test_labels), _ = read_cifar10_folder(
        root / "cifar-10-batches-py"
    )
    assert np.array_equal(train, folder_train)
    assert np.array_equal(train_labels, folder_train_labels)
    assert np.array_equal(test, folder_test)
    assert np.array_equal(test_labels, folder_test_labels)
    assert names == tuple(CIFAR_CLASSES)


class _CallsGetcwd:
    def __reduce__(self):
        return os.getcwd, ()


def test_cifar10_rejects_foreign_pickles(tiny_cifar):
    root, _ = tiny_cifar
    folder = root / "cifar-10-batches-py"
    with open(folder / "data_batch_3", "wb") as file:
        pickle.dump({"data": _CallsGetcwd(), "labels": []}, file, protocol=2)

    with pytest.raises(
        ValueError, match=r"data_batch_3 as a CIFAR-10 pickle: global \w+\.getcwd is not allowed"
    ):
        load_dataset(f"cifar10:{root}")


def test_cifar10_rejects_bad_batches(tiny_cifar):
    root, batches = tiny_cifar
    folder = root / "cifar-10-batches-py"
    wrong = dict(batches["test_batch"], data=np.zeros((6, 100), dtype=np.uint8))
    with open(folder / "test_batch", "wb") as file:
        pickle.dump(wrong, file, protocol=2)
    with pytest.raises(
        ValueError, match=r"test_batch has data of shape \(6, 100\) and dtype uint8; expected \(N, 3072\)"
    ):
        load_dataset(f"cifar10:{root}")

    with open(folder / "test_batch", "wb") as file:
        pickle.dump(batches["test_batch"], file, protocol=2)
    (folder / "batches.meta").unlink()
    with pytest.raises(ValueError, match="lacks batches.meta"):
        read_cifar10_folder(folder)
