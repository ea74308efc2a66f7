"""Fixtures of the latent-tool tests: the scikit-learn digits dataset, loaded once."""

import pytest

from arflows.data import load_dataset


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8×8 digits with K = 17, which ship with scikit-learn (never skipped)."""
    return load_dataset("digits")
