"""Cached decoding of PixelCNN and gated PixelCNN, one sub-pixel per step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from arflows.generation.common import StepDecoder, decode_categorical_step, product_weight, tensor_numel
from arflows.nets.layers import channel_groups
from arflows.nets.pixelcnn import GatedPixelCNN, PixelCNN

__all__ = ["GatedPixelCNNDecoder", "PixelCNNDecoder", "group_bounds"]


def group_bounds(num_channels: int, num_groups: int) -> list[tuple[int, int]]:
    """Return the contiguous channel range [start, stop) of each sub-pixel group (see ``channel_groups``)."""
    groups = channel_groups(num_channels, num_groups).tolist()
    return [(groups.index(group), len(groups) - groups[::-1].index(group)) for group in range(num_groups)]


def _row_weight(weight: Tensor, rows: Tensor) -> Tensor:
    """Turn the kernel row (out, in, kw) into the (kw·in, out') matrix of a channels-last row window."""
    selected = weight[rows]  # (out', in, kw)
    return product_weight(selected.permute(0, 2, 1).reshape(len(rows), -1).t())


def _with_bias_row(weight: Tensor, bias: Tensor) -> Tensor:
    """Stack the bias as row 0 above weight (in, out), for inputs whose column 0 is a constant one."""
    return product_weight(torch.cat([bias.unsqueeze(0), weight]))


def _band_conv(
    cache: Tensor, first_row: int, num_rows: int, weight: Tensor, bias: Tensor, out: Tensor
) -> None:
    """Convolve rows [first_row, first_row + num_rows) of a channels-last cache into one output row.

    Args:
        cache: (B, H', W', C_in), padded so that the output width is W' - kw + 1.
        weight: (C_out, C_in, num_rows, kw).
        bias: (C_out,).
        out: (B, W, C_out), written in place.
    """
    band = cache[:, first_row : first_row + num_rows].permute(0, 3, 1, 2)  # (B, C_in, rows, W')
    result = F.conv2d(band, weight, bias)  # (B, C_out, 1, W)
    out.copy_(result[:, :, 0].permute(0, 2, 1))


class PixelCNNDecoder(StepDecoder):
    r"""Decode a :class:`~arflows.nets.PixelCNN` flow one sub-pixel at a time.

    The hidden channels of every layer form one group per sub-pixel. Group g at position p becomes final
    when sub-pixel g - 1 of p is decoded, so step (p, g) computes exactly group g of every layer at p.
    A masked k × k convolution splits into two parts. The rows above contribute to a whole row through
    one batched convolution at the start of the row. The current row contributes its k // 2 + 1 positions
    up to p, a contiguous window of a channels-last cache. Only the inputs of the k × k convolutions are
    cached at every position, because the 1 × 1 layers read the current position only.

    Args:
        net: The network.
        batch: B.
        height: H.
        width: W.
        num_bins: K.
    """

    def __init__(self, net: PixelCNN, batch: int, height: int, width: int, num_bins: int) -> None:
        weight = net.input_conv.weight
        dtype, device = weight.dtype, weight.device
        channels = net.num_channels
        filters = net.input_conv.out_channels
        bottleneck = filters // 2
        self.batch, self.height, self.width = batch, height, width
        self.channels = channels
        self.num_bins = num_bins
        self.num_steps = height * width * channels
        self.filter_groups = group_bounds(filters, channels)
        self.bottleneck_groups = group_bounds(bottleneck, channels) if net.blocks else []
        self.first_reach = first = net.first_kernel_size // 2
        self.reach = reach = net.kernel_size // 2

        def zeros(*shape: int) -> Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        # Canvas of scaled inputs, channels-last, with `first` rows on top and columns on both sides.
        self.canvas = zeros(batch, height + first, width + 2 * first, channels)

        masked = net.input_conv.masked_weight()
        self.input_top = masked[:, :, :first, :].contiguous()
        self.input_bias = net.input_conv.bias
        self.input_row = [
            _row_weight(masked[:, :, first, : first + 1], torch.arange(start, stop))
            for start, stop in self.filter_groups
        ]
        self.input_above = zeros(batch, width, filters)

        # Per position: the residual stream after each block, and each block's (1, conv output) row.
        self.streams = [zeros(batch, filters) for _ in range(len(net.blocks) + 1)]
        self.blocks = []
        for block in net.blocks:
            down = block.down.masked_weight()[:, :, 0, 0]  # (F/2, F)
            conv = block.conv.masked_weight()  # (F/2, F/2, k, k)
            up = block.up.masked_weight()[:, :, 0, 0]  # (F, F/2)
            state = {
                "down": [],
                "down_bias": [],
                "conv_row": [],
                "up": [],
                "conv_top": conv[:, :, :reach, :].contiguous(),
                "conv_bias": block.conv.bias,
                "above": zeros(batch, width, bottleneck),
                # Rectified bottleneck activations, padded like the input canvas for the k × k window.
                "cache": zeros(batch, height + reach, width + 2 * reach, bottleneck),
                "conv_out": zeros(batch, 1 + bottleneck),
            }
            state["conv_out"][:, 0] = 1.0
            for (start, stop), (low, high) in zip(self.filter_groups, self.bottleneck_groups):
                state["down"].append(product_weight(down[low:high, :stop].t()))
                state["down_bias"].append(block.down.bias[low:high])
                state["conv_row"].append(_row_weight(conv[:, :, reach, : reach + 1], torch.arange(low, high)))
                state["up"].append(_with_bias_row(up[start:stop, :high].t(), block.up.bias[start:stop]))
            self.blocks.append(state)

        hidden = net.head[1].masked_weight()[:, :, 0, 0]  # (F, F)
        logits = net.head[3].masked_weight()[:, :, 0, 0]  # (C·K, F)
        self.head_hidden = zeros(batch, filters)
        self.head = []
        for group, (start, stop) in enumerate(self.filter_groups):
            rows = slice(group * num_bins, (group + 1) * num_bins)
            self.head.append(
                (
                    product_weight(hidden[start:stop, :stop].t()),
                    net.head[1].bias[start:stop],
                    product_weight(logits[rows, :stop].t()),
                    net.head[3].bias[rows],
                )
            )

    def cache_numel(self) -> int:
        """Count the elements of the canvas, the caches and the per-position buffers."""
        tensors = [self.canvas, self.input_above, self.head_hidden, *self.streams]
        for state in self.blocks:
            tensors += [state["above"], state["cache"], state["conv_out"]]
        return tensor_numel(*tensors)

    def _start_row(self, row: int) -> None:
        """Compute the contribution of the rows above ``row`` to every masked k × k convolution."""
        _band_conv(self.canvas, row, self.first_reach, self.input_top, self.input_bias, self.input_above)
        for state in self.blocks:
            if self.reach > 0:
                _band_conv(
                    state["cache"], row, self.reach, state["conv_top"], state["conv_bias"], state["above"]
                )
            else:
                state["above"].copy_(state["conv_bias"].expand_as(state["above"]))

    def run(self, z: Tensor, q: Tensor, start: int) -> None:
        """Decode steps ``start ..`` of z (B, C, H, W) into q, conditioning on the steps before ``start``."""
        batch, height, width, channels = self.batch, self.height, self.width, self.channels
        first, reach = self.first_reach, self.reach
        scale = 2.0 / (self.num_bins - 1)
        canvas = self.canvas
        canvas[:, first:, first : first + width, :] = q.permute(0, 2, 3, 1).to(canvas.dtype) * scale - 1.0

        streams = self.streams
        blocks = self.blocks
        head_hidden = self.head_hidden
        z_steps = z.permute(2, 3, 1, 0).contiguous().unsqueeze(-1)  # (H, W, C, B, 1)

        # A step inside a position also recomputes the position's earlier sub-pixels, whose features the
        # per-position buffers no longer hold, with their bins taken from q.
        first_position = start // channels
        first_row = first_position // width
        for row in range(first_row, height):
            self._start_row(row)
            first_column = first_position % width if row == first_row else 0
            for column in range(first_column, width):
                for group, (begin, end) in enumerate(self.filter_groups):
                    # Sub-pixels decoded at this position change the window, so it is read again.
                    window = canvas[:, row + first, column : column + first + 1].reshape(batch, -1)
                    torch.addmm(
                        self.input_above[:, column, begin:end],
                        window,
                        self.input_row[group],
                        out=streams[0][:, begin:end],
                    )
                    for index, state in enumerate(blocks):
                        low, high = self.bottleneck_groups[group]
                        stream = streams[index]
                        reduced = torch.addmm(
                            state["down_bias"][group], F.relu(stream[:, :end]), state["down"][group]
                        )
                        cache = state["cache"]
                        torch.clamp(reduced, min=0.0, out=cache[:, row + reach, column + reach, low:high])
                        conv_window = cache[:, row + reach, column : column + reach + 1].reshape(batch, -1)
                        convolved = torch.addmm(
                            state["above"][:, column, low:high], conv_window, state["conv_row"][group]
                        )
                        conv_out = state["conv_out"]
                        torch.clamp(convolved, min=0.0, out=conv_out[:, 1 + low : 1 + high])
                        torch.addmm(
                            stream[:, begin:end],
                            conv_out[:, : 1 + high],
                            state["up"][group],
                            out=streams[index + 1][:, begin:end],
                        )

                    hidden_weight, hidden_bias, logit_weight, logit_bias = self.head[group]
                    hidden = torch.addmm(hidden_bias, F.relu(streams[-1][:, :end]), hidden_weight)
                    torch.clamp(hidden, min=0.0, out=head_hidden[:, begin:end])
                    logits = torch.addmm(logit_bias, head_hidden[:, :end], logit_weight)

                    step = (row * width + column) * channels + group
                    if step < start:
                        continue
                    bins = decode_categorical_step(z_steps[row, column, group], logits)  # (B, 1)
                    q[:, group, row, column] = bins[:, 0]
                    canvas[:, row + first, column + first, group] = bins[:, 0].to(canvas.dtype) * scale - 1.0


class GatedPixelCNNDecoder(StepDecoder):
    r"""Decode a :class:`~arflows.nets.GatedPixelCNN` flow one sub-pixel at a time.

    The vertical stack of row r reads only rows above r, so it is computed a whole row at a time, with
    one batched convolution per layer, when row r starts. So is each layer's 1 × 1 link into the
    horizontal stack. The horizontal stack then needs, at step (p, g), channel group g of every layer
    at p: a product of the k // 2 + 1 positions up to p in the current row, the gate, and the masked
    1 × 1 output.

    Args:
        net: The network.
        batch: B.
        height: H.
        width: W.
        num_bins: K.
    """

    def __init__(self, net: GatedPixelCNN, batch: int, height: int, width: int, num_bins: int) -> None:
        weight = net.vertical_input.weight
        dtype, device = weight.dtype, weight.device
        channels = net.num_channels
        filters = weight.shape[0] // 2
        self.batch, self.height, self.width = batch, height, width
        self.channels = channels
        self.num_bins = num_bins
        self.num_steps = height * width * channels
        self.filters = filters
        self.filter_groups = group_bounds(filters, channels)
        self.reach = reach = net.kernel_size // 2
        num_layers = len(net.blocks) + 1

        def zeros(*shape: int) -> Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        # Channel order that puts the value and gate channels of each group next to each other, so that a
        # group's pre-activations are one contiguous slice [2·start, 2·stop).
        order = torch.cat(
            [
                torch.cat([torch.arange(start, stop), torch.arange(filters + start, filters + stop)])
                for start, stop in self.filter_groups
            ]
        )

        # Canvas of [x, ones], channels-last, with reach + 1 rows on top (the vertical stack reads the
        # input shifted down by one row) and reach columns on both sides.
        self.canvas = zeros(batch, height + reach + 1, width + 2 * reach, channels + 1)
        self.canvas[:, reach + 1 :, reach : reach + width, channels] = 1.0

        self.vertical_weights = [net.vertical_input.weight] + [
            block.vertical_conv.weight for block in net.blocks
        ]
        self.vertical_biases = [net.vertical_input.bias] + [block.vertical_conv.bias for block in net.blocks]
        links = [net.input_link] + [block.link for block in net.blocks]
        horizontal = [net.horizontal_input] + [block.horizontal_conv for block in net.blocks]
        self.link_weights = [link.weight[order, :, 0, 0].t().contiguous() for link in links]
        self.link_biases = [(link.bias + conv.bias)[order] for link, conv in zip(links, horizontal)]
        self.links = [zeros(batch, width, 2 * filters) for _ in range(num_layers)]
        # Gated vertical stacks, NCHW with reach rows on top and reach columns on both sides.
        self.verticals = [
            zeros(batch, filters, height + reach, width + 2 * reach) for _ in range(num_layers - 1)
        ]

        # Horizontal row weights per group. The input layer's get zero rows for the ones channel.
        input_weight = net.horizontal_input.masked_weight()[:, :, 0, :]  # (2F, C, k // 2 + 1)
        input_weight = torch.cat([input_weight, torch.zeros_like(input_weight[:, :1])], dim=1)
        self.horizontal_rows = [
            [_row_weight(input_weight, self._group_rows(order, g)) for g in range(channels)]
        ]
        for block in net.blocks:
            block_weight = block.horizontal_conv.masked_weight()[:, :, 0, :]  # (2F, F, k // 2 + 1)
            self.horizontal_rows.append(
                [_row_weight(block_weight, self._group_rows(order, g)) for g in range(channels)]
            )

        self.outputs = []
        for block in net.blocks:
            out = block.horizontal_out.masked_weight()[:, :, 0, 0]  # (F, F)
            self.outputs.append(
                [
                    _with_bias_row(out[start:stop, :stop].t(), block.horizontal_out.bias[start:stop])
                    for start, stop in self.filter_groups
                ]
            )
        self.gated = [zeros(batch, 1 + filters) for _ in net.blocks]
        for buffer in self.gated:
            buffer[:, 0] = 1.0
        # Horizontal stacks, channels-last, with reach columns on the left.
        self.horizontals = [zeros(batch, height, width + reach, filters) for _ in range(num_layers)]

        hidden = net.head[1].masked_weight()[:, :, 0, 0]
        logits = net.head[3].masked_weight()[:, :, 0, 0]
        self.head_hidden = zeros(batch, filters)
        self.head = []
        for group, (start, stop) in enumerate(self.filter_groups):
            rows = slice(group * num_bins, (group + 1) * num_bins)
            self.head.append(
                (
                    product_weight(hidden[start:stop, :stop].t()),
                    net.head[1].bias[start:stop],
                    product_weight(logits[rows, :stop].t()),
                    net.head[3].bias[rows],
                )
            )

    def _group_rows(self, order: Tensor, group: int) -> Tensor:
        start, stop = self.filter_groups[group]
        return order[2 * start : 2 * stop]

    def cache_numel(self) -> int:
        """Count the elements of the canvas, the stacks, the links and the per-position buffers."""
        return tensor_numel(
            self.canvas, self.head_hidden, *self.links, *self.verticals, *self.horizontals, *self.gated
        )

    def _start_row(self, row: int) -> None:
        """Compute the vertical stack of ``row`` and its links into the horizontal stack."""
        reach, filters = self.reach, self.filters
        band = self.canvas[:, row : row + reach + 1].permute(
            0, 3, 1, 2
        )  # (B, C + 1, k // 2 + 1, W + 2·reach)
        for layer, (weight, bias) in enumerate(zip(self.vertical_weights, self.vertical_biases)):
            if layer > 0:
                band = self.verticals[layer - 1][:, :, row : row + reach + 1]
            pre = F.conv2d(band, weight, bias)[:, :, 0].permute(0, 2, 1)  # (B, W, 2F)
            torch.addmm(
                self.link_biases[layer],
                pre.reshape(-1, 2 * filters),
                self.link_weights[layer],
                out=self.links[layer].view(-1, 2 * filters),
            )
            if layer < len(self.verticals):
                gated = torch.tanh(pre[:, :, :filters]) * torch.sigmoid(pre[:, :, filters:])
                self.verticals[layer][:, :, row + reach, reach : reach + self.width] = gated.permute(0, 2, 1)

    def run(self, z: Tensor, q: Tensor, start: int) -> None:
        """Decode steps ``start ..`` of z (B, C, H, W) into q, conditioning on the steps before ``start``."""
        batch, height, width, channels = self.batch, self.height, self.width, self.channels
        reach = self.reach
        scale = 2.0 / (self.num_bins - 1)
        canvas = self.canvas
        canvas[:, reach + 1 :, reach : reach + width, :channels] = (
            q.permute(0, 2, 3, 1).to(canvas.dtype) * scale - 1.0
        )

        horizontals = self.horizontals
        links = self.links
        head_hidden = self.head_hidden
        layers = list(zip(self.horizontal_rows[1:], self.outputs, self.gated))
        z_steps = z.permute(2, 3, 1, 0).contiguous().unsqueeze(-1)  # (H, W, C, B, 1)

        first_position = start // channels
        first_row = first_position // width
        for row in range(first_row, height):
            self._start_row(row)
            canvas_row = canvas[:, row + reach + 1]
            first_column = first_position % width if row == first_row else 0
            for column in range(first_column, width):
                for group, (begin, end) in enumerate(self.filter_groups):
                    size = end - begin
                    window = canvas_row[:, column : column + reach + 1].reshape(batch, -1)
                    pre = torch.addmm(
                        links[0][:, column, 2 * begin : 2 * end], window, self.horizontal_rows[0][group]
                    )
                    torch.mul(
                        torch.tanh(pre[:, :size]),
                        torch.sigmoid(pre[:, size:]),
                        out=horizontals[0][:, row, column + reach, begin:end],
                    )
                    for index, (rows, outputs, gated) in enumerate(layers):
                        stream = horizontals[index][:, row]
                        pre = torch.addmm(
                            links[index + 1][:, column, 2 * begin : 2 * end],
                            stream[:, column : column + reach + 1].reshape(batch, -1),
                            rows[group],
                        )
                        torch.mul(
                            torch.tanh(pre[:, :size]),
                            torch.sigmoid(pre[:, size:]),
                            out=gated[:, 1 + begin : 1 + end],
                        )
                        torch.addmm(
                            stream[:, column + reach, begin:end],
                            gated[:, : 1 + end],
                            outputs[group],
                            out=horizontals[index + 1][:, row, column + reach, begin:end],
                        )

                    hidden_weight, hidden_bias, logit_weight, logit_bias = self.head[group]
                    hidden = torch.addmm(
                        hidden_bias, F.relu(horizontals[-1][:, row, column + reach, :end]), hidden_weight
                    )
                    torch.clamp(hidden, min=0.0, out=head_hidden[:, begin:end])
                    logits = torch.addmm(logit_bias, head_hidden[:, :end], logit_weight)

                    step = (row * width + column) * channels + group
                    if step < start:
                        continue
                    bins = decode_categorical_step(z_steps[row, column, group], logits)  # (B, 1)
                    q[:, group, row, column] = bins[:, 0]
                    canvas_row[:, column + reach, group] = bins[:, 0].to(canvas.dtype) * scale - 1.0
