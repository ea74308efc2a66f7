"""Tests for PixelCNN++: causality from exact gradients, odd sizes, output layout and validation."""

import pytest
import torch

from arflows.nets import PixelCNNPlusPlus, mixture_num_outputs
from arflows.nets.pixelcnn_pp import GatedResidualBlock


@pytest.fixture(autouse=True)
def float64_default():
    # float64 makes an exact zero in a gradient a structural zero, not a rounding accident.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def position_dependence(net, num_channels, height, width, num_samples=4):
    """Return the dependence of each position's parameters on each input dimension, shape ``(H·W, D)``.

    Entry ``[p, e]`` is the |gradient| of a random combination of all parameters at raster position ``p``
    with respect to input dimension ``e = p'·C + c``, summed over random samples. A structural zero stays
    exactly zero under the combination, and a nonzero gradient cancels with probability zero. Batch
    elements never interact, so one batched backward pass of the batch sum gives every sample's Jacobian.
    """
    torch.manual_seed(1)
    x = (torch.rand(num_samples, num_channels, height, width) * 2 - 1).requires_grad_(True)
    mixing = torch.randn(net.out_channels, 1, 1)
    out = (net(x) * mixing).sum((0, 1))
    num_outputs = out.numel()
    basis = torch.eye(num_outputs).view(num_outputs, height, width)
    (jacobian,) = torch.autograd.grad(out, x, basis, is_grads_batched=True)

    # (H·W, B, C, H, W) -> (H·W, H, W, C), summing the samples. Raster order puts the channel last.
    dep = jacobian.abs().sum(1).permute(0, 2, 3, 1)
    return dep.reshape(height * width, height * width * num_channels)


def assert_causal(dep, num_channels):
    """Assert that position ``p`` reads nothing at ``p`` or later but reads the dimension before ``p``."""
    for p in range(dep.shape[0]):
        assert torch.all(dep[p, p * num_channels :] == 0), f"position {p} reads itself or a later position"
        if p > 0:
            assert dep[p, p * num_channels - 1] != 0, (
                f"position {p} does not read dimension {p * num_channels - 1}"
            )


def small_net(num_channels, num_blocks=1, num_stages=3, dropout=0.0, num_filters=12):
    return PixelCNNPlusPlus(
        num_channels,
        num_components=2,
        num_filters=num_filters,
        num_blocks=num_blocks,
        dropout=dropout,
        num_stages=num_stages,
    )


@pytest.mark.parametrize("height, width", [(1, 1), (1, 6), (6, 1), (2, 3), (3, 2), (5, 4), (7, 7)])
@pytest.mark.parametrize("num_channels", [1, 3])
def test_causal(height, width, num_channels):
    torch.manual_seed(0)
    net = small_net(num_channels).eval()

    dep = position_dependence(net, num_channels, height, width)

    assert_causal(dep, num_channels)


@pytest.mark.parametrize("num_stages, num_blocks", [(1, 2), (2, 0), (4, 1)])
def test_causal_other_depths(num_stages, num_blocks):
    torch.manual_seed(0)
    net = small_net(3, num_blocks=num_blocks, num_stages=num_stages).eval()

    dep = position_dependence(net, 3, 5, 3)

    assert_causal(dep, 3)


@pytest.mark.parametrize("num_channels", [1, 3])
def test_no_blind_spot(num_channels):
    torch.manual_seed(0)
    net = small_net(num_channels).eval()

    dep = position_dependence(net, num_channels, 7, 7)

    # The last position reads every channel of every earlier position.
    assert torch.all(dep[48, : 48 * num_channels] != 0)


def test_train_mode_dropout_keeps_causality():
    torch.manual_seed(0)
    net = small_net(3, dropout=0.5).train()

    dep = position_dependence(net, 3, 5, 5)

    for p in range(25):
        assert torch.all(dep[p, p * 3 :] == 0), p


def test_train_mode_dropout_is_active():
    torch.manual_seed(0)
    net = small_net(3, dropout=0.5).train()
    x = torch.randn(1, 3, 4, 4)

    assert not torch.equal(net(x), net(x))
    assert torch.equal(net.eval()(x), net(x))


@pytest.mark.parametrize(
    "num_channels, num_components, expected",
    [(3, 10, 100), (1, 10, 30), (2, 5, 30), (4, 1, 15)],
)
def test_output_channels_follow_contract(num_channels, num_components, expected):
    net = PixelCNNPlusPlus(num_channels, num_components, num_filters=8, num_blocks=1, dropout=0.0)

    out = net(torch.zeros(2, num_channels, 5, 3))

    assert mixture_num_outputs(num_channels, num_components) == expected
    assert net.out_channels == expected
    assert out.shape == (2, expected, 5, 3)


@pytest.mark.parametrize("height, width", [(1, 1), (1, 9), (9, 2), (17, 13), (32, 32)])
def test_any_image_size(height, width):
    net = small_net(3, num_stages=4, num_filters=8)

    out = net(torch.zeros(1, 3, height, width))

    assert out.shape == (1, 20, height, width)


def test_paper_cifar10_configuration():
    net = PixelCNNPlusPlus(3)
    block_counts = [len(stage) for stage in net.up_u] + [len(stage) for stage in net.down_u]

    assert net.out_channels == 100
    assert block_counts == [5, 5, 5, 5, 6, 6]
    assert net.output_conv.in_channels == 160
    assert net.up_u[0][0].dropout.p == 0.5
    # About 53.6 million parameters. The weight-normalized reference adds one gain per output channel.
    assert 53_000_000 < sum(p.numel() for p in net.parameters()) < 54_000_000


def test_channels_last_matches():
    torch.manual_seed(0)
    net = small_net(3).eval()
    x = torch.randn(2, 3, 7, 5)

    expected = net(x)
    net = net.to(memory_format=torch.channels_last)
    actual = net(x.to(memory_format=torch.channels_last))

    assert torch.allclose(actual, expected)


def test_every_parameter_gets_gradient():
    torch.manual_seed(0)
    net = small_net(3, num_stages=2)

    net(torch.randn(2, 3, 6, 6)).square().sum().backward()

    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_channels": 0}, "num_channels"),
        ({"num_channels": 3, "num_components": 0}, "num_components"),
        ({"num_channels": 3, "num_filters": 0}, "num_filters"),
        ({"num_channels": 3, "num_blocks": -1}, "num_blocks"),
        ({"num_channels": 3, "dropout": 1.0}, "dropout"),
        ({"num_channels": 3, "num_stages": 0}, "num_stages"),
    ],
)
def test_rejects_invalid_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PixelCNNPlusPlus(**kwargs)


def test_rejects_wrong_input_shape():
    net = small_net(3)

    with pytest.raises(ValueError, match="expected input"):
        net(torch.zeros(2, 1, 4, 4))


def test_residual_block_rejects_invalid_shift():
    with pytest.raises(ValueError, match="shift"):
        GatedResidualBlock(8, "up", 0, 0.0)
