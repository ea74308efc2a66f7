"""Tests of the latent inspection: data against re-encoded samples, and the verdict on misfit or bug."""

import json

import numpy as np
import pytest
import torch

from arflows import AutoregressiveFlow
from arflows.latent import encode_split, inspect_latents

from .helpers import tiny_flow


class _SquaringFlow(AutoregressiveFlow):
    """A real flow with a deliberate bug: encode returns z**2, which decode does not invert."""

    def encode(self, q, noise="uniform", generator=None):
        z, log_det = super().encode(q, noise=noise, generator=generator)
        return z**2, log_det


def test_inspection_tells_misfit_from_consistency(digits):
    flow = tiny_flow("gated_pixelcnn", (1, 8, 8), 17)
    generator = torch.Generator().manual_seed(0)
    encoded = encode_split(flow, digits, "test", max_examples=40, generator=generator)

    inspection = inspect_latents(flow, encoded.latents, num_samples=32, generator=generator)
    summary = inspection.summary

    assert inspection.samples.shape == (32, 1, 8, 8)
    assert inspection.sample_latents.shape == (32, 1, 8, 8)
    assert summary["data"]["ks"]["p_value"] < 1e-3
    assert summary["samples"]["ks"]["p_value"] > 1e-3
    assert "does not fit" in summary["verdict"]
    assert "necessary but not sufficient" in summary["note"]
    json.dumps(summary, allow_nan=False)


def test_inspection_flags_inconsistent_flow(digits):
    plain = tiny_flow("gated_pixelcnn", (1, 6, 6), 17)
    buggy = _SquaringFlow(plain.net, plain.output, plain.data_shape, plain.num_bins, plain.config)
    data_latents = np.random.default_rng(0).random((20, 1, 6, 6))

    summary = inspect_latents(buggy, data_latents, num_samples=24,
                              generator=torch.Generator().manual_seed(1)).summary

    assert summary["samples"]["ks"]["p_value"] < 1e-3
    assert "bug" in summary["verdict"]


def test_inspection_without_samples_and_figures():
    flow = tiny_flow("pixelcnn", (3, 4, 4), 9)
    data_latents = np.random.default_rng(2).random((30, 3, 4, 4))

    inspection = inspect_latents(flow, data_latents, num_samples=0)
    figures = inspection.figures()

    assert inspection.samples is None
    assert inspection.summary["samples"] is None
    assert "look uniform" in inspection.summary["verdict"]
    assert sorted(figures) == ["correlations", "data_histogram", "data_ks_map"]


def test_inspection_figure_names_with_samples():
    flow = tiny_flow("gated_pixelcnn", (1, 4, 4), 5)
    data_latents = np.random.default_rng(3).random((10, 1, 4, 4))

    figures = inspect_latents(flow, data_latents, num_samples=4).figures()

    assert sorted(figures) == ["correlations", "data_histogram", "data_ks_map", "samples_histogram",
                               "samples_ks_map"]


def test_inspection_rejects_negative_samples():
    flow = tiny_flow("gated_pixelcnn", (1, 4, 4), 5)

    with pytest.raises(ValueError, match="num_samples"):
        inspect_latents(flow, np.random.default_rng(4).random((3, 1, 4, 4)), num_samples=-1)
