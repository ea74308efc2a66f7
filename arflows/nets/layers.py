"""Masked, shifted and causal convolutions, shifts and activations for autoregressive networks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "CausalConv1d",
    "ConcatELU",
    "Delay1d",
    "DownRightShiftedConv2d",
    "DownRightShiftedConvTranspose2d",
    "DownShift2d",
    "DownShiftedConv2d",
    "DownShiftedConvTranspose2d",
    "GatedActivation",
    "MaskedConv2d",
    "RightShift2d",
    "UniformMaskDropout",
    "channel_groups",
    "channel_mask",
]

IntPair = Union[int, tuple[int, int]]


def _pair(value: IntPair) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    first, second = value
    return int(first), int(second)


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")


def channel_groups(num_channels: int, num_groups: int, num_chunks: int = 1) -> Tensor:
    """Assign channels to contiguous, balanced groups (the sub-pixel each channel belongs to).

    The channels are split into ``num_chunks`` equal chunks (for example the tanh and sigmoid halves of a
    gate), and inside each chunk channel ``i`` of ``n = num_channels / num_chunks`` belongs to group
    ``floor(i * num_groups / n)``. Group sizes differ by at most one, so ``n`` need not be divisible by
    ``num_groups``. With ``n = num_groups * K`` the groups are exactly the blocks of ``view(num_groups, K)``.

    Args:
        num_channels: Total number of channels.
        num_groups: Number of groups, at most ``num_channels / num_chunks`` so that no group is empty.
        num_chunks: Number of chunks that repeat the same grouping.

    Returns:
        Long tensor of shape ``(num_channels,)`` with values in ``{0, ..., num_groups - 1}``.
    """
    _check_positive("num_groups", num_groups)
    _check_positive("num_chunks", num_chunks)
    if num_channels % num_chunks != 0:
        raise ValueError(f"num_channels={num_channels} is not divisible by num_chunks={num_chunks}")

    chunk_size = num_channels // num_chunks
    if chunk_size < num_groups:
        raise ValueError(
            f"{chunk_size} channels per chunk cannot fill num_groups={num_groups} groups, "
            f"so use at least {num_groups * num_chunks} channels"
        )

    groups = torch.arange(chunk_size) * num_groups // chunk_size
    return groups.repeat(num_chunks)


def channel_mask(out_groups: Tensor, in_groups: Tensor, include_same_group: bool) -> Tensor:
    """Build the channel connectivity at the current position of a masked convolution.

    Output channel ``o`` may read input channel ``i`` iff ``group(o) > group(i)``, or ``group(o) == group(i)``
    when ``include_same_group`` is true (mask B). With ``include_same_group=False`` (mask A) the sub-pixel
    ``c`` reads only the channels of sub-pixels ``< c``.

    Args:
        out_groups: Group of each output channel, shape ``(out_channels,)``.
        in_groups: Group of each input channel, shape ``(in_channels,)``.
        include_same_group: Whether a group may read itself.

    Returns:
        Float tensor of zeros and ones, shape ``(out_channels, in_channels)``.
    """
    out_groups = out_groups[:, None]
    in_groups = in_groups[None, :]
    if include_same_group:
        allowed = out_groups >= in_groups
    else:
        allowed = out_groups > in_groups
    return allowed.to(torch.get_default_dtype())


def _check_mask_type(mask_type: str | None, allow_none: bool) -> None:
    valid = ("A", "B", None) if allow_none else ("A", "B")
    if mask_type not in valid:
        raise ValueError(f"mask_type must be one of {valid}, got {mask_type!r}")


class _MaskedWeightMixin:
    """Convolution whose effective weight is ``weight * mask`` for a fixed 0/1 buffer ``mask``.

    Multiplying in every forward keeps the masked entries exactly zero whatever the optimizer does to
    ``weight`` (weight decay, momentum), and costs one elementwise product on the small weight tensor.
    """

    weight: Tensor
    mask: Tensor

    def _init_mask(self, mask: Tensor) -> None:
        # Not persistent: the constructor arguments determine the mask, so checkpoints need not store it.
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)
        with torch.no_grad():
            self.weight.mul_(self.mask)

    def masked_weight(self) -> Tensor:
        """Weight with the forbidden connections set to zero, shape of ``weight``."""
        return self.weight * self.mask


class MaskedConv2d(_MaskedWeightMixin, nn.Conv2d):
    r"""Square convolution with a PixelCNN mask.

    Reference: van den Oord et al., 2016, "Pixel Recurrent Neural Networks".


    The ``k × k`` kernel is centred on the output position ``(i, j)`` (zero padding ``k // 2`` on each side,
    stride 1). Inside the window it reads every position of the rows above ``i`` and the positions left
    of ``j`` in row ``i``. At ``(i, j)`` itself it reads only the channels that :func:`channel_mask`
    allows. With mask A the group of sub-pixel ``c`` reads groups ``< c``, and with mask B groups ``<= c``.
    The groups come from :func:`channel_groups` with ``num_groups`` groups (the number of sub-pixels per
    position), so with one group mask A excludes the current position entirely. The window reaches
    ``k // 2`` rows up and ``k // 2`` columns to each side.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Odd kernel size ``k``.
        mask_type: ``"A"`` (first layer) or ``"B"`` (later layers).
        num_groups: Sub-pixels per position.
        out_chunks: Number of equal output chunks that repeat the grouping (2 for the halves of a gate).
        bias: Whether to add a bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        mask_type: str,
        num_groups: int = 1,
        out_chunks: int = 1,
        bias: bool = True,
    ) -> None:
        _check_mask_type(mask_type, allow_none=False)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")

        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias)
        self.mask_type = mask_type
        self.num_groups = num_groups

        centre = kernel_size // 2
        mask = torch.zeros(out_channels, in_channels, kernel_size, kernel_size)
        mask[:, :, :centre, :] = 1.0
        mask[:, :, centre, :centre] = 1.0
        mask[:, :, centre, centre] = channel_mask(
            channel_groups(out_channels, num_groups, out_chunks),
            channel_groups(in_channels, num_groups),
            include_same_group=mask_type == "B",
        )
        self._init_mask(mask)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the masked convolution: ``(B, in, H, W) -> (B, out, H, W)``."""
        return F.conv2d(x, self.masked_weight(), self.bias, padding=self.padding)


def _check_upsampled_size(coarse: Tensor, output_size: Sequence[int], stride: int) -> tuple[int, int]:
    height, width = (int(size) for size in output_size[-2:])
    expected = ((height - 1) // stride + 1, (width - 1) // stride + 1)
    if height < 1 or width < 1 or tuple(coarse.shape[-2:]) != expected:
        raise ValueError(
            f"output_size={(height, width)} does not match the input of size {tuple(coarse.shape[-2:])} at "
            f"stride={stride}, but ceil(output_size / stride) must equal the input size"
        )
    return height, width


def _crop_2d(x: Tensor, height: int, width: int, left: int = 0) -> Tensor:
    # Keeps rows [0, height) and columns [left, left + width). A view, so no copy is made.
    return x[:, :, :height, left : left + width]


class DownShiftedConv2d(nn.Conv2d):
    r"""Convolution that reads only the current row and the rows above (Salimans et al., 2017, PixelCNN++).

    With kernel ``(kh, kw)`` (``kw`` odd) and stride ``s``, output ``(i, j)`` reads input rows
    ``s·i - kh + 1 .. s·i`` and columns ``s·j - (kw - 1) / 2 .. s·j + (kw - 1) / 2``, with zeros outside
    the image. This is zero padding of ``kh - 1`` rows on top and ``(kw - 1) / 2`` columns on each side.
    The output has ``ceil(H / s) × ceil(W / s)`` positions.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: ``(kh, kw)`` with ``kw`` odd.
        stride: Stride ``s`` in both directions.
        bias: Whether to add a bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair = (2, 3),
        stride: int = 1,
        bias: bool = True,
    ) -> None:
        kernel_height, kernel_width = _pair(kernel_size)
        _check_positive("kernel height", kernel_height)
        if kernel_width < 1 or kernel_width % 2 == 0:
            raise ValueError(f"kernel width must be a positive odd integer, got {kernel_width}")
        _check_positive("stride", stride)

        # Symmetric padding in the convolution itself, then a crop of the extra bottom rows, is the same
        # as top-only padding and saves a padded copy of the input.
        super().__init__(
            in_channels,
            out_channels,
            (kernel_height, kernel_width),
            stride=stride,
            padding=(kernel_height - 1, (kernel_width - 1) // 2),
            bias=bias,
        )

    def forward(self, x: Tensor) -> Tensor:
        """Apply the convolution: ``(B, in, H, W) -> (B, out, ceil(H / s), ceil(W / s))``."""
        height, width = x.shape[-2:]
        stride = self.stride[0]
        out = super().forward(x)
        return _crop_2d(out, (height - 1) // stride + 1, (width - 1) // stride + 1)


class DownRightShiftedConv2d(_MaskedWeightMixin, nn.Conv2d):
    r"""Convolution that reads the rows above and the current row up to the current position.

    With kernel ``(kh, kw)`` and stride ``s``, output ``(i, j)`` reads input rows ``s·i - kh + 1 .. s·i``
    and columns ``s·j - kw + 1 .. s·j`` (zero padding of ``kh - 1`` rows on top and ``kw - 1`` columns on
    the left), as in PixelCNN++. The output has ``ceil(H / s) × ceil(W / s)`` positions.

    With ``mask_type`` ``"A"`` or ``"B"`` the tap at the current position (bottom-right of the kernel) is
    masked by channel groups as in :class:`MaskedConv2d`, which gives the horizontal stack of the gated
    PixelCNN: a ``(1, kw)`` kernel reads the ``kw - 1`` positions to the left and the allowed channels of
    the current position.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: ``(kh, kw)``.
        stride: Stride ``s`` in both directions.
        mask_type: ``None`` (no mask), ``"A"`` or ``"B"``.
        num_groups: Sub-pixels per position, used only with a mask.
        out_chunks: Equal output chunks that repeat the grouping, used only with a mask.
        bias: Whether to add a bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair = (2, 2),
        stride: int = 1,
        mask_type: str | None = None,
        num_groups: int = 1,
        out_chunks: int = 1,
        bias: bool = True,
    ) -> None:
        kernel_height, kernel_width = _pair(kernel_size)
        _check_positive("kernel height", kernel_height)
        _check_positive("kernel width", kernel_width)
        _check_positive("stride", stride)
        _check_mask_type(mask_type, allow_none=True)

        super().__init__(
            in_channels,
            out_channels,
            (kernel_height, kernel_width),
            stride=stride,
            padding=(kernel_height - 1, kernel_width - 1),
            bias=bias,
        )
        self.mask_type = mask_type
        self.num_groups = num_groups

        if mask_type is not None:
            mask = torch.ones(out_channels, in_channels, kernel_height, kernel_width)
            mask[:, :, -1, -1] = channel_mask(
                channel_groups(out_channels, num_groups, out_chunks),
                channel_groups(in_channels, num_groups),
                include_same_group=mask_type == "B",
            )
            self._init_mask(mask)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the convolution: ``(B, in, H, W) -> (B, out, ceil(H / s), ceil(W / s))``."""
        height, width = x.shape[-2:]
        stride = self.stride[0]
        weight = self.weight if self.mask_type is None else self.masked_weight()
        out = F.conv2d(x, weight, self.bias, stride=self.stride, padding=self.padding)
        return _crop_2d(out, (height - 1) // stride + 1, (width - 1) // stride + 1)


class DownShiftedConvTranspose2d(nn.ConvTranspose2d):
    r"""Transposed convolution that undoes the resolution change of a strided :class:`DownShiftedConv2d`.

    Input ``(i, j)`` writes to output rows ``s·i .. s·i + kh - 1`` and columns
    ``s·j - (kw - 1) / 2 .. s·j + (kw - 1) / 2``. So output row ``r`` only reads coarse rows ``i <= r / s``,
    which summarise input rows ``<= s·i <= r`` of the finer grid. The result is cropped to the requested
    ``output_size``, which must satisfy ``ceil(H_out / s) == H_in`` (and likewise for the width).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: ``(kh, kw)`` with ``kw`` odd, ``kh >= s`` and ``(kw + 1) / 2 >= s`` so that every
            output position is covered.
        stride: Stride ``s`` in both directions.
        bias: Whether to add a bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair = (2, 3),
        stride: int = 2,
        bias: bool = True,
    ) -> None:
        kernel_height, kernel_width = _pair(kernel_size)
        _check_positive("stride", stride)
        if kernel_width < 1 or kernel_width % 2 == 0:
            raise ValueError(f"kernel width must be a positive odd integer, got {kernel_width}")
        if kernel_height < stride or (kernel_width + 1) // 2 < stride:
            raise ValueError(
                f"kernel_size={(kernel_height, kernel_width)} leaves gaps at stride={stride}, "
                "so use kh >= stride and (kw + 1) / 2 >= stride"
            )
        super().__init__(in_channels, out_channels, (kernel_height, kernel_width), stride=stride, bias=bias)

    def forward(self, x: Tensor, output_size: Sequence[int]) -> Tensor:  # type: ignore[override]
        """Upsample ``(B, in, H', W') -> (B, out, H, W)`` for ``output_size = (H, W)``."""
        height, width = _check_upsampled_size(x, output_size, self.stride[0])
        out = F.conv_transpose2d(x, self.weight, self.bias, stride=self.stride)
        return _crop_2d(out, height, width, left=(self.kernel_size[1] - 1) // 2)


class DownRightShiftedConvTranspose2d(nn.ConvTranspose2d):
    r"""Transposed convolution that undoes the resolution change of a strided :class:`DownRightShiftedConv2d`.

    Input ``(i, j)`` writes to output rows ``s·i .. s·i + kh - 1`` and columns ``s·j .. s·j + kw - 1``, so
    output ``(r, c)`` only reads coarse positions that summarise fine positions up to ``(s·i, s·j)`` with
    ``s·i <= r`` and ``s·j <= c``. The result is cropped to ``output_size``, which must satisfy
    ``ceil(H_out / s) == H_in`` (and likewise for the width).

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: ``(kh, kw)`` with ``kh >= s`` and ``kw >= s``.
        stride: Stride ``s`` in both directions.
        bias: Whether to add a bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair = (2, 2),
        stride: int = 2,
        bias: bool = True,
    ) -> None:
        kernel_height, kernel_width = _pair(kernel_size)
        _check_positive("stride", stride)
        if kernel_height < stride or kernel_width < stride:
            raise ValueError(
                f"kernel_size={(kernel_height, kernel_width)} leaves gaps at stride={stride}, "
                "so use kh >= stride and kw >= stride"
            )
        super().__init__(in_channels, out_channels, (kernel_height, kernel_width), stride=stride, bias=bias)

    def forward(self, x: Tensor, output_size: Sequence[int]) -> Tensor:  # type: ignore[override]
        """Upsample ``(B, in, H', W') -> (B, out, H, W)`` for ``output_size = (H, W)``."""
        height, width = _check_upsampled_size(x, output_size, self.stride[0])
        out = F.conv_transpose2d(x, self.weight, self.bias, stride=self.stride)
        return _crop_2d(out, height, width)


class DownShift2d(nn.Module):
    """Shift an image down by one row: ``out[..., i, :] = x[..., i - 1, :]`` and row 0 is zero.

    After this shift a :class:`DownShiftedConv2d` sees only rows strictly above the output row.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Shift ``(B, C, H, W)`` down by one row, keeping the shape."""
        height = x.shape[-2]
        return F.pad(x[:, :, : height - 1, :], (0, 0, 1, 0))


class RightShift2d(nn.Module):
    """Shift an image right by one column: ``out[..., j] = x[..., j - 1]`` and column 0 is zero."""

    def forward(self, x: Tensor) -> Tensor:
        """Shift ``(B, C, H, W)`` right by one column, keeping the shape."""
        width = x.shape[-1]
        return F.pad(x[:, :, :, : width - 1], (1, 0))


class CausalConv1d(nn.Conv1d):
    r"""Dilated 1-D convolution whose output at step ``t`` reads steps ``t - (k - 1)·d .. t``.

    This is zero padding of ``(k - 1)·d`` steps on the left only (van den Oord et al., 2016, "WaveNet").

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Kernel size ``k``.
        dilation: Dilation ``d``.
        bias: Whether to add a bias.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 2, dilation: int = 1, bias: bool = True
    ) -> None:
        _check_positive("kernel_size", kernel_size)
        _check_positive("dilation", dilation)
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias)
        self.left_padding = (kernel_size - 1) * dilation

    def forward(self, x: Tensor) -> Tensor:
        """Apply the convolution: ``(B, in, T) -> (B, out, T)``."""
        return super().forward(F.pad(x, (self.left_padding, 0)))


class Delay1d(nn.Module):
    """Delay a sequence by ``steps``: ``out[..., t] = x[..., t - steps]``, zero for ``t < steps``."""

    def __init__(self, steps: int = 1) -> None:
        super().__init__()
        _check_positive("steps", steps)
        self.steps = steps

    def forward(self, x: Tensor) -> Tensor:
        """Delay ``(B, C, T)``, keeping the shape."""
        length = x.shape[-1]
        kept = max(length - self.steps, 0)
        return F.pad(x[:, :, :kept], (length - kept, 0))


class ConcatELU(nn.Module):
    """Concatenated ELU, ``elu([x, -x])`` along the channels: ``(B, C, ...) -> (B, 2C, ...)``.

    Both signs keep a gradient, unlike a single ELU (Shang et al., 2016, as used by PixelCNN++).
    """

    def forward(self, x: Tensor) -> Tensor:
        """Apply the activation, doubling the channels."""
        # In place on the fresh concatenation: one tensor of 2C channels less, and ELU's backward pass
        # reads its output instead of its input.
        return F.elu(torch.cat([x, -x], dim=1), inplace=True)


class GatedActivation(nn.Module):
    """Gated activation ``tanh(a) * sigmoid(b)`` where ``[a, b]`` are the two channel halves of the input.

    Maps ``(B, 2C, ...)`` to ``(B, C, ...)`` (van den Oord et al., 2016, "Conditional Image Generation with
    PixelCNN Decoders"). Channel ``c`` of the output only reads channels ``c`` and ``C + c``, so channel
    groups that repeat in both halves stay separate.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Apply the gate, halving the channels."""
        value, gate = x.chunk(2, dim=1)
        return torch.tanh(value) * torch.sigmoid(gate)


class UniformMaskDropout(nn.Dropout):
    """Elementwise dropout, as :class:`torch.nn.Dropout`, that draws its CPU mask by comparing uniforms.

    On CUDA and other devices this is ``F.dropout``. On the CPU the mask is ``rand >= p``, scaled by
    ``1 / (1 - p)``, which has the same distribution as ``F.dropout``.

    NOTE: measured with torch 2.13 on a 2-core x86 VM, one thread, a (16, 64, 32, 32) float32 tensor:
    forward and backward take about 5 ms this way and 15 ms with ``F.dropout``, whose CPU kernel uses
    ``bernoulli_``.
    """

    def forward(self, x: Tensor) -> Tensor:
        """Zero each element with probability ``p`` in training mode and rescale the rest."""
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, training=True)

        # The uniforms become the scaled 0/1 mask in place, so the mask costs one tensor instead of three.
        mask = torch.rand_like(x).ge_(self.p).mul_(1.0 / (1.0 - self.p))
        return x * mask
