"""Tests for PixelCNN and the gated PixelCNN: causality from exact gradients, shapes and validation."""

import pytest
import torch

from arflows.nets import GatedPixelCNN, PixelCNN


@pytest.fixture(autouse=True)
def float64_default():
    # float64 makes an exact zero in a gradient a structural zero, not a rounding accident.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def dependence(net, x, position=None):
    """Return the dependence of each sub-pixel's logits on each input dimension.

    The result has shape ``(C, H, W, C, H, W)``, or ``(C, C, H, W)`` for the outputs at ``position = (i, j)``
    alone. Entry ``[c, i, j, c', i', j']`` is the |gradient| of a random combination of the K logits of
    sub-pixel ``c`` at ``(i, j)`` with respect to ``x[c', i', j']``, summed over the samples. A structural
    zero stays exactly zero under the combination, and a nonzero gradient cancels with probability zero.
    Batch elements never interact, so one batched backward pass of the batch sum gives every sample's
    Jacobian, and several random samples make a zero from inactive ReLU units unlikely.
    """
    _, num_channels, height, width = x.shape
    x = x.clone().requires_grad_(True)
    mixing = torch.randn(num_channels, net.num_bins, 1, 1)
    # (B, C·K, H, W) -> (C, K, H, W) summed over the batch -> (C, H, W) after mixing the K logits.
    out = (net(x).sum(0).view(num_channels, net.num_bins, height, width) * mixing).sum(1)
    if position is not None:
        out = out[:, position[0], position[1]]

    num_outputs = out.numel()
    basis = torch.eye(num_outputs).view(num_outputs, *out.shape)
    (jacobian,) = torch.autograd.grad(out, x, basis, is_grads_batched=True)
    return jacobian.abs().sum(1).view(*out.shape, num_channels, height, width)


def raster_dependence(net, num_channels, height, width):
    """Return the dependence between dimensions in raster order, shape ``(D, D)`` with ``D = H·W·C``.

    Entry ``[d, e]`` is the dependence of the logits of dimension ``d`` on input dimension ``e``, where
    dimension ``(i, j, c)`` has index ``(i·W + j)·C + c``.
    """
    torch.manual_seed(1)
    dep = dependence(net, torch.rand(8, num_channels, height, width) * 2 - 1)

    # (C, H, W, C, H, W) -> (H, W, C, H, W, C): position first, channel inside the position.
    num_dims = height * width * num_channels
    return dep.permute(1, 2, 0, 4, 5, 3).reshape(num_dims, num_dims)


def assert_causal(dep, width, num_channels, check_row_starts=True):
    """Assert exact zeros on and above the diagonal, and a nonzero entry for each preceding dimension."""
    assert torch.all(torch.triu(dep) == 0), "an output reads its own or a later dimension"

    for d in range(1, dep.shape[0]):
        position = d // num_channels
        row_start = d % num_channels == 0 and position % width == 0
        if row_start and not check_row_starts:
            continue
        assert dep[d, d - 1] != 0, f"dimension {d} does not read dimension {d - 1}"


SHAPES = [(1, 1), (1, 4), (4, 1), (2, 3), (3, 2), (4, 4)]


@pytest.mark.parametrize("height, width", SHAPES)
# 32 filters give uneven groups of 11, 11 and 10 channels (bottleneck 6, 5 and 5) for C = 3. Tiny
# groups would let a dead ReLU unit cut a path at random initialization and fail the nonzero checks.
@pytest.mark.parametrize("num_channels, num_filters", [(1, 12), (3, 24), (3, 32)])
def test_pixelcnn_causal(height, width, num_channels, num_filters):
    torch.manual_seed(0)
    net = PixelCNN(num_channels, 3, num_filters=num_filters, num_blocks=2).eval()

    dep = raster_dependence(net, num_channels, height, width)

    # The 7×7 mask A layer reads 3 columns to the right in the row above, so the last position of the
    # previous row is read directly when W <= 4.
    assert_causal(dep, width, num_channels, check_row_starts=width <= 4)


@pytest.mark.parametrize("height, width", SHAPES + [(5, 5)])
@pytest.mark.parametrize("num_channels, num_filters", [(1, 8), (3, 12), (3, 17)])
def test_gated_pixelcnn_causal(height, width, num_channels, num_filters):
    torch.manual_seed(0)
    net = GatedPixelCNN(num_channels, 3, num_filters=num_filters, num_blocks=3).eval()

    dep = raster_dependence(net, num_channels, height, width)

    # Four gated 3×3 layers read 4 columns to either side in the rows above, which covers W <= 5.
    assert_causal(dep, width, num_channels)


@pytest.mark.parametrize("num_channels", [1, 3])
def test_gated_pixelcnn_no_blind_spot(num_channels):
    torch.manual_seed(0)
    net = GatedPixelCNN(num_channels, 3, num_filters=12, num_blocks=5).eval()
    x = torch.rand(8, num_channels, 7, 7) * 2 - 1

    # The first sub-pixel of the last position reads every earlier position (L·h = 6 covers the row).
    read = dependence(net, x, position=(6, 6))[0] != 0

    expected = torch.ones(num_channels, 7, 7, dtype=torch.bool)
    expected[:, 6, 6] = False
    assert torch.equal(read, expected)


