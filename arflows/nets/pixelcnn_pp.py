"""PixelCNN++ network that outputs discretized mixture of logistics parameters."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from arflows.nets.layers import (
    ConcatELU,
    DownRightShiftedConv2d,
    DownRightShiftedConvTranspose2d,
    DownShift2d,
    DownShiftedConv2d,
    DownShiftedConvTranspose2d,
    RightShift2d,
    UniformMaskDropout,
)

__all__ = ["GatedResidualBlock", "PixelCNNPlusPlus", "mixture_num_outputs"]

# Scale of the initial weights of the last convolution in each residual block, so that every block
# starts close to the identity.
_RESIDUAL_INIT_SCALE = 0.1


def mixture_num_outputs(num_channels: int, num_components: int) -> int:
    """Count the mixture parameters per position, ``M · (1 + 2C + C(C - 1) / 2)``.

    These are ``M`` logits, ``C·M`` means, ``C·M`` log-scales and ``C(C - 1)/2 · M`` coefficients that
    couple each channel to the earlier channels of the same position (100 for ``C = 3, M = 10``).
    """
    return num_components * (1 + 2 * num_channels + num_channels * (num_channels - 1) // 2)


class GatedResidualBlock(nn.Module):
    r"""Gated residual block of PixelCNN++ (Salimans et al., 2017, "PixelCNN++").

    ``c = conv_in(concat_elu(x)) + nin(concat_elu(a))``,
    ``c = conv_out(dropout(concat_elu(c)))``, ``out = x + c[:F] * sigmoid(c[F:])``,
    where ``a`` is the auxiliary input (absent when ``num_aux == 0``) and ``nin`` a 1×1 convolution.
    The block takes ``concat_elu(a)`` rather than ``a``, and optionally ``concat_elu(x)``, so that
    :class:`PixelCNNPlusPlus` activates each stream tensor once even when several blocks read it.

    For ``shift="down"`` both convolutions are :class:`DownShiftedConv2d` with kernel ``(2, 3)``: the block
    widens the read region by one row up and one column on each side. For ``shift="down_right"`` they
    are :class:`DownRightShiftedConv2d` with kernel ``(2, 2)``: one row up and one column to the left.

    Args:
        num_filters: Channels ``F`` of the stream.
        shift: ``"down"`` (the u stream) or ``"down_right"`` (the ul stream).
        num_aux: Auxiliary input channels in multiples of ``F`` (0, 1 or 2).
        dropout: Dropout probability.
    """

    def __init__(self, num_filters: int, shift: str, num_aux: int, dropout: float) -> None:
        super().__init__()
        if shift == "down":
            self.conv_in = DownShiftedConv2d(2 * num_filters, num_filters, (2, 3))
            self.conv_out = DownShiftedConv2d(2 * num_filters, 2 * num_filters, (2, 3))
        elif shift == "down_right":
            self.conv_in = DownRightShiftedConv2d(2 * num_filters, num_filters, (2, 2))
            self.conv_out = DownRightShiftedConv2d(2 * num_filters, 2 * num_filters, (2, 2))
        else:
            raise ValueError(f"shift must be 'down' or 'down_right', got {shift!r}")
        if num_aux < 0:
            raise ValueError(f"num_aux must be non-negative, got {num_aux}")

        self.activation = ConcatELU()
        self.aux_conv = nn.Conv2d(2 * num_aux * num_filters, num_filters, 1) if num_aux > 0 else None
        self.dropout = UniformMaskDropout(dropout)
        with torch.no_grad():
            self.conv_out.weight.mul_(_RESIDUAL_INIT_SCALE)

    def forward(self, x: Tensor, x_act: Tensor | None = None, aux_act: Tensor | None = None) -> Tensor:
        """Update the stream ``x`` of shape ``(B, F, H, W)``.

        Args:
            x: Stream, shape ``(B, F, H, W)``.
            x_act: ``concat_elu(x)``, shape ``(B, 2F, H, W)``, if the caller already has it. It is
                computed here otherwise.
            aux_act: ``concat_elu`` of each auxiliary tensor, concatenated along the channels, shape
                ``(B, 2·num_aux·F, H, W)``, required iff ``num_aux > 0``.

        Returns:
            Updated stream, shape ``(B, F, H, W)``.
        """
        if x_act is None:
            x_act = self.activation(x)
        c = self.conv_in(x_act)
        if self.aux_conv is not None:
            if aux_act is None:
                raise ValueError("this block was built with num_aux > 0 and needs an auxiliary input")
            # In place on the fresh 1×1 output, which saves a tensor; the sum is the same either way.
            c = self.aux_conv(aux_act).add_(c)

        c = self.conv_out(self.dropout(self.activation(c)))

        # Gate without tanh on the value half, as in PixelCNN++.
        value, gate = c.chunk(2, dim=1)
        return torch.addcmul(x, value, torch.sigmoid(gate))


class PixelCNNPlusPlus(nn.Module):
    r"""PixelCNN++ (Salimans et al., 2017, "PixelCNN++: Improving the PixelCNN with Discretized Logistic
    Mixture Likelihood and Other Modifications").

    Two streams avoid the blind spot: ``u`` reads the rows strictly above (built from
    :class:`DownShiftedConv2d`) and ``ul`` reads the rows above and the positions to the left in the
    current row (built from :class:`DownRightShiftedConv2d`, with ``u`` fed in through 1×1 convolutions).
    Both start from the input plus a constant channel of ones, shifted so that no position reads itself.
    The up pass runs ``num_stages`` stages of ``num_blocks`` :class:`GatedResidualBlock` per stream, with a
    stride-2 convolution between stages. The down pass mirrors it: ``num_blocks`` blocks in the first
    stage and ``num_blocks + 1`` in the others, each reading the matching up-pass output through its
    auxiliary input, with stride-2 transposed convolutions between stages. The output is
    ``conv1x1(elu(ul))``.

    Receptive field: the output at ``(i, j)`` reads only positions before ``(i, j)`` in raster order and
    none of the channels at ``(i, j)`` itself, because the mixture models all channels of a position.
    Each convolution at stride ``s`` widens the region by about ``s`` rows and columns, and the two
    streams leave no blind spot. For example, with 3 stages of 1 block the last position of a 7×7 image
    reads every earlier position.

    Odd and small sizes work: a strided convolution maps ``H`` to ``ceil(H / 2)``, and the transposed
    convolution crops back to ``H``, so any ``H, W >= 1`` is accepted.

    Input: ``x`` of shape ``(B, C, H, W)``, bin centres scaled to ``[-1, 1]``.
    Output: ``(B, M·(1 + 2C + C(C - 1)/2), H, W)`` laid out as ``[logits (M) | means (C·M) |
    log-scales (C·M) | coefficients (C(C-1)/2·M)]``, with means and log-scales channel-major.

    Args:
        num_channels: Channels per position ``C``.
        num_components: Mixture components ``M``.
        num_filters: Channels ``F`` of both streams.
        num_blocks: Gated residual blocks per stage in the up pass.
        dropout: Dropout probability inside the residual blocks.
        num_stages: Resolutions, separated by ``num_stages - 1`` stride-2 downsamplings.

    The configuration of the paper for CIFAR-10 is the default: ``PixelCNNPlusPlus(3)`` with 160 filters,
    5 blocks per stage, 3 stages, 10 components and dropout 0.5.

    NOTE: published implementations use weight normalization with data-dependent initialization. This
    one uses plain convolutions with PyTorch's default initialization, and scales the initial weights of
    the last convolution in each block by 0.1.
    """

    def __init__(
        self,
        num_channels: int,
        num_components: int = 10,
        num_filters: int = 160,
        num_blocks: int = 5,
        dropout: float = 0.5,
        num_stages: int = 3,
    ) -> None:
        super().__init__()
        if num_channels < 1:
            raise ValueError(f"num_channels must be at least 1, got {num_channels}")
        if num_components < 1:
            raise ValueError(f"num_components must be at least 1, got {num_components}")
        if num_filters < 1:
            raise ValueError(f"num_filters must be at least 1, got {num_filters}")
        if num_blocks < 0:
            raise ValueError(f"num_blocks must be non-negative, got {num_blocks}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if num_stages < 1:
            raise ValueError(f"num_stages must be at least 1, got {num_stages}")

        self.num_channels = num_channels
        self.num_components = num_components
        self.out_channels = mixture_num_outputs(num_channels, num_components)
        in_channels = num_channels + 1

        # u starts from the two rows above, ul from the row above plus the position to the left.
        self.down_shift = DownShift2d()
        self.right_shift = RightShift2d()
        self.u_input = DownShiftedConv2d(in_channels, num_filters, (2, 3))
        self.ul_input_above = DownShiftedConv2d(in_channels, num_filters, (1, 3))
        self.ul_input_left = DownRightShiftedConv2d(in_channels, num_filters, (2, 1))

        def blocks(shift: str, num_aux: int, count: int) -> nn.ModuleList:
            return nn.ModuleList(
                GatedResidualBlock(num_filters, shift, num_aux, dropout) for _ in range(count)
            )

        self.up_u = nn.ModuleList(blocks("down", 0, num_blocks) for _ in range(num_stages))
        self.up_ul = nn.ModuleList(blocks("down_right", 1, num_blocks) for _ in range(num_stages))
        self.downsample_u = nn.ModuleList(
            DownShiftedConv2d(num_filters, num_filters, (2, 3), stride=2) for _ in range(num_stages - 1)
        )
        self.downsample_ul = nn.ModuleList(
            DownRightShiftedConv2d(num_filters, num_filters, (2, 2), stride=2) for _ in range(num_stages - 1)
        )

        # The extra block in later down stages consumes the downsampled output of the up pass.
        down_counts = [num_blocks] + [num_blocks + 1] * (num_stages - 1)
        self.down_u = nn.ModuleList(blocks("down", 1, count) for count in down_counts)
        self.down_ul = nn.ModuleList(blocks("down_right", 2, count) for count in down_counts)
        self.upsample_u = nn.ModuleList(
            DownShiftedConvTranspose2d(num_filters, num_filters, (2, 3), stride=2)
            for _ in range(num_stages - 1)
        )
        self.upsample_ul = nn.ModuleList(
            DownRightShiftedConvTranspose2d(num_filters, num_filters, (2, 2), stride=2)
            for _ in range(num_stages - 1)
        )

        self.activation = ConcatELU()
        self.output_conv = nn.Conv2d(num_filters, self.out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        """Compute the mixture parameters, ``(B, C, H, W) -> (B, M·(1 + 2C + C(C-1)/2), H, W)``."""
        if x.dim() != 4 or x.shape[1] != self.num_channels:
            raise ValueError(f"expected input of shape (B, {self.num_channels}, H, W), got {tuple(x.shape)}")

        # The ones channel is zero in the padding, which marks where the image ends for the network.
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1)
        u = self.down_shift(self.u_input(x))
        ul = self.down_shift(self.ul_input_above(x)) + self.right_shift(self.ul_input_left(x))

        # Every tensor of the up pass is read through concat_elu, by the next block, by the ul block of
        # the same layer or by the down pass. So each is activated once, and the skips keep activations.
        activation = self.activation
        u_act = activation(u)
        ul_act = activation(ul)
        u_skips: list[Tensor] = [u_act]
        ul_skips: list[Tensor] = [ul_act]
        sizes: list[tuple[int, int]] = []
        num_stages = len(self.up_u)
        for stage in range(num_stages):
            for u_block, ul_block in zip(self.up_u[stage], self.up_ul[stage]):
                u = u_block(u, u_act)
                u_act = activation(u)
                ul = ul_block(ul, ul_act, u_act)
                ul_act = activation(ul)
                u_skips.append(u_act)
                ul_skips.append(ul_act)
            if stage < num_stages - 1:
                sizes.append((u.shape[-2], u.shape[-1]))
                u = self.downsample_u[stage](u)
                ul = self.downsample_ul[stage](ul)
                u_act = activation(u)
                ul_act = activation(ul)
                u_skips.append(u_act)
                ul_skips.append(ul_act)

        # Down pass: consume the skips in reverse order, so each block meets its own resolution. The
        # activation of ul is left to the next block (None), since the upsampling reads ul itself.
        u_act = u_skips.pop()
        ul_act: Tensor | None = ul_skips.pop()
        for stage in range(num_stages):
            for u_block, ul_block in zip(self.down_u[stage], self.down_ul[stage]):
                u = u_block(u, u_act, u_skips.pop())
                u_act = activation(u)
                ul = ul_block(ul, ul_act, torch.cat([u_act, ul_skips.pop()], dim=1))
                ul_act = None
            if stage < num_stages - 1:
                size = sizes.pop()
                u = self.upsample_u[stage](u, size)
                ul = self.upsample_ul[stage](ul, size)
                u_act = activation(u)
                ul_act = None

        return self.output_conv(F.elu(ul))
