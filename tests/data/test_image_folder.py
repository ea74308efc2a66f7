"""Tests of image folders: exact pixels, channels, class subfolders, sizes and invalid files."""

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from arflows.data import load_dataset

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
CIFAR_JPEG = SHARED_DATA / "cifar10-jpg" / "train"

needs_cifar_jpeg = pytest.mark.skipif(
    not CIFAR_JPEG.is_dir(), reason=f"CIFAR-10 JPEG folder not found at {CIFAR_JPEG}"
)

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _assert_disjoint_cover(dataset, total):
    indices = np.concatenate([dataset.indices(split) for split in dataset.split_names])
    assert len(indices) == total
    assert len(np.unique(indices)) == total


def _write_image(path, pixels, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels) if mode is None else Image.fromarray(pixels).convert(mode)
    image.save(path)


@pytest.fixture
def gray_folder(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(12, 8, 6), dtype=np.uint8)
    folder = tmp_path / "gray"
    for index, pixels in enumerate(images):
        _write_image(folder / f"{index:02d}.png", pixels)
    return folder, images


def test_folder_grayscale_png_exact(gray_folder):
    folder, images = gray_folder
    dataset = load_dataset(f"folder:{folder}", channels=1)

    assert dataset.name == "folder"
    assert dataset.num_bins == 256
    assert dataset.data_shape == (1, 8, 6)
    assert dataset.class_names is None
    assert np.array_equal(dataset.images[:, 0], images)
    assert set(dataset.labels.tolist()) == {-1}
    assert [dataset.num_examples(split) for split in dataset.split_names] == [10, 1, 1]
    assert [path.name for path in dataset.paths] == [f"{index:02d}.png" for index in range(12)]

    as_rgb = load_dataset(f"folder:{folder}", channels=3)
    assert as_rgb.data_shape == (3, 8, 6)
    for channel in range(3):
        assert np.array_equal(as_rgb.images[:, channel], images)


def test_folder_rgb_png_and_bmp_exact(tmp_path):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, size=(4, 5, 7, 3), dtype=np.uint8)
    _write_image(tmp_path / "a.png", images[0])
    _write_image(tmp_path / "b.bmp", images[1])
    _write_image(tmp_path / "c.PNG", images[2])
    _write_image(tmp_path / "d.jpg", images[3])

    dataset = load_dataset(f"folder:{tmp_path}", channels=3, validation_fraction=0.0, test_fraction=0.0)
    assert dataset.data_shape == (3, 5, 7)
    for index in range(3):
        assert np.array_equal(dataset.images[index], images[index].transpose(2, 0, 1))
    # JPEG is lossy, so only its shape is exact.
    assert dataset.images[3].shape == (3, 5, 7)

    gray = load_dataset(f"folder:{tmp_path}", channels=1, validation_fraction=0.0, test_fraction=0.0)
    expected = np.asarray(Image.fromarray(images[0]).convert("L"))
    assert np.array_equal(gray.images[0, 0], expected)


def test_folder_class_subfolders(tmp_path):
    pixels = np.zeros((4, 4), dtype=np.uint8)
    for name, count in [("zebra", 2), ("ant", 3)]:
        for index in range(count):
            _write_image(tmp_path / name / f"{index}.png", pixels + index)
    _write_image(tmp_path / "ant" / "nested" / "deep.png", pixels)
    _write_image(tmp_path / ".hidden" / "skip.png", pixels)
    (tmp_path / "zebra" / ".DS_Store").write_bytes(b"\0")

    dataset = load_dataset(f"folder:{tmp_path}", channels=1, validation_fraction=0.0, test_fraction=0.0)
    assert dataset.class_names == ("ant", "zebra")
    assert dataset.labels.tolist() == [0, 0, 0, 0, 1, 1]
    assert [path.relative_to(tmp_path).as_posix() for path in dataset.paths] == [
        "ant/0.png",
        "ant/1.png",
        "ant/2.png",
        "ant/nested/deep.png",
        "zebra/0.png",
        "zebra/1.png",
    ]


def test_folder_mixed_sizes(tmp_path):
    _write_image(tmp_path / "small.png", np.zeros((8, 8), dtype=np.uint8))
    _write_image(tmp_path / "wide.png", np.arange(120, dtype=np.uint8).reshape(10, 12))
    _write_image(tmp_path / "small2.png", np.zeros((8, 8), dtype=np.uint8))

    with pytest.raises(ValueError) as raised:
        load_dataset(f"folder:{tmp_path}", channels=1, validation_fraction=0.0, test_fraction=0.0)
    message = str(raised.value)
    assert "have 2 different sizes" in message
    assert "8x8: 2 images" in message
    assert f"10x12: 1 images, for example {tmp_path / 'wide.png'}" in message
    assert "pass crop or resize" in message

    cropped = load_dataset(
        f"folder:{tmp_path}", channels=1, crop=(6, 8), validation_fraction=0.0, test_fraction=0.0
    )
    assert cropped.data_shape == (1, 6, 8)
    wide = np.arange(120, dtype=np.uint8).reshape(10, 12)
    assert np.array_equal(cropped.images[2, 0], wide[2:8, 2:10])

    resized = load_dataset(
        f"folder:{tmp_path}", channels=3, resize=(5, 9), validation_fraction=0.0, test_fraction=0.0
    )
    assert resized.data_shape == (3, 5, 9)

    with pytest.raises(ValueError, match=f"crop 9x9 is larger than the 8x8 image {tmp_path / 'small.png'}"):
        load_dataset(f"folder:{tmp_path}", channels=1, crop=9)


