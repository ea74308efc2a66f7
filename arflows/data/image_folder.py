"""Folders of PNG, JPEG and BMP files, optionally in class subfolders, as 8-bit images."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from .dataset import choose_subset, list_files, partition_examples
from .images import EIGHT_BIT_BINS, ImageDataset, Size, crop_offsets, parse_size

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")

# Pillow modes with more than 8 bits per channel, which K = 256 levels cannot hold.
_WIDE_MODES = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _scan_image_folder(root: Path) -> tuple[list[Path], np.ndarray, tuple[str, ...] | None]:
    """List the image files below ``root`` with their labels and class names.

    Images directly in ``root`` are unlabelled (label -1). Otherwise each subfolder is a class, labelled by
    its position among the sorted subfolder names, and contains that class's images at any depth.
    """
    entries = sorted(entry for entry in root.iterdir() if not entry.name.startswith("."))
    top_files = [entry for entry in entries if entry.is_file()]
    subfolders = [entry for entry in entries if entry.is_dir()]
    class_files = {folder.name: list_files(folder) for folder in subfolders}

    all_files = top_files + [file for files in class_files.values() for file in files]
    ignored = [file for file in all_files if not _is_image(file)]
    if ignored:
        logger.warning(
            "Ignored %d files in %s without a PNG, JPEG or BMP extension (%s), for example %s",
            len(ignored),
            root,
            ", ".join(IMAGE_EXTENSIONS),
            ignored[0],
        )

    top_images = [file for file in top_files if _is_image(file)]
    class_images = {name: [file for file in files if _is_image(file)] for name, files in class_files.items()}
    classes_with_images = [name for name, files in class_images.items() if files]
    if not top_images and not classes_with_images:
        raise ValueError(f"no images with the extensions {IMAGE_EXTENSIONS} found in {root}")

    if top_images:
        if classes_with_images:
            raise ValueError(
                f"{root} has images at its top level (for example {top_images[0].name}) and in subfolders "
                f"(for example {classes_with_images[0]}/); put all images in class subfolders or none"
            )
        return top_images, np.full(len(top_images), -1, dtype=np.int64), None

    empty = [name for name, files in class_images.items() if not files]
    if empty:
        raise ValueError(
            f"class subfolders {empty} of {root} contain no images; every subfolder of an image folder is a "
            f"class and needs at least one image"
        )
    class_names = tuple(sorted(class_images))
    paths = [file for name in class_names for file in class_images[name]]
    labels = np.concatenate(
        [np.full(len(class_images[name]), label, dtype=np.int64) for label, name in enumerate(class_names)]
    )
    return paths, labels, class_names


def _read_image_file(
    path: Path, mode: str, crop: tuple[int, int] | None, resize: tuple[int, int] | None
) -> tuple[np.ndarray, str]:
    """Decode one image file, convert it to ``mode`` ("L" or "RGB"), crop and resize it.

    Returns:
        The uint8 pixels of shape C×H×W and the file's original Pillow mode.
    """
    try:
        with Image.open(path) as image:
            image.load()
            original_mode = image.mode
            if original_mode in _WIDE_MODES:
                raise ValueError(
                    f"image {path} has mode {original_mode} with more than 8 bits per channel; expected an 8-bit "
                    f"image for K = {EIGHT_BIT_BINS} levels"
                )
            try:
                converted = image.convert(mode) if image.mode != mode else image
            except ValueError as error:
                raise ValueError(
                    f"cannot convert image {path} from mode {image.mode} to {mode}: {error}"
                ) from error
            if crop is not None:
                top, left = crop_offsets(converted.height, converted.width, crop, path)
                converted = converted.crop((left, top, left + crop[1], top + crop[0]))
            if resize is not None and (converted.height, converted.width) != resize:
                converted = converted.resize((resize[1], resize[0]), Image.Resampling.BICUBIC)
            pixels = np.asarray(converted, dtype=np.uint8)
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        # Pillow reports unknown formats and truncated data as OSError, some corrupt headers as SyntaxError.
        raise ValueError(f"cannot read image {path}: {error}") from error

    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (C, H, W)
    return pixels, original_mode


def _log_conversions(modes: Counter, mode: str, root: Path) -> None:
    alpha = sum(count for original, count in modes.items() if original in _ALPHA_MODES)
    if alpha:
        logger.warning("Discarded the alpha channel of %d images in %s", alpha, root)
    for original, count in sorted(modes.items()):
        if original != mode:
            logger.info("Converted %d images in %s from Pillow mode %s to %s", count, root, original, mode)


def _check_one_size(images: Sequence[np.ndarray], paths: Sequence[Path], root: Path) -> None:
    sizes = Counter(image.shape[1:] for image in images)
    if len(sizes) <= 1:
        return
    first_path = {}
    for image, path in zip(images, paths):
        first_path.setdefault(image.shape[1:], path)
    listed = "; ".join(
        f"{height}x{width}: {count} images, for example {first_path[(height, width)]}"
        for (height, width), count in sizes.most_common(5)
    )
    raise ValueError(
        f"images in {root} have {len(sizes)} different sizes ({listed}); pass crop or resize to give them one size"
    )


def load_image_folder(
    path: Path,
    *,
    channels: int | None,
    spec: str | None = None,
    crop: Size | None = None,
    resize: Size | None = None,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    max_examples: int | None = None,
    num_workers: int | None = None,
) -> ImageDataset:
    """Load a folder of PNG, JPEG and BMP files as 8-bit images (K = 256).

    Class subfolders are optional: images directly in ``path`` are unlabelled (label -1), and otherwise
    each subfolder is a class, labelled by its index among the sorted subfolder names. Pillow converts
    every image to grayscale ("L", ITU-R 601-2 luma) for ``channels=1`` or to RGB for ``channels=3``,
    dropping any alpha channel with a warning. Each image is centre-cropped to ``crop``, then resized to
    ``resize`` (bicubic); after that all images must have one size. The folder has no test split, so
    seeded ``test_fraction`` and ``validation_fraction`` parts are held out. ``max_examples`` reads only a
    seeded random choice of that many files. Nothing is written or cached.

    Args:
        path: the folder.
        channels: 1 or 3, required because a folder of files declares no channel count.
        num_workers: threads that decode images; None uses min(8, CPU count).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for no images, a file that Pillow cannot decode, mixed sizes without crop or resize,
            or an invalid ``channels``.
    """
    path = Path(path)
    if channels not in (1, 3):
        raise ValueError(
            f"folder datasets need channels=1 (grayscale) or channels=3 (RGB), got channels={channels!r}"
        )
    if not path.exists():
        raise FileNotFoundError(f"image folder {path} not found")
    if not path.is_dir():
        raise ValueError(f"folder: expects a folder of images, got the file {path}")
    crop_size = parse_size(crop, "crop")
    resize_size = parse_size(resize, "resize")
    mode = "L" if channels == 1 else "RGB"

    paths, labels, class_names = _scan_image_folder(path)
    keep = choose_subset(len(paths), max_examples, seed=seed)
    paths = [paths[index] for index in keep]
    labels = labels[keep]

    start = time.perf_counter()
    workers = num_workers or min(8, os.cpu_count() or 1)
    executor = ThreadPoolExecutor(max_workers=workers)
    try:
        # Pillow releases the GIL inside its decoders, so threads overlap decoding. Header parsing runs in
        # Python, one thread at a time, and dominates for small files such as 32×32 JPEGs.
        results = list(executor.map(lambda file: _read_image_file(file, mode, crop_size, resize_size), paths))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    images = [pixels for pixels, _ in results]
    _log_conversions(Counter(original for _, original in results), mode, path)
    _check_one_size(images, paths, path)
    logger.info("Read %d images from %s in %.1f s", len(images), path, time.perf_counter() - start)

    stacked = np.stack(images)  # (N, C, H, W)
    splits = partition_examples(
        len(stacked), validation_fraction=validation_fraction, test_fraction=test_fraction, seed=seed
    )
    return ImageDataset(
        name="folder",
        spec=spec or f"folder:{path}",
        num_bins=EIGHT_BIT_BINS,
        images=stacked,
        labels=labels,
        splits=splits,
        class_names=class_names,
        paths=paths,
    )
