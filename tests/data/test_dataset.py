"""Tests of seeded partitions, subset choice, value checks and the DiscreteDataset bookkeeping."""

import numpy as np
import pytest

from arflows.data.dataset import (
    SPLIT_NAMES,
    DiscreteDataset,
    check_discrete_values,
    choose_subset,
    hold_out_validation,
    partition_examples,
)


def _assert_partition(splits, num_examples):
    joined = np.concatenate([splits[name] for name in SPLIT_NAMES])
    assert len(joined) == num_examples
    assert np.array_equal(np.sort(joined), np.arange(num_examples))
    for name in SPLIT_NAMES:
        assert np.all(np.diff(splits[name]) > 0), f"{name} must be sorted without repeats"


def test_partition_sizes_and_disjointness():
    splits = partition_examples(1000, validation_fraction=0.1, test_fraction=0.2, seed=0)

    _assert_partition(splits, 1000)
    assert len(splits["test"]) == 200
    assert len(splits["validation"]) == 100
    assert len(splits["train"]) == 700


def test_partition_is_deterministic_per_seed():
    first = partition_examples(500, validation_fraction=0.1, test_fraction=0.1, seed=7)
    again = partition_examples(500, validation_fraction=0.1, test_fraction=0.1, seed=7)
    other = partition_examples(500, validation_fraction=0.1, test_fraction=0.1, seed=8)

    for name in SPLIT_NAMES:
        assert np.array_equal(first[name], again[name])
    assert not np.array_equal(first["test"], other["test"])


def test_partition_small_fraction_keeps_one():
    splits = partition_examples(5, validation_fraction=0.01, test_fraction=0.01, seed=0)

    assert len(splits["validation"]) == 1
    assert len(splits["test"]) == 1
    _assert_partition(splits, 5)


def test_partition_zero_fraction_is_empty():
    splits = partition_examples(10, validation_fraction=0.0, test_fraction=0.5, seed=0)

    assert len(splits["validation"]) == 0
    assert len(splits["test"]) == 5


def test_partition_rejects_invalid_fractions():
    with pytest.raises(ValueError, match=r"validation_fraction must be a number in \[0, 1\), got 1.0"):
        partition_examples(10, validation_fraction=1.0, test_fraction=0.1, seed=0)
    with pytest.raises(ValueError, match="test_fraction must be a number"):
        partition_examples(10, validation_fraction=0.1, test_fraction=-0.1, seed=0)
    with pytest.raises(ValueError, match="2 examples are too few"):
        partition_examples(2, validation_fraction=0.1, test_fraction=0.1, seed=0)


def test_hold_out_validation_keeps_test():
    train, test = np.arange(100), np.arange(100, 120)
    splits = hold_out_validation(train, test, validation_fraction=0.25, seed=3)

    _assert_partition(splits, 120)
    assert np.array_equal(splits["test"], test)
    assert len(splits["validation"]) == 25
    assert splits["validation"].max() < 100


def test_choose_subset():
    subset = choose_subset(1000, 10, seed=0)

    assert len(subset) == 10
    assert np.all(np.diff(subset) > 0)
    assert np.array_equal(subset, choose_subset(1000, 10, seed=0))
    assert not np.array_equal(subset, choose_subset(1000, 10, seed=0, stream=1))
    assert np.array_equal(choose_subset(5, None, seed=0), np.arange(5))
    assert np.array_equal(choose_subset(5, 50, seed=0), np.arange(5))
    with pytest.raises(ValueError, match="max_examples must be a positive integer or None, got 0"):
        choose_subset(5, 0, seed=0)


def test_check_discrete_values():
    check_discrete_values(np.array([0, 16]), 17, "data")
    with pytest.raises(ValueError, match=r"data has values in \[0, 17\]; expected integers in \[0, 16\]"):
        check_discrete_values(np.array([0, 17]), 17, "data")
    with pytest.raises(ValueError, match=r"values in \[-2, 3\]"):
        check_discrete_values(np.array([-2, 3]), 17, "data")
    with pytest.raises(ValueError, match="dtype float64; expected integers"):
        check_discrete_values(np.array([0.0, 1.0]), 17, "data")


def _small_dataset():
    splits = {"train": np.array([0, 1]), "validation": np.array([2]), "test": np.array([3])}
    return DiscreteDataset(
        name="toy", spec="toy", num_bins=4, data_shape=(1, 2), labels=np.zeros(4), splits=splits
    )


def test_dataset_split_bookkeeping():
    dataset = _small_dataset()

    assert dataset.split_names == ("train", "validation", "test")
    assert dataset.num_examples("train") == 2
    assert dataset.indices("test").tolist() == [3]
    assert "train=2, validation=1, test=1" in repr(dataset)
    with pytest.raises(ValueError, match="unknown split 'valid'; expected one of"):
        dataset.num_examples("valid")


def test_dataset_rejects_overlapping_splits():
    splits = {"train": np.array([0, 1]), "validation": np.array([1]), "test": np.array([2])}

    with pytest.raises(ValueError, match="must be disjoint"):
        DiscreteDataset(
            name="toy", spec="toy", num_bins=4, data_shape=(1,), labels=np.zeros(3), splits=splits
        )
