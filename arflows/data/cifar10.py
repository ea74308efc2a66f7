"""CIFAR-10 from the official python batches, read with an unpickler that only rebuilds NumPy arrays."""

from __future__ import annotations

import importlib.util
import io
import pickle
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .download import download_file, file_digest
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

__all__ = [
    "CIFAR10_ARCHIVE",
    "CIFAR10_ARCHIVE_MD5",
    "CIFAR10_FOLDER",
    "load_cifar10",
    "read_cifar10",
    "read_cifar10_archive",
    "read_cifar10_folder",
]

# The "CIFAR-10 python version" from https://www.cs.toronto.edu/~kriz/cifar.html with its published MD5.
CIFAR10_BASE_URL = "https://www.cs.toronto.edu/~kriz"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{number}" for number in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
CIFAR10_META = "batches.meta"
CIFAR10_SIDE = 32


def _numpy_core_module() -> str:
    # NumPy 2 renamed numpy.core to numpy._core and keeps the old name only as a deprecated alias.
    return "numpy._core.multiarray" if importlib.util.find_spec("numpy._core") else "numpy.core.multiarray"


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals needed to rebuild NumPy arrays.

    Unpickling runs whatever callables the pickle names, so a crafted file can execute code. The official
    CIFAR-10 batches contain only dicts, lists, strings and NumPy uint8 arrays, so this unpickler rejects
    every other global. The archive's MD5 is also checked before it is read.
    """

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            # Python 3 writes bytes objects as _codecs.encode(text, "latin1") in pickle protocols 0 to 2.
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        if module.endswith("multiarray"):
            module = _numpy_core_module()
        return super().find_class(module, name)


def _unpickle(data: bytes, source: str) -> object:
    try:
        # latin1 decodes the Python 2 strings of the official files, as NumPy requires for its arrays.
        return _ArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as error:
        # Malformed pickles raise many exception types (UnpicklingError, EOFError, KeyError, ...).
        raise ValueError(f"cannot read {source} as a CIFAR-10 pickle: {error}") from error


def _parse_cifar10_batch(data: bytes, source: str) -> ImageArrays:
    batch = _unpickle(data, source)
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise ValueError(f"{source} is not a CIFAR-10 batch: expected a dict with 'data' and 'labels'")

    images = np.asarray(batch["data"])
    pixels = 3 * CIFAR10_SIDE * CIFAR10_SIDE
    if images.ndim != 2 or images.shape[1] != pixels or images.dtype != np.uint8:
        raise ValueError(
            f"{source} has data of shape {images.shape} and dtype {images.dtype}; expected (N, {pixels}) uint8"
        )
    labels = check_labels(np.asarray(batch["labels"]), len(images), source)
    if len(labels) and labels.max() >= 10:
        raise ValueError(f"{source} has label {labels.max()}; expected labels in [0, 9]")

    # Each row contains the red, then the green, then the blue plane, each 32×32 in raster order.
    images = images.reshape(-1, 3, CIFAR10_SIDE, CIFAR10_SIDE)  # (N, C, H, W)
    return images, labels


def _parse_cifar10(
    read: Callable[[str], bytes], source: str
) -> tuple[ImageArrays, ImageArrays, tuple[str, ...]]:
    train_parts = [_parse_cifar10_batch(read(name), f"{source}/{name}") for name in CIFAR10_TRAIN_BATCHES]
    test = _parse_cifar10_batch(read(CIFAR10_TEST_BATCH), f"{source}/{CIFAR10_TEST_BATCH}")

    meta = _unpickle(read(CIFAR10_META), f"{source}/{CIFAR10_META}")
    class_names = meta.get("label_names") if isinstance(meta, dict) else None
    if (
        not isinstance(class_names, list)
        or len(class_names) != 10
        or not all(isinstance(n, str) for n in class_names)
    ):
        raise ValueError(f"{source}/{CIFAR10_META} lacks 'label_names', a list of 10 class names")

    train = (
        np.concatenate([images for images, _ in train_parts]),
        np.concatenate([labels for _, labels in train_parts]),
    )
    return train, test, tuple(class_names)


def read_cifar10_folder(folder: Path) -> tuple[ImageArrays, ImageArrays, tuple[str, ...]]:
    """Read the official CIFAR-10 python batches from an extracted ``cifar-10-batches-py`` folder.

    The batches are pickles, read with an unpickler that only rebuilds NumPy arrays. Unlike the archive,
    the extracted files are not checked against published digests.

    Returns:
        ``((x_train, y_train), (x_test, y_test), class_names)`` with uint8 images of shape N×3×32×32.
    """
    folder = Path(folder)

    def read(name: str) -> bytes:
        file = folder / name
        if not file.is_file():
            expected = (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH, CIFAR10_META)
            raise ValueError(f"CIFAR-10 folder {folder} lacks {name}; expected the files {expected}")
        return file.read_bytes()

    return _parse_cifar10(read, str(folder))


def read_cifar10_archive(
    path: Path, *, md5: str | None = CIFAR10_ARCHIVE_MD5
) -> tuple[ImageArrays, ImageArrays, tuple[str, ...]]:
    """Read the official ``cifar-10-python.tar.gz`` without extracting it.

    Args:
        path: the archive.
        md5: the expected MD5 digest of the archive, checked before anything is unpickled; None skips
            the check.

    Returns:
        ``((x_train, y_train), (x_test, y_test), class_names)`` with uint8 images of shape N×3×32×32.
    """
    path = Path(path)
    if md5 is not None:
        actual = file_digest(path, "md5")
        if actual != md5:
            raise ValueError(
                f"{path} has MD5 {actual}, expected {md5} of the official {CIFAR10_ARCHIVE}; this loader "
                f"reads only the official archive or its extracted {CIFAR10_FOLDER} folder"
            )

    try:
        with tarfile.open(path, "r:gz") as archive:

            def read(name: str) -> bytes:
                member = f"{CIFAR10_FOLDER}/{name}"
                try:
                    file = archive.extractfile(member)
                except KeyError as error:
                    raise ValueError(f"CIFAR-10 archive {path} lacks {member}") from error
                if file is None:
                    raise ValueError(f"{member} in {path} is not a regular file")
                return file.read()

            return _parse_cifar10(read, str(path))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise ValueError(f"cannot read CIFAR-10 archive {path}: {error}") from error


def _cifar10_not_found(path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"no CIFAR-10 data at {path}: expected {CIFAR10_ARCHIVE} or an extracted {CIFAR10_FOLDER} folder. "
        f"Pass download=True (--download) to fetch it, or download {CIFAR10_BASE_URL}/{CIFAR10_ARCHIVE} "
        f"and place it in {path}"
    )


def _download_cifar10(destination: Path) -> Path:
    return download_file(
        CIFAR10_ARCHIVE, destination, default_base_url=CIFAR10_BASE_URL, md5=CIFAR10_ARCHIVE_MD5
    )


def read_cifar10(path: Path, *, download: bool = False) -> tuple[ImageArrays, ImageArrays, tuple[str, ...]]:
    """Read CIFAR-10 from the official archive, a ``cifar-10-batches-py`` folder or a folder holding either.

    With ``download`` True and no data present, the archive is downloaded (MD5 checked) to ``path`` if it
    ends in .tar.gz, else into the folder ``path``.
    """
    path = Path(path)
    if path.name.endswith((".tar.gz", ".tgz")):
        if not path.exists():
            if not download:
                raise _cifar10_not_found(path)
            _download_cifar10(path)
        return read_cifar10_archive(path)

    if path.is_dir():
        for folder in (path, path / CIFAR10_FOLDER):
            if (folder / CIFAR10_TRAIN_BATCHES[0]).is_file():
                return read_cifar10_folder(folder)
        archive = path / CIFAR10_ARCHIVE
        if not archive.is_file():
            if not download:
                raise _cifar10_not_found(path)
            _download_cifar10(archive)
        return read_cifar10_archive(archive)

    if path.exists():
        raise ValueError(f"CIFAR-10 path {path} is neither a folder nor a .tar.gz archive")
    if not download:
        raise _cifar10_not_found(path)
    _download_cifar10(path / CIFAR10_ARCHIVE)
    return read_cifar10_archive(path / CIFAR10_ARCHIVE)


def load_cifar10(
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
    """Load CIFAR-10 with K = 256 and shape 3×32×32 (before ``crop`` and ``resize``).

    Test is the official 10,000-image test batch. Validation is a seeded ``validation_fraction`` of the
    50,000 training images. ``max_examples`` caps the train and the test part each, by a seeded choice.
    """
    check_native_channels("cifar10", channels, 3)
    train, test, class_names = read_cifar10(path, download=download)
    return assemble_image_dataset(
        name="cifar10",
        spec=spec or f"cifar10:{path}",
        num_bins=EIGHT_BIT_BINS,
        train=train,
        test=test,
        class_names=class_names,
        crop=parse_size(crop, "crop"),
        resize=parse_size(resize, "resize"),
        max_examples=max_examples,
        seed=seed,
        validation_fraction=validation_fraction,
        test_fraction=0.0,
    )
