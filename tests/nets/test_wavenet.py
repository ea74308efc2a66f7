"""Tests for WaveNet: causality and receptive field from exact gradients, shapes and validation."""

import pytest
import torch

from arflows.nets import WaveNet


@pytest.fixture(autouse=True)
def float64_default():
    # float64 makes an exact zero in a gradient a structural zero, not a rounding accident.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def step_dependence(net, length, num_samples=4):
    """Return the dependence of the outputs at each step on each input step, shape ``(T, T)``.

    Entry ``[t, s]`` is the |gradient| of a random combination of the outputs at step ``t`` with respect
    to input step ``s``, summed over random samples. A structural zero stays exactly zero under the
    combination, and a nonzero gradient cancels with probability zero. Batch elements never interact, so
    one batched backward pass of the batch sum gives every sample's Jacobian.
    """
    torch.manual_seed(1)
    x = (torch.rand(num_samples, 1, length) * 2 - 1).requires_grad_(True)
    mixing = torch.randn(net.out_channels, 1)
    out = (net(x) * mixing).sum((0, 1))
    basis = torch.eye(length)
    (jacobian,) = torch.autograd.grad(out, x, basis, is_grads_batched=True)
    return jacobian.abs().sum((1, 2))


CONFIGS = [
    {"num_layers": 3, "num_cycles": 2, "kernel_size": 2},
    {"num_layers": 2, "num_cycles": 2, "kernel_size": 3},
    {"num_layers": 4, "num_cycles": 1, "kernel_size": 2},
    {"num_layers": 1, "num_cycles": 1, "kernel_size": 2},
    {"num_layers": 2, "num_cycles": 1, "kernel_size": 1},
]


def small_net(dropout=0.0, **kwargs):
    return WaveNet(3, residual_channels=8, dilation_channels=8, skip_channels=8, dropout=dropout, **kwargs)


@pytest.mark.parametrize("config", CONFIGS)
def test_causal(config):
    torch.manual_seed(0)
    net = small_net(**config).eval()

    dep = step_dependence(net, 40)

    assert torch.all(torch.triu(dep) == 0), "an output reads its own or a later step"
    assert torch.all(torch.diagonal(dep, -1) != 0), "an output does not read the previous step"


@pytest.mark.parametrize("config", CONFIGS)
def test_receptive_field_matches_gradient_support(config):
    torch.manual_seed(0)
    net = small_net(**config).eval()
    length = 40

    dep = step_dependence(net, length)

    k, layers, cycles = config["kernel_size"], config["num_layers"], config["num_cycles"]
    assert net.receptive_field == (k - 1) * (1 + cycles * (2**layers - 1)) + 1
    for t in range(length):
        expected = torch.zeros(length, dtype=torch.bool)
        expected[max(t - net.receptive_field, 0) : t] = True
        assert torch.equal(dep[t] != 0, expected), t


def test_default_receptive_field():
    # Two cycles of dilations 1..512 with kernel 2: 1 + 2·1023 + 1 steps.
    assert WaveNet(256).receptive_field == 2048


def test_train_mode_dropout_keeps_causality():
    torch.manual_seed(0)
    net = small_net(dropout=0.5, num_layers=3, num_cycles=2).train()

    dep = step_dependence(net, 30)

    assert torch.all(torch.triu(dep) == 0)


@pytest.mark.parametrize("length", [1, 2, 7, 100])
@pytest.mark.parametrize("num_outputs", [256, 30])
def test_output_shape(length, num_outputs):
    net = WaveNet(num_outputs, residual_channels=8, dilation_channels=8, skip_channels=8, num_layers=3)

    out = net(torch.zeros(2, 1, length))

    assert out.shape == (2, num_outputs, length)


def test_every_parameter_gets_gradient():
    torch.manual_seed(0)
    net = small_net(num_layers=3, num_cycles=2)

    net(torch.randn(2, 1, 20)).square().sum().backward()

    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_outputs": 0}, "num_outputs"),
        ({"num_outputs": 4, "residual_channels": 0}, "residual_channels"),
        ({"num_outputs": 4, "dilation_channels": 0}, "dilation_channels"),
        ({"num_outputs": 4, "skip_channels": 0}, "skip_channels"),
        ({"num_outputs": 4, "num_layers": 0}, "num_layers"),
        ({"num_outputs": 4, "num_cycles": 0}, "num_cycles"),
        ({"num_outputs": 4, "kernel_size": 0}, "kernel_size"),
        ({"num_outputs": 4, "dropout": 1.5}, "dropout"),
    ],
)
def test_rejects_invalid_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        WaveNet(**kwargs)


def test_rejects_wrong_input_shape():
    net = small_net(num_layers=2)

    with pytest.raises(ValueError, match="expected input"):
        net(torch.zeros(2, 2, 10))
    with pytest.raises(ValueError, match="expected input"):
        net(torch.zeros(2, 10))