@pytest.mark.parametrize("kernel_size, num_blocks", [(3, 2), (5, 1)])
def test_gated_pixelcnn_receptive_field_is_exact(kernel_size, num_blocks):
    torch.manual_seed(0)
    net = GatedPixelCNN(3, 3, num_filters=12, num_blocks=num_blocks, kernel_size=kernel_size).eval()
    size, i, j = 11, 8, 5

    read = dependence(net, torch.rand(8, 3, size, size) * 2 - 1, position=(i, j)) != 0

    reach = (num_blocks + 1) * (kernel_size // 2)
    assert net.receptive_field_rows == reach + 1
    for c in range(3):
        expected = torch.zeros(3, size, size, dtype=torch.bool)
        expected[:, i - reach - 1 : i, j - reach : j + reach + 1] = True
        expected[:, i, j - reach : j] = True
        expected[:c, i, j] = True
        assert torch.equal(read[c], expected), c


def test_pixelcnn_reads_only_inside_window():
    torch.manual_seed(0)
    net = PixelCNN(3, 3, num_filters=24, num_blocks=2, first_kernel_size=5).eval()
    size, i, j = 11, 8, 5

    read = dependence(net, torch.rand(8, 3, size, size) * 2 - 1, position=(i, j)) != 0

    reach = net.receptive_field_rows
    assert reach == 4
    outside = torch.ones(3, size, size, dtype=torch.bool)
    outside[:, i - reach : i + 1, j - reach : j + reach + 1] = False
    assert not torch.any(read[:, outside])
    # The first and last row of the window are read.
    assert torch.any(read[:, :, i - reach])
    assert torch.any(read[:, :, i, :j])


def test_pixelcnn_blind_spot_vs_gated():
    torch.manual_seed(0)
    plain = PixelCNN(1, 3, num_filters=8, num_blocks=1, first_kernel_size=3).eval()
    gated = GatedPixelCNN(1, 3, num_filters=8, num_blocks=1).eval()
    x = torch.rand(3, 1, 5, 5) * 2 - 1

    # Output (3, 1) and input (2, 3): one row up, two columns right, inside both windows.
    plain_dep = dependence(plain, x, position=(3, 1))[0, 0, 2, 3]
    gated_dep = dependence(gated, x, position=(3, 1))[0, 0, 2, 3]

    assert plain_dep == 0
    assert gated_dep != 0


@pytest.mark.parametrize("net_class", [PixelCNN, GatedPixelCNN])
@pytest.mark.parametrize("num_channels", [1, 3])
def test_train_mode_dropout_keeps_causality(net_class, num_channels):
    torch.manual_seed(0)
    net = net_class(num_channels, 3, num_filters=12, num_blocks=2, dropout=0.5).train()

    dep = raster_dependence(net, num_channels, 4, 3)

    assert torch.all(torch.triu(dep) == 0)


@pytest.mark.parametrize("net_class", [PixelCNN, GatedPixelCNN])
@pytest.mark.parametrize("height, width", [(1, 1), (5, 3), (8, 8)])
def test_output_shape(net_class, height, width):
    net = net_class(3, 7, num_filters=12, num_blocks=1)

    out = net(torch.zeros(2, 3, height, width))

    assert out.shape == (2, 21, height, width)
    assert net.out_channels == 21


@pytest.mark.parametrize("net_class", [PixelCNN, GatedPixelCNN])
def test_default_constructor_accepts_rgb(net_class):
    # 128 filters are not divisible by 3 channels, so the groups are balanced instead.
    net = net_class(3, 256)

    assert net(torch.zeros(1, 3, 2, 2)).shape == (1, 768, 2, 2)


@pytest.mark.parametrize("net_class", [PixelCNN, GatedPixelCNN])
def test_channels_last_matches(net_class):
    torch.manual_seed(0)
    net = net_class(3, 4, num_filters=12, num_blocks=2).eval()
    x = torch.randn(2, 3, 6, 5)

    expected = net(x)
    net = net.to(memory_format=torch.channels_last)
    actual = net(x.to(memory_format=torch.channels_last))

    assert torch.allclose(actual, expected)


@pytest.mark.parametrize("net_class", [PixelCNN, GatedPixelCNN])
def test_every_parameter_gets_gradient(net_class):
    torch.manual_seed(0)
    net = net_class(3, 4, num_filters=12, num_blocks=2)

    net(torch.randn(2, 3, 5, 5)).square().sum().backward()

    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_channels": 0, "num_bins": 4}, "num_channels"),
        ({"num_channels": 3, "num_bins": 1}, "num_bins"),
        ({"num_channels": 3, "num_bins": 4, "num_filters": 5}, "num_filters"),
        ({"num_channels": 1, "num_bins": 4, "num_blocks": -1}, "num_blocks"),
        ({"num_channels": 1, "num_bins": 4, "dropout": 1.0}, "dropout"),
        ({"num_channels": 1, "num_bins": 4, "kernel_size": 4}, "kernel_size"),
        ({"num_channels": 1, "num_bins": 4, "first_kernel_size": 1}, "first_kernel_size"),
    ],
)
def test_pixelcnn_rejects_invalid_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PixelCNN(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_channels": 0, "num_bins": 4}, "num_channels"),
        ({"num_channels": 3, "num_bins": 1}, "num_bins"),
        ({"num_channels": 3, "num_bins": 4, "num_filters": 2}, "num_filters"),
        ({"num_channels": 1, "num_bins": 4, "dropout": -0.1}, "dropout"),
        ({"num_channels": 1, "num_bins": 4, "kernel_size": 1}, "kernel_size"),
        ({"num_channels": 1, "num_bins": 4, "kernel_size": 2}, "kernel_size"),
    ],
)
def test_gated_pixelcnn_rejects_invalid_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GatedPixelCNN(**kwargs)


@pytest.mark.parametrize("net_class", [PixelCNN, GatedPixelCNN])
def test_rejects_wrong_input_shape(net_class):
    net = net_class(3, 4, num_filters=12, num_blocks=1)

    with pytest.raises(ValueError, match="expected input"):
        net(torch.zeros(2, 1, 4, 4))
    with pytest.raises(ValueError, match="expected input"):
        net(torch.zeros(3, 4, 4))
