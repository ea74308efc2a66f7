"""WaveNet: causal dilated convolutions over a sequence of scaled samples."""

from __future__ import annotations

from torch import Tensor, nn

from arflows.nets.layers import CausalConv1d, Delay1d, GatedActivation, UniformMaskDropout

__all__ = ["WaveNet", "WaveNetLayer"]


class WaveNetLayer(nn.Module):
    r"""Residual layer of WaveNet (van den Oord et al., 2016, "WaveNet").

    ``z = tanh(W_f * x) · sigmoid(W_g * x)`` with a dilated :class:`CausalConv1d` producing both halves,
    then one 1×1 convolution splits ``z`` into the residual update (added to ``x``) and the skip output.
    The output at ``t`` reads ``x`` at ``t - (k - 1)·d .. t``.

    Args:
        residual_channels: Channels ``R`` of the residual stream.
        dilation_channels: Channels ``D`` of the gated activation.
        skip_channels: Channels ``S`` of the skip output.
        kernel_size: Kernel size ``k``.
        dilation: Dilation ``d``.
        dropout: Dropout probability on ``z``.
    """

    def __init__(
        self,
        residual_channels: int,
        dilation_channels: int,
        skip_channels: int,
        kernel_size: int,
        dilation: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.residual_channels = residual_channels
        self.dilated_conv = CausalConv1d(residual_channels, 2 * dilation_channels, kernel_size, dilation)
        self.gate = GatedActivation()
        self.dropout = UniformMaskDropout(dropout)
        # One 1×1 convolution for both outputs saves a kernel launch per layer.
        self.output_conv = nn.Conv1d(dilation_channels, residual_channels + skip_channels, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return the updated stream ``(B, R, T)`` and the skip output ``(B, S, T)``."""
        z = self.dropout(self.gate(self.dilated_conv(x)))
        out = self.output_conv(z)
        residual, skip = out.split([self.residual_channels, out.shape[1] - self.residual_channels], dim=1)
        return x + residual, skip


class WaveNet(nn.Module):
    r"""WaveNet for discrete sequences (van den Oord et al., 2016, "WaveNet: A Generative Model for Raw
    Audio").

    The input is delayed by one step (:class:`Delay1d`) and passed through a causal convolution of size
    ``k`` to ``R`` channels. Then ``num_cycles`` cycles of ``num_layers`` :class:`WaveNetLayer` follow, with
    dilations ``1, 2, 4, ..., 2^(num_layers - 1)`` in each cycle. The skip outputs are summed and go through
    ReLU, 1×1, ReLU, 1×1 to ``num_outputs`` channels (``K`` logits, or ``3M`` mixture parameters).

    Receptive field: the output at ``t`` reads exactly the steps ``t - receptive_field .. t - 1`` (fewer
    near the start, where the padding is zero), with
    ``receptive_field = (k - 1) · (1 + num_cycles · (2^num_layers - 1)) + 1``.

    Input: ``x`` of shape ``(B, 1, T)``, bin centres scaled to ``[-1, 1]``, any ``T >= 1``.
    Output: ``(B, num_outputs, T)``.

    Args:
        num_outputs: Output channels per step.
        residual_channels: Channels ``R`` of the residual stream.
        dilation_channels: Channels of each gated activation.
        skip_channels: Channels ``S`` of the skip outputs and of the head.
        num_layers: Layers per cycle, whose dilations double from 1 to ``2^(num_layers - 1)``.
        num_cycles: Repetitions of the dilation cycle.
        kernel_size: Kernel size ``k`` of every causal convolution.
        dropout: Dropout probability on the gated activations.
    """

    def __init__(
        self,
        num_outputs: int,
        residual_channels: int = 64,
        dilation_channels: int = 64,
        skip_channels: int = 128,
        num_layers: int = 10,
        num_cycles: int = 2,
        kernel_size: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for name, value in [
            ("num_outputs", num_outputs),
            ("residual_channels", residual_channels),
            ("dilation_channels", dilation_channels),
            ("skip_channels", skip_channels),
            ("num_layers", num_layers),
            ("num_cycles", num_cycles),
            ("kernel_size", kernel_size),
        ]:
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")

        self.out_channels = num_outputs
        self.num_layers = num_layers
        self.num_cycles = num_cycles
        self.kernel_size = kernel_size

        self.delay = Delay1d(1)
        self.input_conv = CausalConv1d(1, residual_channels, kernel_size)
        self.layers = nn.ModuleList(
            WaveNetLayer(residual_channels, dilation_channels, skip_channels, kernel_size, 2**layer, dropout)
            for _ in range(num_cycles)
            for layer in range(num_layers)
        )
        self.head = nn.Sequential(
            nn.ReLU(),
            nn.Conv1d(skip_channels, skip_channels, 1),
            nn.ReLU(),
            nn.Conv1d(skip_channels, num_outputs, 1),
        )

    @property
    def receptive_field(self) -> int:
        """Past steps that the output at ``t`` reads.

        Equal to ``(kernel_size - 1)·(1 + num_cycles·(2^num_layers - 1)) + 1``.
        """
        dilation_sum = self.num_cycles * (2**self.num_layers - 1)
        return (self.kernel_size - 1) * (1 + dilation_sum) + 1

    def forward(self, x: Tensor) -> Tensor:
        """Compute the parameters, ``(B, 1, T) -> (B, num_outputs, T)``."""
        if x.dim() != 3 or x.shape[1] != 1:
            raise ValueError(f"expected input of shape (B, 1, T), got {tuple(x.shape)}")

        h = self.input_conv(self.delay(x))
        skips = None
        for layer in self.layers:
            h, skip = layer(h)
            skips = skip if skips is None else skips + skip
        return self.head(skips)
