"""PixelCNN and gated PixelCNN with categorical outputs over the sub-pixels of each position."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arflows.nets.layers import (
    DownRightShiftedConv2d,
    DownShift2d,
    DownShiftedConv2d,
    GatedActivation,
    MaskedConv2d,
    UniformMaskDropout,
)

__all__ = ["GatedPixelCNN", "PixelCNN"]


def _validate_image_hyperparameters(
    num_channels: int, num_bins: int, num_filters: int, num_blocks: int, dropout: float, min_filters: int
) -> None:
    if num_channels < 1:
        raise ValueError(f"num_channels must be at least 1, got {num_channels}")
    if num_bins < 2:
        raise ValueError(f"num_bins must be at least 2, got {num_bins}")
    if num_filters < min_filters:
        raise ValueError(
            f"num_filters must be at least {min_filters} for num_channels={num_channels} so that every "
            f"sub-pixel has its own hidden channels, got {num_filters}"
        )
    if num_blocks < 0:
        raise ValueError(f"num_blocks must be non-negative, got {num_blocks}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


def _validate_kernel_size(name: str, kernel_size: int, minimum: int) -> None:
    if kernel_size < minimum or kernel_size % 2 == 0:
        raise ValueError(f"{name} must be an odd integer >= {minimum}, got {kernel_size}")


def _validate_image_input(x: Tensor, num_channels: int) -> None:
    if x.dim() != 4 or x.shape[1] != num_channels:
        raise ValueError(f"expected input of shape (B, {num_channels}, H, W), got {tuple(x.shape)}")


class _OutputHead(nn.Sequential):
    """ReLU, masked 1×1 convolution, ReLU, masked 1×1 convolution to ``C·K`` logits.

    Both convolutions use mask B with one group per sub-pixel, so output channels ``c·K .. c·K + K - 1``
    (sub-pixel ``c``) read only hidden channels of groups ``<= c``.
    """

    def __init__(self, num_filters: int, num_channels: int, num_bins: int) -> None:
        super().__init__(
            nn.ReLU(),
            MaskedConv2d(num_filters, num_filters, 1, "B", num_groups=num_channels),
            nn.ReLU(),
            MaskedConv2d(num_filters, num_channels * num_bins, 1, "B", num_groups=num_channels),
        )


class PixelResidualBlock(nn.Module):
    """Bottleneck residual block of PixelCNN: ``h + up(relu(conv(relu(down(relu(h))))))``.

    ``down`` is a masked 1×1 convolution to ``F / 2`` channels, ``conv`` a masked ``k × k`` convolution and
    ``up`` a masked 1×1 convolution back to ``F`` channels, all with mask B (van den Oord et al., 2016,
    "Pixel Recurrent Neural Networks"). Dropout acts on the bottleneck before ``up``.

    Args:
        num_filters: Channels ``F`` of the residual stream.
        kernel_size: Odd size ``k`` of the masked convolution.
        num_groups: Sub-pixels per position.
        dropout: Dropout probability.
    """

    def __init__(self, num_filters: int, kernel_size: int, num_groups: int, dropout: float) -> None:
        super().__init__()
        bottleneck = num_filters // 2
        self.down = MaskedConv2d(num_filters, bottleneck, 1, "B", num_groups=num_groups)
        self.conv = MaskedConv2d(bottleneck, bottleneck, kernel_size, "B", num_groups=num_groups)
        self.dropout = UniformMaskDropout(dropout)
        self.up = MaskedConv2d(bottleneck, num_filters, 1, "B", num_groups=num_groups)

    def forward(self, h: Tensor) -> Tensor:
        """Update the residual stream, ``(B, F, H, W) -> (B, F, H, W)``."""
        # The convolution outputs are fresh tensors that no backward pass reads, so the activations and the
        # residual sum may overwrite them, which saves three tensors per block.
        residual = self.down(F.relu(h))
        residual = self.conv(F.relu(residual, inplace=True))
        residual = self.up(self.dropout(F.relu(residual, inplace=True)))
        return residual.add_(h)


class PixelCNN(nn.Module):
    r"""PixelCNN with masked convolutions and categorical outputs (van den Oord et al., 2016, "Pixel
    Recurrent Neural Networks").

    A ``first_kernel_size`` masked convolution with mask A feeds ``num_blocks`` bottleneck residual blocks
    (:class:`PixelResidualBlock`) and a head of two masked 1×1 convolutions. The hidden channels are split
    into ``C`` groups, one per sub-pixel (R, G, B), so the logits of sub-pixel ``c`` at position ``p`` read
    the channels ``< c`` of ``p`` and the positions before ``p``.

    Receptive field: the output at ``(i, j)`` reads rows ``i - r .. i``, where
    ``r = first_kernel_size // 2 + num_blocks · (kernel_size // 2)``, within ``r`` columns on either side.
    Stacked masked convolutions leave a blind spot (van den Oord et al., 2016, "Conditional Image
    Generation with PixelCNN Decoders"): a position above and to the right, such as ``(i - 1, j + 2)`` after
    two 3×3 layers, is never read even inside that window. :class:`GatedPixelCNN` has no blind spot.

    Input: ``x`` of shape ``(B, C, H, W)``, bin centres scaled to ``[-1, 1]``, any ``H, W >= 1``.
    Output: logits of shape ``(B, C·K, H, W)``, where ``view(B, C, K, H, W)`` gives the logits of
    sub-pixel ``c``.

    Args:
        num_channels: Sub-pixels per position ``C``.
        num_bins: Categories per sub-pixel ``K``.
        num_filters: Channels ``F`` of the residual stream, at least ``2C`` (the bottleneck has ``F / 2``).
            Groups are balanced, so ``F`` need not be divisible by ``C``.
        num_blocks: Residual blocks.
        first_kernel_size: Odd kernel size of the first (mask A) convolution, at least 3.
        kernel_size: Odd kernel size inside the residual blocks.
        dropout: Dropout probability inside the residual blocks.
    """

    def __init__(
        self,
        num_channels: int,
        num_bins: int,
        num_filters: int = 128,
        num_blocks: int = 8,
        first_kernel_size: int = 7,
        kernel_size: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _validate_image_hyperparameters(
            num_channels, num_bins, num_filters, num_blocks, dropout, min_filters=2 * num_channels
        )
        # A 1×1 mask A convolution would read no earlier position at all.
        _validate_kernel_size("first_kernel_size", first_kernel_size, minimum=3)
        _validate_kernel_size("kernel_size", kernel_size, minimum=1)

        self.num_channels = num_channels
        self.num_bins = num_bins
        self.out_channels = num_channels * num_bins
        self.first_kernel_size = first_kernel_size
        self.kernel_size = kernel_size

        self.input_conv = MaskedConv2d(
            num_channels, num_filters, first_kernel_size, "A", num_groups=num_channels
        )
        self.blocks = nn.ModuleList(
            PixelResidualBlock(num_filters, kernel_size, num_channels, dropout) for _ in range(num_blocks)
        )
        self.head = _OutputHead(num_filters, num_channels, num_bins)

    @property
    def receptive_field_rows(self) -> int:
        """Rows above the output row that the output can read.

        Equal to ``first_kernel_size // 2 + num_blocks · (kernel_size // 2)``.
        """
        return self.first_kernel_size // 2 + len(self.blocks) * (self.kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        """Compute the logits, ``(B, C, H, W) -> (B, C·K, H, W)``."""
        _validate_image_input(x, self.num_channels)

        h = self.input_conv(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


class GatedPixelBlock(nn.Module):
    r"""Gated layer of the gated PixelCNN with a vertical and a horizontal stack.

    Following van den Oord et al. (2016, "Conditional Image Generation with PixelCNN Decoders"):

    - vertical: ``v_pre = vconv(v)``, ``v' = tanh(v_pre[:F]) * sigmoid(v_pre[F:])``, where ``vconv`` is a
      :class:`DownShiftedConv2d` with kernel ``(k // 2 + 1, k)``. The vertical stream is built on a
      down-shifted input, so it only ever reads rows strictly above.
    - horizontal: ``h_pre = hconv(h) + link(v_pre)``, ``h' = h + out(gate(h_pre))``, where ``hconv`` is a
      :class:`DownRightShiftedConv2d` with kernel ``(1, k // 2 + 1)`` and mask B on the current position,
      ``link`` a 1×1 convolution and ``out`` a masked 1×1 convolution.

    The tanh and sigmoid halves of each gate repeat the same channel groups, so each sub-pixel's gate
    reads only its own and earlier groups. Dropout acts on the gated horizontal activation before ``out``.

    Args:
        num_filters: Channels ``F`` of both stacks.
        kernel_size: Odd kernel size ``k``.
        num_groups: Sub-pixels per position.
        dropout: Dropout probability.
    """

    def __init__(self, num_filters: int, kernel_size: int, num_groups: int, dropout: float) -> None:
        super().__init__()
        half = kernel_size // 2
        self.vertical_conv = DownShiftedConv2d(num_filters, 2 * num_filters, (half + 1, kernel_size))
        self.horizontal_conv = DownRightShiftedConv2d(
            num_filters, 2 * num_filters, (1, half + 1), mask_type="B", num_groups=num_groups, out_chunks=2
        )
        self.link = nn.Conv2d(2 * num_filters, 2 * num_filters, 1)
        self.gate = GatedActivation()
        self.dropout = UniformMaskDropout(dropout)
        self.horizontal_out = MaskedConv2d(num_filters, num_filters, 1, "B", num_groups=num_groups)

    def forward(self, v: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """Update both stacks, each ``(B, F, H, W) -> (B, F, H, W)``."""
        v_pre = self.vertical_conv(v)
        # In place on the fresh 1×1 output, which saves a tensor of 2F channels; the sum is the same.
        h_pre = self.link(v_pre).add_(self.horizontal_conv(h))

        v = self.gate(v_pre)
        h = h + self.horizontal_out(self.dropout(self.gate(h_pre)))
        return v, h


class GatedPixelCNN(nn.Module):
    r"""Gated PixelCNN without blind spot and with categorical outputs (van den Oord et al., 2016,
    "Conditional Image Generation with PixelCNN Decoders").

    The vertical stack starts from the input shifted down by one row, plus a constant channel of ones
    that marks the image border, and only uses :class:`DownShiftedConv2d`. So it reads every position
    in a window of rows strictly above. The horizontal stack starts with a mask A row convolution of the
    input (positions to the left and channels ``< c`` of the current position), receives the vertical
    stack through a 1×1 link in every layer, and uses mask B afterwards. The head is ReLU, masked 1×1,
    ReLU, masked 1×1 to ``C·K`` logits.

    Receptive field with ``L = num_blocks + 1`` gated layers and ``h = kernel_size // 2``: the output at
    ``(i, j)`` reads the rectangle of rows ``i - L·h - 1 .. i - 1`` and columns ``j - L·h .. j + L·h``,
    row ``i`` from column ``j - L·h`` to ``j - 1``, and the channels ``< c`` at ``(i, j)``. Every position
    of this region is read, so there is no blind spot.

    Input: ``x`` of shape ``(B, C, H, W)``, bin centres scaled to ``[-1, 1]``, any ``H, W >= 1``.
    Output: logits of shape ``(B, C·K, H, W)``, where ``view(B, C, K, H, W)`` gives the logits of
    sub-pixel ``c``.

    Args:
        num_channels: Sub-pixels per position ``C``.
        num_bins: Categories per sub-pixel ``K``.
        num_filters: Channels ``F`` of each stack, at least ``C``. Groups are balanced, so ``F`` need not
            be divisible by ``C``.
        num_blocks: Gated residual layers after the input layer.
        kernel_size: Odd kernel size ``k``, at least 3.
        dropout: Dropout probability inside the gated layers.
    """

    def __init__(
        self,
        num_channels: int,
        num_bins: int,
        num_filters: int = 128,
        num_blocks: int = 8,
        kernel_size: int = 3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _validate_image_hyperparameters(
            num_channels, num_bins, num_filters, num_blocks, dropout, min_filters=num_channels
        )
        # With k = 1 the horizontal stack would never read the positions to the left.
        _validate_kernel_size("kernel_size", kernel_size, minimum=3)

        self.num_channels = num_channels
        self.num_bins = num_bins
        self.out_channels = num_channels * num_bins
        self.kernel_size = kernel_size
        half = kernel_size // 2

        # Input layer: gated like the blocks, but with mask A and no residual connection because the
        # horizontal input has C channels, not F.
        self.down_shift = DownShift2d()
        self.vertical_input = DownShiftedConv2d(num_channels + 1, 2 * num_filters, (half + 1, kernel_size))
        self.horizontal_input = DownRightShiftedConv2d(
            num_channels, 2 * num_filters, (1, half + 1), mask_type="A", num_groups=num_channels, out_chunks=2
        )
        self.input_link = nn.Conv2d(2 * num_filters, 2 * num_filters, 1)
        self.gate = GatedActivation()

        self.blocks = nn.ModuleList(
            GatedPixelBlock(num_filters, kernel_size, num_channels, dropout) for _ in range(num_blocks)
        )
        self.head = _OutputHead(num_filters, num_channels, num_bins)

    @property
    def receptive_field_rows(self) -> int:
        """Rows above the output row that the output can read.

        Equal to ``(num_blocks + 1) · (kernel_size // 2) + 1``.
        """
        return (len(self.blocks) + 1) * (self.kernel_size // 2) + 1

    def forward(self, x: Tensor) -> Tensor:
        """Compute the logits, ``(B, C, H, W) -> (B, C·K, H, W)``."""
        _validate_image_input(x, self.num_channels)

        # The ones channel is zero in the padding and in the shifted-in first row, which marks where the
        # image ends for the vertical stack. The scaled input x alone cannot, since it can be 0 inside.
        ones = torch.ones_like(x[:, :1])
        v_pre = self.vertical_input(self.down_shift(torch.cat([x, ones], dim=1)))
        h_pre = self.input_link(v_pre).add_(self.horizontal_input(x))
        v = self.gate(v_pre)
        h = self.gate(h_pre)

        for block in self.blocks:
            v, h = block(v, h)
        return self.head(h)