def test_folder_corrupt_images(tmp_path):
    _write_image(tmp_path / "good.png", np.zeros((4, 4), dtype=np.uint8))
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match=f"cannot read image {garbage}"):
        load_dataset(f"folder:{tmp_path}", channels=1)

    garbage.unlink()
    truncated = tmp_path / "truncated.png"
    _write_image(truncated, np.random.default_rng(5).integers(0, 256, size=(64, 64), dtype=np.uint8))
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(ValueError, match=f"cannot read image {truncated}"):
        load_dataset(f"folder:{tmp_path}", channels=1)


def test_folder_rejects_16_bit(tmp_path):
    _write_image(tmp_path / "a.png", np.zeros((4, 4), dtype=np.uint8))
    Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16)).save(tmp_path / "deep.png")

    with pytest.raises(ValueError, match=r"deep.png has mode I;16 with more than 8 bits per channel"):
        load_dataset(f"folder:{tmp_path}", channels=1)


def test_folder_alpha_and_other_files_logged(tmp_path, caplog):
    rgba = np.random.default_rng(6).integers(0, 256, size=(4, 4, 4), dtype=np.uint8)
    _write_image(tmp_path / "a.png", rgba)
    _write_image(tmp_path / "b.png", rgba[..., :3])
    _write_image(tmp_path / "c.png", rgba[..., :3])
    (tmp_path / "notes.txt").write_text("not an image")

    with caplog.at_level(logging.INFO, logger="arflows.data.images"):
        dataset = load_dataset(f"folder:{tmp_path}", channels=3, validation_fraction=0.0, test_fraction=0.0)
    assert np.array_equal(dataset.images[0], rgba[..., :3].transpose(2, 0, 1))
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("Discarded the alpha channel of 1 images" in message for message in warnings)
    assert any("Ignored 1 files" in message and "notes.txt" in message for message in warnings)


def test_folder_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder .*absent not found"):
        load_dataset(f"folder:{tmp_path / 'absent'}", channels=1)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images with the extensions"):
        load_dataset(f"folder:{empty}", channels=1)

    mixed = tmp_path / "mixed"
    _write_image(mixed / "top.png", np.zeros((4, 4), dtype=np.uint8))
    _write_image(mixed / "class" / "inner.png", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="has images at its top level .* and in subfolders"):
        load_dataset(f"folder:{mixed}", channels=1)

    classes = tmp_path / "classes"
    _write_image(classes / "cat" / "0.png", np.zeros((4, 4), dtype=np.uint8))
    (classes / "dog").mkdir()
    with pytest.raises(ValueError, match=r"class subfolders \['dog'\] .* contain no images"):
        load_dataset(f"folder:{classes}", channels=1)


@pytest.mark.parametrize("channels", [None, 2, 4])
def test_folder_requires_channels(gray_folder, channels):
    folder, _ = gray_folder

    with pytest.raises(ValueError, match=f"channels=1 .* or channels=3 .*, got channels={channels}"):
        load_dataset(f"folder:{folder}", channels=channels)


def test_folder_max_examples(gray_folder):
    folder, images = gray_folder
    dataset = load_dataset(
        f"folder:{folder}", channels=1, max_examples=5, validation_fraction=0.2, test_fraction=0.2
    )

    assert len(dataset.images) == 5
    assert [dataset.num_examples(split) for split in dataset.split_names] == [3, 1, 1]
    chosen = [int(path.stem) for path in dataset.paths]
    assert np.array_equal(dataset.images[:, 0], images[chosen])


@needs_cifar_jpeg
def test_folder_real_cifar_jpeg():
    dataset = load_dataset(f"folder:{CIFAR_JPEG}", channels=3, max_examples=300)

    assert dataset.data_shape == (3, 32, 32)
    assert dataset.class_names == tuple(CIFAR_CLASSES)
    assert [dataset.num_examples(split) for split in dataset.split_names] == [240, 30, 30]
    _assert_disjoint_cover(dataset, 300)
    assert set(dataset.labels.tolist()) == set(range(10))
    for path, label in zip(dataset.paths, dataset.labels):
        assert path.parent.name == CIFAR_CLASSES[label]

    path = dataset.paths[0]
    expected = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(dataset.images[0], expected)

    again = load_dataset(f"folder:{CIFAR_JPEG}", channels=3, max_examples=300)
    assert dataset.paths == again.paths
    for split in dataset.split_names:
        assert np.array_equal(dataset.indices(split), again.indices(split))

    gray = load_dataset(f"folder:{CIFAR_JPEG}", channels=1, max_examples=20)
    assert gray.data_shape == (1, 32, 32)
    assert np.array_equal(gray.images[0, 0], np.asarray(Image.open(gray.paths[0]).convert("L")))
