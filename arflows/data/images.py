"""Images held in memory as N×C×H×W integer arrays, their crops and resizes, and scikit-learn's digits."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image

from .dataset import (
    DiscreteDataset,
    check_discrete_values,
    choose_subset,
    hold_out_validation,
    partition_examples,
)

__all__ = [
    "DIGITS_BINS",
    "EIGHT_BIT_BINS",
    "ImageArrays",
    "ImageDataset",
    "ImageSplit",
    "Size",
    "assemble_image_dataset",
    "center_crop_and_resize",
    "check_labels",
    "check_native_channels",
    "crop_offsets",
    "load_digits",
    "parse_size",
]

Size = Union[int, tuple[int, int]]
ImageArrays = tuple[np.ndarray, np.ndarray]

EIGHT_BIT_BINS = 256
DIGITS_BINS = 17


class ImageSplit(torch.utils.data.Dataset):
    """One split of an image dataset. Item i is ``(q, label)`` with q an int64 tensor of shape C×H×W."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
        self.images = images
        self.labels = labels
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        example = self.indices[index]
        q = torch.from_numpy(self.images[example].astype(np.int64))  # (C, H, W)
        return q, int(self.labels[example])


class ImageDataset(DiscreteDataset):
    """Images held in memory as one uint8 array of shape N×C×H×W.

    Attributes:
        images: uint8 array (N, C, H, W) of all examples; the splits index into it.
        paths: the source file of each example for image folders, else None.
    """

    def __init__(
        self,
        *,
        name: str,
        spec: str,
        num_bins: int,
        images: np.ndarray,
        labels: np.ndarray,
        splits: dict[str, np.ndarray],
        class_names: Sequence[str] | None = None,
        paths: Sequence[Path] | None = None,
    ) -> None:
        if images.ndim != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {images.shape}")
        check_discrete_values(images, num_bins, f"the images of {spec}")
        super().__init__(
            name=name,
            spec=spec,
            num_bins=num_bins,
            data_shape=tuple(images.shape[1:]),
            labels=labels,
            splits=splits,
            class_names=class_names,
        )
        self.images = images
        self.paths = None if paths is None else tuple(paths)

    def split(
        self,
        name: str,
        *,
        segment_length: int | None = None,
        generator: torch.Generator | None = None,
    ) -> ImageSplit:
        """Return split ``name`` as a dataset of ``(q, label)`` with q of shape ``data_shape``.

        ``generator`` is accepted for a signature shared with audio and unused, because images are
        returned whole. ``segment_length`` must be None.
        """
        self._check_split_name(name)
        if segment_length is not None:
            raise ValueError(
                f"segment_length={segment_length} applies only to audio; {self.name} images have the fixed "
                f"shape {self.data_shape}"
            )
        return ImageSplit(self.images, self.labels, self._splits[name])


def parse_size(value: Size | None, option: str) -> tuple[int, int] | None:
    """Return ``value`` (an int for a square, or a (height, width) pair) as a (height, width) tuple."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        pair = tuple(value)
    else:
        raise ValueError(f"{option} must be an integer or a (height, width) pair, got {value!r}")

    for side in pair:
        if isinstance(side, bool) or not isinstance(side, (int, np.integer)) or side < 1:
            raise ValueError(f"{option} must contain positive integers, got {value!r}")
    return int(pair[0]), int(pair[1])


def crop_offsets(height: int, width: int, crop: tuple[int, int], source: object) -> tuple[int, int]:
    """Return the (top, left) offset of a centred crop, rounding towards the top left."""
    crop_height, crop_width = crop
    if crop_height > height or crop_width > width:
        raise ValueError(
            f"crop {crop_height}x{crop_width} is larger than the {height}x{width} image {source}; expected "
            f"a crop of at most {height}x{width}"
        )
    return (height - crop_height) // 2, (width - crop_width) // 2


def _resize_array(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize one uint8 image of shape C×H×W with Pillow's bicubic filter."""
    channels = image.shape[0]
    pixels = image[0] if channels == 1 else image.transpose(1, 2, 0)  # (H, W) or (H, W, C)
    resized = np.asarray(Image.fromarray(pixels).resize((size[1], size[0]), Image.Resampling.BICUBIC))
    return resized[None] if channels == 1 else resized.transpose(2, 0, 1)  # (C, h, w)


