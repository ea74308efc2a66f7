"""Tests of batch encoding and decoding: exact round trips on real images for every image family."""

import numpy as np
import pytest
import torch
from PIL import Image

from arflows import AutoregressiveFlow, create_flow
from arflows.data import load_dataset
from arflows.latent import decode_latents, encode_data, encode_split, figure_pixel_size, save_figure

from .helpers import CIFAR_FOLDER, FAMILIES, MNIST_FILE, TINY, cifar_crops, tiny_flow


@pytest.mark.parametrize("naive", [None, True], ids=["default_decode", "naive_decode"])
@pytest.mark.parametrize("model", FAMILIES)
def test_round_trip_digits_exact(model, naive, digits):
    flow = tiny_flow(model, (1, 8, 8), 17)

    encoded = encode_split(flow, digits, "test", max_examples=6, generator=torch.Generator().manual_seed(0),
                           batch_size=4)
    decoded = decode_latents(flow, torch.from_numpy(encoded.latents), batch_size=4, naive=naive)

    assert decoded.dtype == torch.int64
    assert np.array_equal(decoded.numpy(), encoded.data)
    assert np.array_equal(encoded.data, digits.images[encoded.indices].astype(np.int64))


@pytest.mark.slow
@pytest.mark.skipif(not MNIST_FILE.is_file(), reason=f"real MNIST not found at {MNIST_FILE}")
@pytest.mark.parametrize("model", FAMILIES)
def test_round_trip_mnist_crops_exact(model):
    mnist = load_dataset(f"mnist:{MNIST_FILE}", crop=8, max_examples=64)
    flow = tiny_flow(model, (1, 8, 8), 256)

    encoded = encode_split(flow, mnist, "test", max_examples=4, generator=torch.Generator().manual_seed(1))
    decoded = decode_latents(flow, torch.from_numpy(encoded.latents))

    assert encoded.data.max() > 0, "the crops should contain strokes"
    assert np.array_equal(decoded.numpy(), encoded.data)


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR_FOLDER.is_dir(), reason=f"real CIFAR-10 JPEGs not found in {CIFAR_FOLDER}")
@pytest.mark.parametrize("model", FAMILIES)
def test_round_trip_cifar_crops_exact(model):
    q = cifar_crops(count=3, size=5)
    flow = tiny_flow(model, (3, 5, 5), 256)

    z, _ = encode_data(flow, q, generator=torch.Generator().manual_seed(2))
    decoded = decode_latents(flow, z)

    assert np.array_equal(decoded.numpy(), q.numpy())


def test_round_trip_float64_center_noise(digits):
    flow = tiny_flow("gated_pixelcnn", (1, 8, 8), 17, dtype=torch.float64)

    encoded = encode_split(flow, digits, "validation", max_examples=3, noise="center")
    decoded = decode_latents(flow, torch.from_numpy(encoded.latents))

    assert encoded.latents.dtype == np.float64
    assert np.array_equal(decoded.numpy(), encoded.data)


def test_encode_split_indices_labels_and_bits(digits):
    flow = tiny_flow("pixelcnn", (1, 8, 8), 17)

    encoded = encode_split(flow, digits, "test", max_examples=10, generator=torch.Generator().manual_seed(0),
                           batch_size=3)
    q = torch.from_numpy(encoded.data)
    expected_bits = flow.bits_per_dim(q).item()

    assert encoded.latents.shape == (10, 1, 8, 8)
    assert np.array_equal(encoded.indices, digits.indices("test")[:10])
    assert np.array_equal(encoded.labels, digits.labels[encoded.indices])
    assert encoded.latents.min() >= 0.0
    assert encoded.latents.max() <= 1.0
    assert encoded.bits_per_dim == pytest.approx(expected_bits, rel=1e-5)


def test_encoded_split_figure_renders(digits, tmp_path):
    flow = tiny_flow("gated_pixelcnn", (1, 8, 8), 17)
    encoded = encode_split(flow, digits, "test", max_examples=9)
    figure = encoded.figure(num_columns=3)

    save_figure(figure, tmp_path / "encoded.png")

    with Image.open(tmp_path / "encoded.png") as image:
        assert image.size == figure_pixel_size(figure)


def test_encode_data_seed_reproducible(digits):
    flow = tiny_flow("gated_pixelcnn", (1, 8, 8), 17)
    q = torch.from_numpy(digits.images[:5].astype(np.int64))

    first, _ = encode_data(flow, q, generator=torch.Generator().manual_seed(7))
    second, _ = encode_data(flow, q, generator=torch.Generator().manual_seed(7))
    other, _ = encode_data(flow, q, generator=torch.Generator().manual_seed(8))

    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_encode_data_noise_tensor_at_bin_edges(digits):
    flow = tiny_flow("gated_pixelcnn", (1, 8, 8), 17)
    q = torch.from_numpy(digits.images[:4].astype(np.int64))

    z, _ = encode_data(flow, q, noise=torch.zeros(q.shape), batch_size=3)

    # A zero pixel with zero noise lies on the lower edge of bin 0, where the flow's CDF is exactly 0.
    assert torch.all(z[q == 0] == 0.0)


def test_encode_split_rejects_mismatched_dataset(digits):
    flow = create_flow("gated_pixelcnn", (1, 6, 6), 17, **TINY["gated_pixelcnn"])

    with pytest.raises(ValueError, match="shape 1×8×8 instead of 1×6×6"):
        encode_split(flow, digits, "test")


def test_encode_rejects_bad_arguments(digits):
    flow = tiny_flow("gated_pixelcnn", (1, 8, 8), 17)
    q = torch.from_numpy(digits.images[:2].astype(np.int64))

    with pytest.raises(ValueError, match="batch_size"):
        encode_data(flow, q, batch_size=0)
    with pytest.raises(ValueError, match="noise must be"):
        encode_data(flow, q, noise="gaussian")
    with pytest.raises(ValueError, match="noise has shape"):
        encode_data(flow, q, noise=torch.zeros(3, 1, 8, 8))
    with pytest.raises(ValueError, match="max_examples"):
        encode_split(flow, digits, "test", max_examples=0)


class _FlowWithNaiveFlag(AutoregressiveFlow):
    """A real flow whose decode takes the `naive` flag of a cached decoder and records it."""

    def decode(self, z, *, continuous=False, naive=True):
        self.naive_flags.append(naive)
        return super().decode(z, continuous=continuous)


def test_decode_passes_naive_only_when_accepted(digits):
    plain = tiny_flow("gated_pixelcnn", (1, 8, 8), 17)
    flagged = _FlowWithNaiveFlag(plain.net, plain.output, plain.data_shape, plain.num_bins, plain.config)
    flagged.naive_flags = []
    q = torch.from_numpy(digits.images[:2].astype(np.int64))
    z, _ = encode_data(plain, q)

    decode_latents(flagged, z, naive=False)
    decode_latents(flagged, z)
    decoded = decode_latents(plain, z, naive=True)

    assert flagged.naive_flags == [False, True]
    assert torch.equal(decoded, q)
