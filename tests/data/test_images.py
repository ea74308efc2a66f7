"""Tests of the shared image helpers and of scikit-learn's digits."""

import numpy as np
import pytest
import torch

from arflows.data import load_dataset
from arflows.data.images import ImageDataset, center_crop_and_resize, parse_size


def _assert_disjoint_cover(dataset, total):
    indices = np.concatenate([dataset.indices(split) for split in dataset.split_names])
    assert len(indices) == total
    assert len(np.unique(indices)) == total


def test_digits():
    from sklearn.datasets import load_digits

    dataset = load_dataset("digits")
    reference = load_digits()

    assert dataset.name == "digits"
    assert dataset.num_bins == 17
    assert dataset.data_shape == (1, 8, 8)
    assert dataset.class_names == tuple("0123456789")
    assert [dataset.num_examples(split) for split in dataset.split_names] == [1437, 180, 180]
    _assert_disjoint_cover(dataset, 1797)
    assert int(dataset.images.max()) == 16
    assert np.array_equal(dataset.images[:, 0], reference.images.astype(np.uint8))
    assert np.array_equal(dataset.labels, reference.target)

    q, label = dataset.split("validation")[0]
    first = dataset.indices("validation")[0]
    assert torch.equal(q, torch.from_numpy(reference.images[first][None].astype(np.int64)))
    assert label == reference.target[first]


def test_digits_crop_and_invalid_options():
    cropped = load_dataset("digits", crop=4)

    assert cropped.data_shape == (1, 4, 4)
    assert np.array_equal(cropped.images[:, 0], load_dataset("digits").images[:, 0, 2:6, 2:6])
    with pytest.raises(ValueError, match="resize=4 is not supported for digits"):
        load_dataset("digits", resize=4)
    with pytest.raises(ValueError, match=r"digits images have 1 channel\(s\), got channels=3"):
        load_dataset("digits", channels=3)
    with pytest.raises(ValueError, match="segment_length=16 applies only to audio"):
        load_dataset("digits").split("train", segment_length=16)


def test_parse_size():
    assert parse_size(None, "crop") is None
    assert parse_size(5, "crop") == (5, 5)
    assert parse_size((4, 6), "resize") == (4, 6)
    assert parse_size([4, 6], "resize") == (4, 6)
    with pytest.raises(ValueError, match=r"resize must contain positive integers, got \(0, 4\)"):
        parse_size((0, 4), "resize")
    with pytest.raises(
        ValueError, match=r"crop must be an integer or a \(height, width\) pair, got \(1, 2, 3\)"
    ):
        parse_size((1, 2, 3), "crop")
    with pytest.raises(ValueError, match="crop must be an integer or a"):
        parse_size(True, "crop")


def test_center_crop_and_resize():
    images = np.arange(2 * 3 * 7 * 6, dtype=np.uint8).reshape(2, 3, 7, 6)

    cropped = center_crop_and_resize(images, crop=(4, 3), resize=None, source="test")
    # An odd margin puts the extra row or column at the bottom or right.
    assert np.array_equal(cropped, images[:, :, 1:5, 1:4])
    resized = center_crop_and_resize(images, crop=(4, 4), resize=(8, 2), source="test")
    assert resized.shape == (2, 3, 8, 2)
    assert resized.dtype == np.uint8
    assert np.array_equal(center_crop_and_resize(images, crop=None, resize=(7, 6), source="test"), images)
    with pytest.raises(ValueError, match="crop 8x6 is larger than the 7x6 image test"):
        center_crop_and_resize(images, crop=(8, 6), resize=None, source="test")


def test_image_dataset_checks_values():
    splits = {"train": np.array([0]), "validation": np.array([], dtype=np.int64), "test": np.array([1])}
    images = np.array([0, 17], dtype=np.uint8).reshape(2, 1, 1, 1)

    with pytest.raises(
        ValueError, match=r"the images of toy has values in \[0, 17\]; expected integers in \[0, 16\]"
    ):
        ImageDataset(name="toy", spec="toy", num_bins=17, images=images, labels=np.zeros(2), splits=splits)
    dataset = ImageDataset(
        name="toy", spec="toy", num_bins=18, images=images, labels=np.zeros(2), splits=splits
    )
    assert len(dataset.split("validation")) == 0
    assert dataset.split("test")[0][0].tolist() == [[[17]]]
