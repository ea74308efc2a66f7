"""Cached WaveNet decoding: one queue of past layer inputs per dilated layer, O(layers) products per step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from arflows.generation.common import (
    MixtureStepDecoder,
    StepDecoder,
    decode_categorical_step,
    product_weight,
    tensor_numel,
)
from arflows.nets.wavenet import WaveNet, WaveNetLayer

__all__ = ["WaveNetDecoder"]


@dataclass
class _Layer:
    """The queue, weights and preallocated buffers of one dilated layer.

    The queue has ``slots = (k - 1) d + 1`` slots: slot t mod slots holds the layer input of step t and a
    last channel of ones that carries the bias. The views of every slot are made once, because slicing
    a tensor costs as much as a small product and would otherwise run several times per layer and step.
    """

    dilation: int
    ring: Tensor  # (B, slots, R + 1)
    inputs: list[Tensor]  # per slot: (B, R + 1) with the ones channel
    residuals: list[Tensor]  # per slot: (B, R), the layer input without the ones channel
    pairs: list[Tensor]  # per slot s < slots - 1: slots s and s + 1 as one (B, 2(R + 1)) row (k = 2 only)
    now_weight: Tensor  # (R + 1, 2D): the current-step tap and the bias
    past_weights: list[Tensor]  # (R, 2D) per earlier tap
    pair_weight: Tensor | None  # (2(R + 1), 2D) for k = 2
    residual_weight: Tensor  # (D + 1, R): the residual 1 × 1 convolution and its bias
    pre: Tensor  # (B, 2D) work buffer
    pre_value: Tensor  # (B, D) view of the first half of pre, the tanh argument
    pre_gate: Tensor  # (B, D) view of the second half, the sigmoid argument
    value: Tensor  # (B, D) work buffer
    gate: Tensor  # (B, D) work buffer
    gated: Tensor  # (B, D) view into the decoder's row of gated activations
    gated_with_one: Tensor  # (B, D + 1) the same view with the one that carries the biases


class WaveNetDecoder(StepDecoder):
    r"""Decode a WaveNet flow one step at a time with fixed-size queues (Paine et al., 2016, "Fast Wavenet").

    Layer l with kernel k and dilation d computes its output at step t from its input at steps
    :math:`t, t - d, \dots, t - (k-1) d`. Its inputs of the last :math:`(k-1) d` steps wait in a ring
    buffer of :math:`(k-1) d + 1` slots, so each step costs k small products per layer (one for k = 2)
    and the memory does not depend on the number of steps. The gated activations of all layers are
    gathered in one row, each followed by a one, so that the skip sum and its biases are one product.

    Args:
        net: The WaveNet.
        output: "categorical" or "mixture".
        batch: Batch size B.
        length: Number of steps T.
        num_bins: K.
        num_components: M, for mixture outputs.
    """

    def __init__(
        self, net: WaveNet, output: str, batch: int, length: int, num_bins: int, num_components: int = 0
    ) -> None:
        weight = net.input_conv.weight
        dtype, device = weight.dtype, weight.device
        self.output = output
        self.batch = batch
        self.num_steps = length
        self.num_bins = num_bins
        self.net = net
        self.kernel_size = kernel = net.kernel_size
        self.receptive_field = net.receptive_field
        self.residual_channels = residual_channels = weight.shape[0]
        self.scale = 2.0 / (num_bins - 1)

        # Input convolution on the delayed samples: h_0[t] = b + sum_i w_i x[t - k + i]. The window keeps
        # x[t - k .. t - 1] and a constant one for the bias.
        self.window = torch.zeros(batch, kernel + 1, dtype=dtype, device=device)
        self.input_weight = product_weight(torch.cat([weight[:, 0, :].t(), net.input_conv.bias.unsqueeze(0)]))

        # All gated activations, each layer's block followed by a one: the skip sum is gated @ skip_weight.
        gated_sizes = [layer.dilated_conv.out_channels // 2 for layer in net.layers]
        self.gated = torch.zeros(batch, sum(gated_sizes) + len(gated_sizes), dtype=dtype, device=device)
        offset = 0
        skip_rows = []
        self.layers: list[_Layer] = []
        for layer, size in zip(net.layers, gated_sizes):
            self.gated[:, offset + size] = 1.0
            self.layers.append(self._layer(layer, self.gated[:, offset : offset + size + 1], batch))
            out_weight = layer.output_conv.weight[:, :, 0]  # (R + S, D)
            out_bias = layer.output_conv.bias
            skip_rows.append(
                torch.cat([out_weight[residual_channels:].t(), out_bias[residual_channels:].unsqueeze(0)])
            )
            offset += size + 1
        self.skip_weight = product_weight(torch.cat(skip_rows))

        head = net.head
        self.head_weights = [
            product_weight(head[1].weight[:, :, 0].t()),
            product_weight(head[3].weight[:, :, 0].t()),
        ]
        self.head_biases = [head[1].bias, head[3].bias]
        self.hidden = [
            torch.zeros(batch, w.shape[1], dtype=dtype, device=device)
            for w in [self.skip_weight, *self.head_weights]
        ]
        self.mixture = (
            MixtureStepDecoder(1, num_components, num_bins, dtype, device) if output == "mixture" else None
        )

    def _layer(self, layer: WaveNetLayer, gated_with_one: Tensor, batch: int) -> _Layer:
        conv = layer.dilated_conv
        kernel, residual_channels = self.kernel_size, self.residual_channels
        dilation = conv.dilation[0]
        gated_channels = conv.out_channels // 2
        slots = (kernel - 1) * dilation + 1
        dtype, device = conv.weight.dtype, conv.weight.device
        ring = torch.zeros(batch, slots, residual_channels + 1, dtype=dtype, device=device)
        ring[:, :, residual_channels] = 1.0

        # Tap i reads the input at t - (k - 1 - i) d. The last tap is the current step and adds the bias.
        past = [conv.weight[:, :, tap].t() for tap in range(kernel - 1)]
        now = torch.cat([conv.weight[:, :, kernel - 1].t(), conv.bias.unsqueeze(0)])  # (R + 1, 2D)
        pair_weight = None
        pairs = []
        if kernel == 2:
            # Step t - d sits in the slot after step t's, except when step t's slot is the last one.
            past_with_bias = torch.cat([past[0], torch.zeros_like(now[:1])])
            pair_weight = product_weight(torch.cat([now, past_with_bias]))
            pairs = [ring[:, slot : slot + 2].reshape(batch, -1) for slot in range(slots - 1)]

        out_weight = layer.output_conv.weight[:, :, 0]  # (R + S, D)
        out_bias = layer.output_conv.bias
        residual_weight = torch.cat(
            [out_weight[:residual_channels].t(), out_bias[:residual_channels].unsqueeze(0)]
        )
        pre = torch.zeros(batch, 2 * gated_channels, dtype=dtype, device=device)
        return _Layer(
            dilation=dilation,
            ring=ring,
            inputs=[ring[:, slot] for slot in range(slots)],
            residuals=[ring[:, slot, :residual_channels] for slot in range(slots)],
            pairs=pairs,
            now_weight=product_weight(now),
            past_weights=[product_weight(weight) for weight in past],
            pair_weight=pair_weight,
            residual_weight=product_weight(residual_weight),
            pre=pre,
            pre_value=pre[:, :gated_channels],
            pre_gate=pre[:, gated_channels:],
            value=torch.zeros_like(pre[:, :gated_channels]),
            gate=torch.zeros_like(pre[:, :gated_channels]),
            gated=gated_with_one[:, :gated_channels],
            gated_with_one=gated_with_one,
        )

    @property
    def rings(self) -> list[Tensor]:
        """The queue of every layer, (B, slots, R + 1) each."""
        return [layer.ring for layer in self.layers]

    def cache_numel(self) -> int:
        """Count the elements of the queues and work buffers, which do not depend on the number of steps."""
        buffers = [
            tensor for layer in self.layers for tensor in (layer.ring, layer.pre, layer.value, layer.gate)
        ]
        return tensor_numel(self.window, self.gated, *self.hidden, *buffers)

    def _reset(self) -> None:
        self.window.zero_()
        self.window[:, -1] = 1.0
        for layer in self.layers:
            layer.ring[:, :, : self.residual_channels].zero_()

    def _prefill(self, x: Tensor, start: int) -> None:
        """Fill the queues for step ``start`` from the scaled samples x (B, 1, start) with parallel passes.

        The layer inputs at steps start - (k-1)d .. start - 1 depend on at most the last receptive-field
        samples, so the network runs on that window only (from step 0 when start is shorter).
        """
        self._reset()
        kernel = self.kernel_size
        first = max(0, start - self.receptive_field)
        for offset in range(1, min(kernel, start) + 1):
            self.window[:, kernel - offset] = x[:, 0, start - offset]

        net = self.net
        h = net.input_conv(net.delay(x[:, :, first:start]))  # (B, R, start - first)
        for module, layer in zip(net.layers, self.layers):
            slots = layer.ring.shape[1]
            for step in range(max(first, start - (kernel - 1) * layer.dilation), start):
                layer.residuals[step % slots].copy_(h[:, :, step - first])
            h, _ = module(h)

    def run(self, z: Tensor, q: Tensor, start: int) -> None:
        """Decode steps ``start .. T - 1`` of z (B, 1, T) into q (B, 1, T), given q before ``start``."""
        if start == 0:
            self._reset()
        else:
            self._prefill(q[:, :, :start].to(self.window.dtype) * self.scale - 1.0, start)

        kernel = self.kernel_size
        window = self.window
        layers = self.layers
        last = len(layers) - 1
        input_weight = self.input_weight
        skip_weight = self.skip_weight
        head_weight_1, head_weight_2 = self.head_weights
        head_bias_1, head_bias_2 = self.head_biases
        skip_sum, hidden, params = self.hidden
        first_layer = layers[0]
        first_slots = first_layer.ring.shape[1]
        mixture = self.mixture
        z_steps = z[:, 0, :].t().contiguous().unsqueeze(-1)  # (T, B, 1)
        q_steps = q[:, 0, :]  # (B, T), a view
        newest = window[:, kernel - 1 : kernel]
        older, newer = window[:, : kernel - 1], window[:, 1:kernel]

        for t in range(start, self.num_steps):
            # Layer 0's input at step t.
            torch.mm(window, input_weight, out=first_layer.residuals[t % first_slots])

            for index, layer in enumerate(layers):
                slots = len(layer.inputs)
                slot = t % slots
                pre = layer.pre
                if layer.pair_weight is not None and slot + 1 < slots:
                    torch.mm(layer.pairs[slot], layer.pair_weight, out=pre)
                else:
                    torch.mm(layer.inputs[slot], layer.now_weight, out=pre)
                    for tap, past_weight in enumerate(layer.past_weights):
                        past = layer.residuals[(t - (kernel - 1 - tap) * layer.dilation) % slots]
                        pre.addmm_(past, past_weight)
                torch.tanh(layer.pre_value, out=layer.value)
                torch.sigmoid(layer.pre_gate, out=layer.gate)
                torch.mul(layer.value, layer.gate, out=layer.gated)
                if index < last:
                    # h_{l+1}[t] = h_l[t] + residual(z_l[t]), written straight into the next layer's queue.
                    following = layers[index + 1]
                    torch.addmm(
                        layer.residuals[slot],
                        layer.gated_with_one,
                        layer.residual_weight,
                        out=following.residuals[t % len(following.inputs)],
                    )

            torch.mm(self.gated, skip_weight, out=skip_sum).relu_()
            torch.addmm(head_bias_1, skip_sum, head_weight_1, out=hidden).relu_()
            torch.addmm(head_bias_2, hidden, head_weight_2, out=params)

            if mixture is None:
                bins = decode_categorical_step(z_steps[t], params)  # (B, 1)
                value = bins.to(window.dtype) * self.scale - 1.0
            else:
                bins, value = mixture(z_steps[t], params)
            q_steps[:, t : t + 1] = bins

            # Shift the sample window to x[t - k + 1 .. t].
            if kernel == 2:
                older.copy_(newer)
            elif kernel > 2:
                older.copy_(newer.clone())
            newest.copy_(value)