def center_crop_and_resize(
    images: np.ndarray,
    *,
    crop: tuple[int, int] | None,
    resize: tuple[int, int] | None,
    source: object,
) -> np.ndarray:
    """Centre-crop uint8 images of shape N×C×H×W to ``crop``, then resize them to ``resize``.

    Either step is skipped when its size is None. Resizing uses Pillow's bicubic filter, which
    antialiases when it shrinks and keeps values in [0, 255].
    """
    if crop is not None:
        top, left = crop_offsets(images.shape[2], images.shape[3], crop, source)
        images = images[:, :, top : top + crop[0], left : left + crop[1]]
    if resize is not None and tuple(images.shape[2:]) != resize:
        images = np.stack([_resize_array(image, resize) for image in images])
    return np.ascontiguousarray(images)


def check_native_channels(name: str, channels: int | None, native: int) -> None:
    """Raise ValueError unless ``channels`` is None or the source's own channel count ``native``."""
    if channels is not None and channels != native:
        raise ValueError(
            f"{name} images have {native} channel(s), got channels={channels}; pass {native} or None"
        )


def assemble_image_dataset(
    *,
    name: str,
    spec: str,
    num_bins: int,
    train: ImageArrays,
    test: ImageArrays | None,
    class_names: Sequence[str] | None,
    crop: tuple[int, int] | None,
    resize: tuple[int, int] | None,
    max_examples: int | None,
    seed: int,
    validation_fraction: float,
    test_fraction: float,
) -> ImageDataset:
    """Build an ImageDataset from N×C×H×W arrays of a source's train part and, if it has one, test part.

    Without a test part, seeded validation and test parts are held out of ``train``. With one, only
    validation is held out of ``train``.
    """
    parts = [train] if test is None else [train, test]
    processed = []
    for stream, (images, labels) in enumerate(parts):
        keep = choose_subset(len(images), max_examples, seed=seed, stream=stream)
        images = center_crop_and_resize(images[keep], crop=crop, resize=resize, source=spec)
        processed.append((images, labels[keep]))

    if test is None:
        images, labels = processed[0]
        splits = partition_examples(
            len(images), validation_fraction=validation_fraction, test_fraction=test_fraction, seed=seed
        )
    else:
        (train_images, train_labels), (test_images, test_labels) = processed
        images = np.concatenate([train_images, test_images])
        labels = np.concatenate([train_labels, test_labels])
        num_train = len(train_images)
        splits = hold_out_validation(
            np.arange(num_train),
            np.arange(num_train, len(images)),
            validation_fraction=validation_fraction,
            seed=seed,
        )

    return ImageDataset(
        name=name,
        spec=spec,
        num_bins=num_bins,
        images=images,
        labels=labels,
        splits=splits,
        class_names=class_names,
    )


def check_labels(labels: np.ndarray, count: int, source: str) -> np.ndarray:
    """Return ``labels`` as int64 after checking that they are ``count`` non-negative integers."""
    if labels.shape != (count,):
        raise ValueError(f"{source} has labels of shape {labels.shape}; expected ({count},), one per image")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{source} has labels of dtype {labels.dtype}; expected integers")
    if count and labels.min() < 0:
        raise ValueError(f"{source} has a negative label {labels.min()}; expected labels >= 0")
    return labels.astype(np.int64)


def load_digits(
    *,
    spec: str = "digits",
    channels: int | None = None,
    crop: Size | None = None,
    resize: Size | None = None,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    max_examples: int | None = None,
) -> ImageDataset:
    """Load scikit-learn's 1,797 handwritten digits, 8×8 with 17 grey levels (K = 17, shape 1×8×8).

    The data ships with scikit-learn. It has no test split, so seeded ``test_fraction`` and
    ``validation_fraction`` parts are held out. ``resize`` is rejected because interpolation would need
    values between the 17 levels.
    """
    # Imported here so that only digits users pay for importing scikit-learn.
    from sklearn.datasets import load_digits as sklearn_load_digits

    check_native_channels("digits", channels, 1)
    if resize is not None:
        raise ValueError(f"resize={resize!r} is not supported for digits, whose values are 17 grey levels")

    bunch = sklearn_load_digits()
    values = np.asarray(bunch.images)
    if not np.array_equal(values, np.round(values)):
        raise ValueError("scikit-learn's digits contain non-integer values; expected 17 grey levels 0..16")
    images = values.astype(np.int64)
    check_discrete_values(images, DIGITS_BINS, "scikit-learn's digits")
    return assemble_image_dataset(
        name="digits",
        spec=spec,
        num_bins=DIGITS_BINS,
        train=(images.astype(np.uint8)[:, None], np.asarray(bunch.target, dtype=np.int64)),  # (N, 1, 8, 8)
        test=None,
        class_names=tuple(str(name) for name in bunch.target_names),
        crop=parse_size(crop, "crop"),
        resize=None,
        max_examples=max_examples,
        seed=seed,
        validation_fraction=validation_fraction,
        test_fraction=test_fraction,
    )
