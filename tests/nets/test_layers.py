"""Tests for the masked, shifted and causal layers: exact read regions measured with gradients."""

import pytest
import torch
import torch.nn.functional as F

from arflows.nets.layers import (
    CausalConv1d,
    ConcatELU,
    Delay1d,
    DownRightShiftedConv2d,
    DownRightShiftedConvTranspose2d,
    DownShift2d,
    DownShiftedConv2d,
    DownShiftedConvTranspose2d,
    GatedActivation,
    MaskedConv2d,
    RightShift2d,
    channel_groups,
    channel_mask,
)


@pytest.fixture(autouse=True)
def float64_default():
    # float64 makes an exact zero in a gradient a structural zero, not a rounding accident.
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def dependence(layer, x, **kwargs):
    """Return |d out / d x| summed over the batch, shape ``out.shape[1:] + x.shape[1:]``.

    Batch elements never interact in these layers, so one backward pass of the batch sum gives every
    sample's Jacobian rows at once, and summing absolute values over two random samples makes an
    accidental zero unlikely.
    """
    x = x.clone().requires_grad_(True)
    out = layer(x, **kwargs).sum(0)
    num_outputs = out.numel()
    basis = torch.eye(num_outputs).view(num_outputs, *out.shape)
    (jacobian,) = torch.autograd.grad(out, x, basis, is_grads_batched=True)
    return jacobian.abs().sum(1).view(*out.shape, *x.shape[1:])


def test_channel_groups_balanced_and_contiguous():
    groups = channel_groups(128, 3)

    assert groups.tolist() == sorted(groups.tolist())
    assert torch.bincount(groups).tolist() == [43, 43, 42]


def test_channel_groups_match_output_view():
    num_channels, num_bins = 3, 5
    groups = channel_groups(num_channels * num_bins, num_channels)

    expected = torch.arange(num_channels)[:, None].expand(num_channels, num_bins).reshape(-1)
    assert torch.equal(groups, expected)


def test_channel_groups_repeat_in_chunks():
    groups = channel_groups(12, 3, num_chunks=2)

    assert groups[:6].tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(groups[:6], groups[6:])


@pytest.mark.parametrize(
    "num_channels, num_groups, num_chunks",
    [(2, 3, 1), (5, 3, 2), (4, 0, 1)],
)
def test_channel_groups_rejects_invalid(num_channels, num_groups, num_chunks):
    with pytest.raises(ValueError):
        channel_groups(num_channels, num_groups, num_chunks)


def test_channel_mask_a_and_b():
    groups = torch.tensor([0, 1, 2])

    mask_a = channel_mask(groups, groups, include_same_group=False)
    mask_b = channel_mask(groups, groups, include_same_group=True)

    assert torch.equal(mask_a, torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0]]))
    assert torch.equal(mask_b, torch.tensor([[1.0, 0, 0], [1, 1, 0], [1, 1, 1]]))


@pytest.mark.parametrize("mask_type", ["A", "B"])
@pytest.mark.parametrize("num_groups", [1, 3])
def test_masked_conv_reads_exact_region(mask_type, num_groups):
    torch.manual_seed(0)
    in_channels = 3 if num_groups == 3 else 2
    layer = MaskedConv2d(in_channels, 6, 5, mask_type, num_groups=num_groups)
    dep = dependence(layer, torch.randn(2, in_channels, 9, 9))

    # Output (4, 4) of group g reads rows 2..3 fully, row 4 at columns 2..3, and at (4, 4) itself the
    # input groups allowed by the mask.
    out_groups = channel_groups(6, num_groups)
    in_groups = channel_groups(in_channels, num_groups)
    for out_channel in range(6):
        expected = torch.zeros(in_channels, 9, 9, dtype=torch.bool)
        expected[:, 2:4, 2:7] = True
        expected[:, 4, 2:4] = True
        if mask_type == "A":
            expected[:, 4, 4] = in_groups < out_groups[out_channel]
        else:
            expected[:, 4, 4] = in_groups <= out_groups[out_channel]
        assert torch.equal(dep[out_channel, 4, 4] != 0, expected)


