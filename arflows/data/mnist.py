"""MNIST from ``mnist.npz`` or the original IDX files, with an optional checksum-verified download."""

from __future__ import annotations

import gzip
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .dataset import check_discrete_values
from .download import download_file
from .images import (
    EIGHT_BIT_BINS,
    ImageArrays,
    ImageDataset,
    Size,
    assemble_image_dataset,
    check_labels,
    check_native_channels,
    parse_size,
)

__all__ = ["MNIST_NPZ", "MNIST_NPZ_SHA256", "load_mnist", "read_idx", "read_mnist"]

# The mnist.npz that Keras downloads, with the same four arrays as the original IDX files.
MNIST_BASE_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets"
MNIST_NPZ = "mnist.npz"
MNIST_NPZ_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
MNIST_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
MNIST_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file, the format of the original MNIST files, gzip-compressed if the name ends in .gz.

    The header is two zero bytes, a type code, the number of dimensions n and n big-endian uint32 sizes.

    Raises:
        ValueError: if the file cannot be read, is not IDX or its size disagrees with its header.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as file:
            data = file.read()
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"cannot read IDX file {path}: {error}") from error

    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in dtypes:
        raise ValueError(
            f"{path} is not an IDX file: its first bytes are {data[:4].hex()}, expected 0000 and a type code"
        )
    num_dims = data[3]
    header_bytes = 4 + 4 * num_dims
    if len(data) < header_bytes:
        raise ValueError(f"IDX file {path} is truncated inside its header of {header_bytes} bytes")

    shape = struct.unpack(f">{num_dims}I", data[4:header_bytes])
    dtype = np.dtype(dtypes[data[2]])
    expected_bytes = header_bytes + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected_bytes:
        raise ValueError(
            f"IDX file {path} has {len(data)} bytes, but its header (shape {shape}, dtype {dtype}) "
            f"implies {expected_bytes}"
        )
    return (
        np.frombuffer(data, dtype=dtype, offset=header_bytes).reshape(shape).astype(dtype.newbyteorder("="))
    )


def _read_mnist_npz(path: Path) -> dict[str, np.ndarray]:
    # A corrupt archive can fail on opening or on reading an array, with any of these errors.
    errors = (OSError, ValueError, EOFError, zipfile.BadZipFile)
    try:
        loaded = np.load(path, allow_pickle=False)
    except errors as error:
        raise ValueError(f"cannot read MNIST file {path} as .npz: {error}") from error
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(
            f"MNIST file {path} is a single .npy array, expected an .npz archive with {MNIST_NPZ_KEYS}"
        )
    try:
        with loaded as archive:
            names = list(archive.files)
            arrays = {key: archive[key] for key in MNIST_NPZ_KEYS if key in names}
    except errors as error:
        raise ValueError(f"cannot read MNIST file {path} as .npz: {error}") from error

    missing = [key for key in MNIST_NPZ_KEYS if key not in arrays]
    if missing:
        raise ValueError(
            f"MNIST file {path} lacks the arrays {missing}; it has {names}, expected {MNIST_NPZ_KEYS}"
        )
    return arrays


def _find_mnist_idx(folder: Path) -> dict[str, Path] | None:
    """Return the paths of the four MNIST IDX files in ``folder``, or None if it has none of them."""
    found = {}
    for key, stem in MNIST_IDX_FILES.items():
        for candidate in (folder / f"{stem}.gz", folder / stem):
            if candidate.is_file():
                found[key] = candidate
                break
    if not found:
        return None

    missing = [f"{MNIST_IDX_FILES[key]}(.gz)" for key in MNIST_IDX_FILES if key not in found]
    if missing:
        raise ValueError(f"MNIST folder {folder} has some IDX files but lacks {missing}")
    return found


def _mnist_not_found(path: Path) -> FileNotFoundError:
    idx_names = ", ".join(f"{stem}.gz" for stem in MNIST_IDX_FILES.values())
    return FileNotFoundError(
        f"no MNIST data at {path}: expected {MNIST_NPZ} or the IDX files {idx_names} there. Pass "
        f"download=True (--download) to fetch {MNIST_NPZ}, or download {MNIST_BASE_URL}/{MNIST_NPZ} "
        f"and place it in {path}"
    )


