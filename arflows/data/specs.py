"""``load_dataset``: parse a dataset specification such as "mnist:PATH" and load the dataset."""

from __future__ import annotations

from pathlib import Path

from .audio import DEFAULT_AUDIO_BINS, load_wav_folder
from .cifar10 import load_cifar10
from .dataset import DiscreteDataset
from .image_folder import load_image_folder
from .images import DIGITS_BINS, EIGHT_BIT_BINS, Size, load_digits
from .mnist import load_mnist

__all__ = ["DATASET_KINDS", "load_dataset", "parse_spec"]

DATASET_KINDS = ("mnist", "cifar10", "folder", "digits", "wav")
_DOWNLOADABLE_KINDS = ("mnist", "cifar10")
_NATIVE_BINS = {
    "mnist": EIGHT_BIT_BINS,
    "cifar10": EIGHT_BIT_BINS,
    "folder": EIGHT_BIT_BINS,
    "digits": DIGITS_BINS,
}


def parse_spec(spec: str) -> tuple[str, Path | None]:
    """Split a specification into its kind and path: "wav:data/fsdd" gives ("wav", Path("data/fsdd")).

    The kind is one of ``DATASET_KINDS``. Every kind except "digits" needs a path. The string is split
    at the first colon, so the path may contain colons. A leading "~" in the path is expanded.

    Raises:
        ValueError: for an unknown kind, a missing path or a path after "digits".
    """
    if not isinstance(spec, str):
        raise TypeError(f"a dataset specification must be a string such as 'mnist:PATH', got {spec!r}")
    kind, _separator, path = spec.partition(":")
    if kind not in DATASET_KINDS:
        raise ValueError(
            f"unknown dataset kind {kind!r} in {spec!r}; expected one of {', '.join(DATASET_KINDS)}, "
            f"as in 'mnist:PATH', 'cifar10:PATH', 'folder:PATH', 'wav:PATH' or 'digits'"
        )
    if kind == "digits":
        if path:
            raise ValueError(f"'digits' takes no path (it ships with scikit-learn), got {spec!r}")
        return kind, None
    if not path:
        raise ValueError(f"{kind} needs a path, as in '{kind}:PATH', got {spec!r}")
    return kind, Path(path).expanduser()


def _reject_options(kind: str, options: dict[str, object], reason: str) -> None:
    given = [f"{name}={value!r}" for name, value in options.items()]
    if given:
        raise ValueError(f"{', '.join(given)} cannot be used with {kind} datasets, {reason}")


def load_dataset(
    spec: str,
    *,
    channels: int | None = None,
    crop: Size | None = None,
    resize: Size | None = None,
    download: bool = False,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    max_examples: int | None = None,
    sample_rate: int | None = None,
    mono: bool = False,
    quantization: str = "mu-law",
    num_bins: int | None = None,
) -> DiscreteDataset:
    """Load the dataset named by ``spec`` with train, validation and test splits.

    Specifications and what they load:

    - ``mnist:PATH``: ``mnist.npz`` or a folder with it or the four IDX files (.gz or not).
      K = 256, shape 1×28×28, official test set.
    - ``cifar10:PATH``: ``cifar-10-python.tar.gz`` (MD5 checked), a ``cifar-10-batches-py`` folder, or a
      folder with either. K = 256, shape 3×32×32, official test set.
    - ``folder:PATH``: PNG, JPEG and BMP files, optionally in class subfolders. K = 256, shape
      ``channels``×H×W. ``channels`` (1 or 3) is required.
    - ``digits``: scikit-learn's 8×8 digits, K = 17, shape 1×8×8.
    - ``wav:PATH``: a folder of WAV files, recursively. K = ``num_bins`` (default 256), shape (1, None).

    Validation is always a seeded ``validation_fraction`` of the source's training data. Sources without
    a test split (folders, digits, WAV folders without FSDD recordings 0 to 4) also hold out a seeded
    ``test_fraction`` as test. The same arguments always give the same splits.

    Args:
        spec: the specification, see above.
        channels: image channels. Required for folders (1 converts to grayscale, 3 to RGB). Other image
            kinds accept None or their own channel count, and audio accepts None or 1.
        crop: centre-crop images to this size (an int for a square, or (height, width)), before resizing.
        resize: resize images to this size with Pillow's bicubic filter; not for digits.
        download: fetch MNIST or CIFAR-10 into PATH when it contains no data, checking the published digest.
            A mirror's base URL in the ``ARFLOWS_DOWNLOAD_URL`` environment variable replaces the
            official one.
        validation_fraction: fraction of the training data held out for validation, in [0, 1).
        test_fraction: fraction held out for test where the source has no test split, in [0, 1).
        seed: seed of the held-out parts and of the ``max_examples`` choice.
        max_examples: read at most this many examples from each source part (train and test files, or
            the whole folder), chosen at random with ``seed``, before the splits are made.
        sample_rate: audio only. Resample files at other rates to this rate in Hz. Without it, all files
            must share one rate.
        mono: audio only. Average the channels of multi-channel files, which are otherwise rejected.
        quantization: audio only. "mu-law" (default) or "linear".
        num_bins: the number of levels K. For audio it defaults to 256. Images accept only their own K.

    Returns:
        An ``ImageDataset`` or ``AudioDataset``.

    Raises:
        FileNotFoundError: if PATH does not exist and ``download`` is False or does not apply.
        ValueError: for an invalid specification, option or data. Messages about data name the file.
        DownloadError: if a download fails or its digest differs.
    """
    kind, path = parse_spec(spec)

    if download and kind not in _DOWNLOADABLE_KINDS:
        raise ValueError(f"download=True applies only to {' and '.join(_DOWNLOADABLE_KINDS)}, not to {kind}")

    if kind == "wav":
        image_options = {"crop": crop, "resize": resize}
        image_options = {name: value for name, value in image_options.items() if value is not None}
        if channels not in (None, 1):
            image_options["channels"] = channels
        _reject_options(
            kind, image_options, "which are mono audio (mono=True averages the channels of a file)"
        )
        return load_wav_folder(
            path,
            spec=spec,
            sample_rate=sample_rate,
            mono=mono,
            quantization=quantization,
            num_bins=DEFAULT_AUDIO_BINS if num_bins is None else num_bins,
            validation_fraction=validation_fraction,
            test_fraction=test_fraction,
            seed=seed,
            max_examples=max_examples,
        )

    # The audio options are rejected only when they differ from their defaults, so that a command line
    # may pass its defaults for every kind.
    audio_options = {}
    if sample_rate is not None:
        audio_options["sample_rate"] = sample_rate
    if mono:
        audio_options["mono"] = mono
    if quantization != "mu-law":
        audio_options["quantization"] = quantization
    _reject_options(kind, audio_options, "which are images")
    if num_bins is not None and num_bins != _NATIVE_BINS[kind]:
        raise ValueError(f"{kind} images have K = {_NATIVE_BINS[kind]} levels, got num_bins={num_bins}")

    common = {"crop": crop, "resize": resize, "validation_fraction": validation_fraction, "seed": seed}
    if kind == "mnist":
        return load_mnist(
            path, spec=spec, channels=channels, download=download, max_examples=max_examples, **common
        )
    if kind == "cifar10":
        return load_cifar10(
            path, spec=spec, channels=channels, download=download, max_examples=max_examples, **common
        )
    if kind == "folder":
        return load_image_folder(
            path,
            spec=spec,
            channels=channels,
            test_fraction=test_fraction,
            max_examples=max_examples,
            **common,
        )
    return load_digits(
        spec=spec, channels=channels, test_fraction=test_fraction, max_examples=max_examples, **common
    )