def test_mask_a_single_group_excludes_centre():
    torch.manual_seed(0)
    layer = MaskedConv2d(1, 4, 3, "A")
    dep = dependence(layer, torch.randn(2, 1, 3, 3))

    assert torch.all(dep[:, 1, 1, 0, 1, 1] == 0)
    assert torch.all(dep[:, 1, 1, 0, 1, 0] != 0)


def test_masked_weight_zero_after_update():
    layer = MaskedConv2d(3, 6, 3, "A", num_groups=3)
    with torch.no_grad():
        layer.weight.add_(1.0)

    effective = layer.masked_weight()

    assert torch.all(effective[layer.mask == 0] == 0)


@pytest.mark.parametrize("kernel_size, mask_type", [(4, "A"), (0, "B"), (3, "C")])
def test_masked_conv_rejects_invalid(kernel_size, mask_type):
    with pytest.raises(ValueError):
        MaskedConv2d(3, 6, kernel_size, mask_type, num_groups=3)


@pytest.mark.parametrize("height, width", [(1, 1), (5, 4), (4, 7), (7, 7)])
@pytest.mark.parametrize("stride", [1, 2])
def test_down_shifted_conv_read_region(height, width, stride):
    torch.manual_seed(0)
    kernel_height, kernel_width = 2, 3
    layer = DownShiftedConv2d(2, 3, (kernel_height, kernel_width), stride=stride)
    dep = dependence(layer, torch.randn(2, 2, height, width))

    out_height, out_width = dep.shape[1:3]
    assert (out_height, out_width) == (-(-height // stride), -(-width // stride))
    for i in range(out_height):
        for j in range(out_width):
            expected = torch.zeros(height, width, dtype=torch.bool)
            rows = slice(max(stride * i - kernel_height + 1, 0), stride * i + 1)
            cols = slice(max(stride * j - 1, 0), stride * j + 2)
            expected[rows, cols] = True
            assert torch.equal(dep[:, i, j].sum((0, 1)) != 0, expected), (i, j)


@pytest.mark.parametrize("height, width", [(1, 1), (5, 4), (4, 7)])
@pytest.mark.parametrize("stride", [1, 2])
def test_down_right_conv_read_region(height, width, stride):
    torch.manual_seed(0)
    layer = DownRightShiftedConv2d(2, 3, (2, 2), stride=stride)
    dep = dependence(layer, torch.randn(2, 2, height, width))

    out_height, out_width = dep.shape[1:3]
    assert (out_height, out_width) == (-(-height // stride), -(-width // stride))
    for i in range(out_height):
        for j in range(out_width):
            expected = torch.zeros(height, width, dtype=torch.bool)
            expected[max(stride * i - 1, 0) : stride * i + 1, max(stride * j - 1, 0) : stride * j + 1] = True
            assert torch.equal(dep[:, i, j].sum((0, 1)) != 0, expected), (i, j)


@pytest.mark.parametrize("mask_type", ["A", "B"])
def test_down_right_conv_masks_centre(mask_type):
    torch.manual_seed(0)
    layer = DownRightShiftedConv2d(3, 6, (1, 3), mask_type=mask_type, num_groups=3, out_chunks=2)
    dep = dependence(layer, torch.randn(2, 3, 1, 5))

    out_groups = channel_groups(6, 3, num_chunks=2)
    for out_channel in range(6):
        centre = dep[out_channel, 0, 2, :, 0, 2] != 0
        if mask_type == "A":
            assert torch.equal(centre, torch.arange(3) < out_groups[out_channel])
        else:
            assert torch.equal(centre, torch.arange(3) <= out_groups[out_channel])
        assert torch.all(dep[out_channel, 0, 2, :, 0, :2] != 0)
        assert torch.all(dep[out_channel, 0, 2, :, 0, 3:] == 0)


@pytest.mark.parametrize("height, width", [(1, 1), (2, 2), (5, 4), (7, 7), (3, 8)])
def test_down_shifted_transpose_read_region(height, width):
    torch.manual_seed(0)
    coarse = (-(-height // 2), -(-width // 2))
    layer = DownShiftedConvTranspose2d(2, 3, (2, 3), stride=2)
    dep = dependence(layer, torch.randn(2, 2, *coarse), output_size=(height, width))

    assert dep.shape[1:3] == (height, width)
    read = dep.sum((0, 3)) != 0
    for r in range(height):
        for c in range(width):
            # Output column c = 2j + b - 1 for kernel column b in {0, 1, 2}.
            expected = torch.zeros(coarse, dtype=torch.bool)
            for j in range(coarse[1]):
                if c - 1 <= 2 * j <= c + 1:
                    expected[r // 2, j] = True
            assert torch.equal(read[r, c], expected), (r, c)


@pytest.mark.parametrize("height, width", [(1, 1), (2, 2), (5, 4), (7, 7), (3, 8)])
def test_down_right_transpose_read_region(height, width):
    torch.manual_seed(0)
    coarse = (-(-height // 2), -(-width // 2))
    layer = DownRightShiftedConvTranspose2d(2, 3, (2, 2), stride=2)
    dep = dependence(layer, torch.randn(2, 2, *coarse), output_size=(height, width))

    read = dep.sum((0, 3)) != 0
    for r in range(height):
        for c in range(width):
            expected = torch.zeros(coarse, dtype=torch.bool)
            expected[r // 2, c // 2] = True
            assert torch.equal(read[r, c], expected)


def test_transpose_rejects_mismatched_output_size():
    layer = DownShiftedConvTranspose2d(2, 2, (2, 3), stride=2)
    coarse = torch.zeros(1, 2, 3, 3)

    assert layer(coarse, (5, 6)).shape == (1, 2, 5, 6)
    with pytest.raises(ValueError, match="output_size"):
        layer(coarse, (7, 6))


def test_masks_are_not_saved_in_state_dict():
    layer = MaskedConv2d(3, 6, 3, "A", num_groups=3)

    assert "mask" not in layer.state_dict()
    assert MaskedConv2d(3, 6, 3, "A", num_groups=3).load_state_dict(layer.state_dict())


def test_transpose_rejects_gapped_kernel():
    with pytest.raises(ValueError):
        DownShiftedConvTranspose2d(2, 2, (1, 3), stride=2)
    with pytest.raises(ValueError):
        DownRightShiftedConvTranspose2d(2, 2, (2, 1), stride=2)


@pytest.mark.parametrize("height, width", [(1, 1), (3, 4)])
def test_shifts_move_by_one(height, width):
    x = torch.randn(2, 3, height, width)

    down = DownShift2d()(x)
    right = RightShift2d()(x)

    assert torch.equal(down[:, :, 1:], x[:, :, :-1])
    assert torch.all(down[:, :, 0] == 0)
    assert torch.equal(right[..., 1:], x[..., :-1])
    assert torch.all(right[..., 0] == 0)


@pytest.mark.parametrize("kernel_size, dilation", [(1, 1), (2, 1), (2, 4), (3, 2)])
def test_causal_conv_reads_exact_window(kernel_size, dilation):
    torch.manual_seed(0)
    layer = CausalConv1d(2, 3, kernel_size, dilation)
    dep = dependence(layer, torch.randn(2, 2, 12)).sum((0, 2))

    for t in range(12):
        expected = torch.zeros(12, dtype=torch.bool)
        taps = [t - k * dilation for k in range(kernel_size) if t - k * dilation >= 0]
        expected[taps] = True
        assert torch.equal(dep[t] != 0, expected), t


@pytest.mark.parametrize("length, steps", [(1, 1), (5, 1), (5, 3), (2, 4)])
def test_delay_shifts_right(length, steps):
    x = torch.randn(2, 1, length)

    out = Delay1d(steps)(x)

    assert out.shape == x.shape
    assert torch.equal(out[..., steps:], x[..., : max(length - steps, 0)])
    assert torch.all(out[..., :steps] == 0)


def test_concat_elu_and_gate_formulas():
    x = torch.randn(2, 4, 3, 3)

    assert torch.equal(ConcatELU()(x), torch.cat([F.elu(x), F.elu(-x)], dim=1))
    assert torch.allclose(GatedActivation()(x), torch.tanh(x[:, :2]) * torch.sigmoid(x[:, 2:]))


def test_layers_match_in_channels_last():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 7)
    layers = [
        MaskedConv2d(6, 6, 3, "B", num_groups=3),
        DownShiftedConv2d(6, 4, (2, 3), stride=2),
        DownRightShiftedConv2d(6, 4, (2, 2), stride=2),
    ]

    for layer in layers:
        expected = layer(x)
        actual = layer.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        assert torch.allclose(actual, expected)