def _download_mnist(destination: Path) -> Path:
    return download_file(MNIST_NPZ, destination, default_base_url=MNIST_BASE_URL, sha256=MNIST_NPZ_SHA256)


def read_mnist(path: Path, *, download: bool = False) -> tuple[ImageArrays, ImageArrays]:
    """Read MNIST from an .npz file or a folder with ``mnist.npz`` or the four IDX files.

    With ``download`` True and no data present, ``mnist.npz`` is downloaded (SHA-256 checked) to ``path``
    if it ends in .npz, else into the folder ``path``.

    Returns:
        ``((x_train, y_train), (x_test, y_test))``: uint8 images of shape N×H×W and int64 labels.
    """
    path = Path(path)
    if path.suffix == ".npz":
        if not path.exists():
            if not download:
                raise _mnist_not_found(path)
            _download_mnist(path)
        arrays = _read_mnist_npz(path)
    elif path.is_dir():
        # mnist.npz wins over IDX files when a folder has both.
        idx_files = None if (path / MNIST_NPZ).is_file() else _find_mnist_idx(path)
        if idx_files is not None:
            arrays = {key: read_idx(file) for key, file in idx_files.items()}
        else:
            if not (path / MNIST_NPZ).is_file():
                if not download:
                    raise _mnist_not_found(path)
                _download_mnist(path / MNIST_NPZ)
            arrays = _read_mnist_npz(path / MNIST_NPZ)
    elif path.exists():
        raise ValueError(f"MNIST path {path} is neither a folder nor an .npz file")
    elif download:
        _download_mnist(path / MNIST_NPZ)
        arrays = _read_mnist_npz(path / MNIST_NPZ)
    else:
        raise _mnist_not_found(path)

    parts = []
    for images_key, labels_key in (("x_train", "y_train"), ("x_test", "y_test")):
        images = arrays[images_key]
        if images.ndim != 3:
            raise ValueError(
                f"MNIST {images_key} in {path} has shape {images.shape}; expected (N, height, width)"
            )
        check_discrete_values(images, EIGHT_BIT_BINS, f"MNIST {images_key} in {path}")
        labels = check_labels(arrays[labels_key], len(images), f"MNIST {labels_key} in {path}")
        parts.append((images.astype(np.uint8), labels))
    if parts[0][0].shape[1:] != parts[1][0].shape[1:]:
        raise ValueError(
            f"MNIST train images in {path} are {parts[0][0].shape[1:]} but test images are "
            f"{parts[1][0].shape[1:]}; expected one size"
        )
    return parts[0], parts[1]


def load_mnist(
    path: Path,
    *,
    spec: str | None = None,
    channels: int | None = None,
    crop: Size | None = None,
    resize: Size | None = None,
    download: bool = False,
    validation_fraction: float = 0.1,
    seed: int = 0,
    max_examples: int | None = None,
) -> ImageDataset:
    """Load MNIST with K = 256 and shape 1×28×28 (before ``crop`` and ``resize``).

    Test is the official 10,000-image test set. Validation is a seeded ``validation_fraction`` of the
    60,000 training images. ``max_examples`` caps the train and the test part each, by a seeded choice.
    """
    check_native_channels("mnist", channels, 1)
    (x_train, y_train), (x_test, y_test) = read_mnist(path, download=download)
    class_names = tuple(str(label) for label in range(int(max(y_train.max(), y_test.max())) + 1))
    return assemble_image_dataset(
        name="mnist",
        spec=spec or f"mnist:{path}",
        num_bins=EIGHT_BIT_BINS,
        train=(x_train[:, None], y_train),  # (N, 1, H, W)
        test=(x_test[:, None], y_test),
        class_names=class_names,
        crop=parse_size(crop, "crop"),
        resize=parse_size(resize, "resize"),
        max_examples=max_examples,
        seed=seed,
        validation_fraction=validation_fraction,
        test_fraction=0.0,
    )
