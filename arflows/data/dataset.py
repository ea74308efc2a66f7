"""The common dataset interface and seeded, disjoint train/validation/test partitions."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "SPLIT_NAMES",
    "DiscreteDataset",
    "check_discrete_values",
    "check_fraction",
    "choose_subset",
    "hold_out_validation",
    "list_files",
    "partition_examples",
]

SPLIT_NAMES = ("train", "validation", "test")

# Independent random streams derived from one seed: one cuts the splits, one chooses max_examples subsets.
SPLIT_STREAM = 0
SUBSET_STREAM = 1


def check_fraction(name: str, value: float) -> float:
    """Return ``value`` as a float after checking that it lies in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


def _held_out_count(num_examples: int, fraction: float) -> int:
    # Any positive fraction holds out at least one example, so that no requested split is empty.
    if fraction == 0.0:
        return 0
    return max(1, round(fraction * num_examples))


def _split_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLIT_STREAM])


def partition_examples(
    num_examples: int, *, validation_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Partition example indices 0..N-1 into seeded, disjoint train, validation and test sets.

    A seeded permutation puts round(test_fraction N) examples into test and the next
    round(validation_fraction N) into validation (at least one each for a positive fraction). The rest
    is train. For sources that have no test split of their own.

    Returns:
        A dict from each of ``SPLIT_NAMES`` to a sorted int64 index array.

    Raises:
        ValueError: if a fraction is outside [0, 1) or train would be empty.
    """
    validation_fraction = check_fraction("validation_fraction", validation_fraction)
    test_fraction = check_fraction("test_fraction", test_fraction)
    num_test = _held_out_count(num_examples, test_fraction)
    num_validation = _held_out_count(num_examples, validation_fraction)
    if num_test + num_validation >= num_examples:
        raise ValueError(
            f"{num_examples} examples are too few to hold out {num_validation} for validation "
            f"(validation_fraction={validation_fraction}) and {num_test} for test "
            f"(test_fraction={test_fraction}) with at least one left for training"
        )

    order = _split_rng(seed).permutation(num_examples)
    test = order[:num_test]
    validation = order[num_test : num_test + num_validation]
    train = order[num_test + num_validation :]
    return {
        "train": np.sort(train).astype(np.int64),
        "validation": np.sort(validation).astype(np.int64),
        "test": np.sort(test).astype(np.int64),
    }


def hold_out_validation(
    train: np.ndarray, test: np.ndarray, *, validation_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Move a seeded ``validation_fraction`` of the ``train`` indices into validation; keep ``test``.

    For sources that have a test split but no validation split.

    Returns:
        A dict from each of ``SPLIT_NAMES`` to a sorted int64 index array.
    """
    validation_fraction = check_fraction("validation_fraction", validation_fraction)
    train = np.asarray(train, dtype=np.int64)
    num_validation = _held_out_count(len(train), validation_fraction)
    if num_validation >= len(train):
        raise ValueError(
            f"{len(train)} training examples are too few to hold out {num_validation} for validation "
            f"(validation_fraction={validation_fraction}) with at least one left for training"
        )

    order = _split_rng(seed).permutation(len(train))
    return {
        "train": np.sort(train[order[num_validation:]]),
        "validation": np.sort(train[order[:num_validation]]),
        "test": np.sort(np.asarray(test, dtype=np.int64)),
    }


def choose_subset(num_examples: int, max_examples: int | None, *, seed: int, stream: int = 0) -> np.ndarray:
    """Return sorted indices of a seeded random choice of at most ``max_examples`` of N examples.

    ``stream`` separates the choices for several parts of one source (for example its train and test
    files) that share one seed. With ``max_examples`` None or >= N, all indices are returned.
    """
    if max_examples is None:
        return np.arange(num_examples, dtype=np.int64)
    if isinstance(max_examples, bool) or not isinstance(max_examples, (int, np.integer)) or max_examples < 1:
        raise ValueError(f"max_examples must be a positive integer or None, got {max_examples!r}")
    if max_examples >= num_examples:
        return np.arange(num_examples, dtype=np.int64)

    rng = np.random.default_rng([seed, SUBSET_STREAM, stream])
    return np.sort(rng.choice(num_examples, size=max_examples, replace=False)).astype(np.int64)


def list_files(folder: Path) -> list[Path]:
    """Return the sorted paths of all files below ``folder``, skipping names that start with a dot."""
    found = []
    # os.walk reads file types from the directory listing, which is much faster than a stat per file
    # for folders with tens of thousands of images.
    for directory, subdirectories, names in os.walk(folder):
        subdirectories[:] = [name for name in subdirectories if not name.startswith(".")]
        found.extend(Path(directory) / name for name in names if not name.startswith("."))
    return sorted(found)


def check_discrete_values(values: np.ndarray, num_bins: int, source: str) -> None:
    """Raise ValueError unless ``values`` has an integer dtype and every value lies in [0, K)."""
    if not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{source} has dtype {values.dtype}; expected integers in [0, {num_bins - 1}]")
    if values.size == 0:
        return
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= num_bins:
        raise ValueError(f"{source} has values in [{low}, {high}]; expected integers in [0, {num_bins - 1}]")


class DiscreteDataset:
    """A dataset of integer tensors q in {0, ..., K-1} with labels and train, validation and test splits.

    Subclasses store the examples and implement ``split``. Examples are addressed by an index into the
    whole dataset, and each split is a sorted array of such indices. The splits are disjoint.

    Attributes:
        name: the dataset kind, one of "mnist", "cifar10", "folder", "digits", "wav".
        spec: the specification string that the dataset was loaded from.
        num_bins: the number of levels K of every value.
        data_shape: the shape of one example, for example (1, 28, 28). A None entry is a length that
            varies between examples (audio clips have shape (1, None)).
        split_names: ("train", "validation", "test").
        labels: int64 array of one label per example, -1 for unlabelled examples.
        class_names: the name of each label value, or None for unlabelled data.
    """

    split_names: tuple[str, ...] = SPLIT_NAMES

    def __init__(
        self,
        *,
        name: str,
        spec: str,
        num_bins: int,
        data_shape: tuple[int | None, ...],
        labels: np.ndarray,
        splits: dict[str, np.ndarray],
        class_names: Sequence[str] | None = None,
    ) -> None:
        if sorted(splits) != sorted(SPLIT_NAMES):
            raise ValueError(f"splits must have the keys {SPLIT_NAMES}, got {tuple(splits)}")
        all_indices = np.concatenate([splits[split] for split in SPLIT_NAMES])
        if len(np.unique(all_indices)) != len(all_indices):
            raise ValueError(f"the splits of {spec} share examples; they must be disjoint")

        self.name = name
        self.spec = spec
        self.num_bins = int(num_bins)
        self.data_shape = tuple(data_shape)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.class_names = None if class_names is None else tuple(class_names)
        self._splits = {split: np.asarray(splits[split], dtype=np.int64) for split in SPLIT_NAMES}

    def _check_split_name(self, split: str) -> None:
        if split not in self._splits:
            raise ValueError(f"unknown split {split!r}; expected one of {self.split_names}")

    def indices(self, split: str) -> np.ndarray:
        """Return a copy of the sorted indices of the examples in ``split``."""
        self._check_split_name(split)
        return self._splits[split].copy()

    def num_examples(self, split: str) -> int:
        """Return the number of examples in ``split``."""
        self._check_split_name(split)
        return len(self._splits[split])

    def split(
        self,
        name: str,
        *,
        segment_length: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.utils.data.Dataset:
        """Return split ``name`` as a map-style dataset of ``(q, label)`` pairs."""
        raise NotImplementedError

    def __repr__(self) -> str:
        sizes = ", ".join(f"{split}={self.num_examples(split)}" for split in self.split_names)
        return (
            f"{type(self).__name__}(name={self.name!r}, spec={self.spec!r}, num_bins={self.num_bins}, "
            f"data_shape={self.data_shape}, {sizes})"
        )
