"""Cached PixelCNN++ decoding: the u stream a row at a time, the ul stream one position per step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from arflows.generation.common import (
    MixtureStepDecoder,
    StepDecoder,
    concat_elu_into,
    product_weight,
    tensor_numel,
)
from arflows.nets.pixelcnn_pp import GatedResidualBlock, PixelCNNPlusPlus

__all__ = ["PixelCNNPlusPlusDecoder"]


class _Grid:
    """Views of one position of a contiguous channels-last tensor (B, ..., ch), one as_strided call each.

    The ul stream takes a dozen such views per block and step. Subscripting, as in ``x[:, i, j:j + 2]``,
    took 3 to 7 microseconds per view against 3 for as_strided (torch 2.13, 2-core AMD EPYC VM), about
    as long as one of the small products of a step.
    """

    def __init__(self, tensor: Tensor) -> None:
        if not tensor.is_contiguous():
            raise ValueError("a grid needs a contiguous tensor")
        self.tensor = tensor
        self.strides = tensor.stride()[1:-1]
        self.batch_stride = tensor.stride(0)
        self.batch, self.channels = tensor.shape[0], tensor.shape[-1]
        self.offset = tensor.storage_offset()

    def _offset(self, indices: tuple[int, ...]) -> int:
        return self.offset + sum(index * stride for index, stride in zip(indices, self.strides))

    def at(self, *indices: int) -> Tensor:
        """Return the channels of one position, (B, ch)."""
        return self.tensor.as_strided(
            (self.batch, self.channels), (self.batch_stride, 1), self._offset(indices)
        )

    def pair(self, *indices: int) -> Tensor:
        """Return the channels of a position and of the next one along the last spatial axis, (B, 2·ch)."""
        return self.tensor.as_strided(
            (self.batch, 2 * self.channels), (self.batch_stride, 1), self._offset(indices)
        )

    def halves(self, *indices: int) -> Tensor:
        """Return the two channel halves of one position as (2, B, ch / 2), the layout of [x, -x]."""
        half = self.channels // 2
        return self.tensor.as_strided(
            (2, self.batch, half), (half, self.batch_stride, 1), self._offset(indices)
        )


@dataclass
class _Map:
    """One tensor of a stream at one resolution, cached as concat_elu activations, raw values or both.

    u-stream caches are NCHW of shape (B, ch, H_s + 1, W_s + 2), with image position (i, j) at
    [i + 1, j + 1]: one zero row on top and one zero column on each side, the padding of the (2, 3)
    down-shifted convolutions. ul-stream caches are channels-last of shape (B, H_s + 1, W_s + 1, ch), with
    (i, j) at [i + 1, j + 1]: the padding of the (2, 2) down-right-shifted convolutions.
    """

    level: int
    need_act: bool = False
    need_raw: bool = False
    act: Tensor | None = None
    raw: Tensor | None = None
    act_grid: _Grid | None = None  # channels-last (ul-stream) maps only
    raw_grid: _Grid | None = None


@dataclass
class _UBlock:
    """A u-stream residual block, computed a whole row at a time with batched convolutions."""

    module: GatedResidualBlock
    source: _Map
    target: _Map
    skip: _Map | None
    hidden: Tensor  # concat_elu of the block's intermediate c, NCHW like the u maps


@dataclass
class _ULBlock:
    """A ul-stream residual block, computed one position per step from row windows of its caches."""

    source: _Map
    target: _Map
    aux: _Map  # the u map whose activations feed the auxiliary 1 × 1 convolution
    skip: _Map | None  # the ul skip of a down-pass block
    hidden: Tensor  # concat_elu of the block's intermediate c, channels-last like the ul maps
    in_top: Tensor  # (2·2F, F): kernel row 0 of conv_in, for the windows of the row above
    in_bottom: Tensor  # (2·2F, F): kernel row 1 of conv_in, for the current row
    out_top: Tensor  # (2·2F, 2F)
    out_bottom: Tensor  # (2·2F, 2F)
    aux_weight: Tensor  # (2F, F), the u part of the auxiliary convolution
    skip_weight: Tensor | None  # (2F, F), the ul-skip part of a down-pass block
    in_bias: Tensor  # conv_in bias plus auxiliary bias, (F,)
    out_bias: Tensor  # (2F,)
    in_above: Tensor  # (B, W_s, F): bias, auxiliary term and row-above term of c
    out_above: Tensor  # (B, W_s, 2F): bias and row-above term of conv_out
    hidden_grid: _Grid
    in_grid: _Grid
    out_grid: _Grid


def _top_weight(weight: Tensor) -> Tensor:
    """Kernel row 0 of a (out, in, 2, kw) weight as a (in·kw, out) matrix for unfolded windows (in, kw)."""
    return weight[:, :, 0, :].reshape(weight.shape[0], -1).t().contiguous()


def _bottom_weight(weight: Tensor) -> Tensor:
    """Kernel row 1 of a (out, in, 2, kw) weight as a (kw·in, out) matrix for channels-last windows."""
    return product_weight(weight[:, :, 1, :].permute(0, 2, 1).reshape(weight.shape[0], -1).t())


def _row_windows(row: Tensor, step: int) -> Tensor:
    """Unfold pairs of columns of a channels-last row (B, W', ch) into (B·W_out, ch·2) windows."""
    windows = row.unfold(1, 2, step)  # (B, W_out, ch, 2)
    return windows.reshape(-1, windows.shape[2] * 2)


class PixelCNNPlusPlusDecoder(StepDecoder):
    r"""Decode a :class:`~arflows.nets.PixelCNNPlusPlus` flow one pixel per step.

    Every feature is computed once, at the step at which the last input it depends on is decoded
    (Ramachandran et al., 2017, "Fast Generation for Convolutional Autoregressive Models", organized by
    rows). At resolution level s (stride 2^s):

    - The u stream of level row i reads only the image rows above 2^s·i, so the whole level row is
      computed by batched convolutions when image row 2^s·i starts, in the order of the forward pass:
      up levels 0 .. s, then down levels s .. 0.
    - The ul stream at level position (i, j) is final once image position (2^s·i, 2^s·j) is the next one
      to decode. Its (2, 2) convolutions split into the row above, whose terms for the whole level row
      are batched at the row start together with the biases and the u-stream auxiliary terms, and the
      two current-row positions, a contiguous window of a channels-last cache.
    - Strided convolutions read the finer level at the matching positions. The transposed ones give
      fine position (i, j) from coarse position (i // 2, j // 2) with kernel tap (i mod 2, j mod 2) in
      the ul stream, and fine row i from coarse row i // 2 with kernel row i mod 2 in the u stream.

    The caches hold every level position, as a forward pass holds its activations, so a run can resume
    at any step (see :meth:`StepDecoder.run`) and the memory is fixed by the batch and image size.

    The mixture parameters of each pixel then decode its channels with
    :class:`~arflows.generation.common.MixtureStepDecoder`.

    Args:
        net: The network.
        batch: B.
        height: H.
        width: W.
        num_bins: K.
    """

    def __init__(self, net: PixelCNNPlusPlus, batch: int, height: int, width: int, num_bins: int) -> None:
        weight = net.u_input.weight
        self.dtype, self.device = weight.dtype, weight.device
        self.net = net
        self.batch, self.height, self.width = batch, height, width
        self.channels = net.num_channels
        self.num_components = net.num_components
        self.num_bins = num_bins
        self.num_steps = height * width
        self.filters = filters = weight.shape[0]
        self.num_stages = num_stages = len(net.up_u)
        num_blocks = len(net.up_u[0])
        self.sizes = [(height, width)]
        for _ in range(num_stages - 1):
            previous_height, previous_width = self.sizes[-1]
            self.sizes.append(((previous_height - 1) // 2 + 1, (previous_width - 1) // 2 + 1))
        self.mixture = MixtureStepDecoder(
            self.channels, self.num_components, num_bins, self.dtype, self.device
        )

        # Canvas of [x, ones], NCHW, with 2 rows on top (u starts from the rows above the row above) and
        # one column on each side.
        self.canvas = self._zeros(batch, self.channels + 1, height + 2, width + 2)
        self.canvas[:, self.channels, 2:, 1 : width + 1] = 1.0

        # Build the maps and blocks in the order of the forward pass, with the same skip stacks.
        self.up_u_maps: list[list[_Map]] = []
        self.up_ul_maps: list[list[_Map]] = []
        u_skips: list[_Map] = []
        ul_skips: list[_Map] = []
        for level in range(num_stages):
            u_maps = [_Map(level, need_act=True) for _ in range(num_blocks + 1)]
            ul_maps = [_Map(level, need_act=True) for _ in range(num_blocks + 1)]
            self.up_u_maps.append(u_maps)
            self.up_ul_maps.append(ul_maps)
            u_skips += u_maps
            ul_skips += ul_maps
            if level < num_stages - 1:
                u_maps[-1].need_raw = ul_maps[-1].need_raw = True  # read by the strided convolutions

        self.down_u_maps: list[list[_Map]] = []
        self.down_ul_maps: list[list[_Map]] = []
        self.down_u_skips: list[list[_Map]] = []
        self.down_ul_skips: list[list[_Map]] = []
        # The forward pass pops the last up-pass activations first, as the input of the down pass.
        u_skips.pop()
        ul_skips.pop()
        for stage in range(num_stages):
            level = num_stages - 1 - stage
            count = len(net.down_u[stage])
            if stage == 0:
                u_maps = [self.up_u_maps[level][-1]]
                ul_maps = [self.up_ul_maps[level][-1]]
            else:
                u_maps = [_Map(level)]
                ul_maps = [_Map(level)]
            u_maps += [_Map(level) for _ in range(count)]
            ul_maps += [_Map(level) for _ in range(count)]
            for index in range(count):
                u_maps[index].need_act = ul_maps[index].need_act = True  # block inputs
                u_maps[index + 1].need_act = True  # auxiliary input of the ul block
            if level > 0:
                u_maps[-1].need_raw = ul_maps[-1].need_raw = True  # read by the transposed convolutions
            else:
                ul_maps[-1].need_act = True  # the output reads elu(ul), the first half of concat_elu(ul)
            self.down_u_maps.append(u_maps)
            self.down_ul_maps.append(ul_maps)
            self.down_u_skips.append([u_skips.pop() for _ in range(count)])
            self.down_ul_skips.append([ul_skips.pop() for _ in range(count)])
        if u_skips or ul_skips:
            raise RuntimeError("the skip connections of the network do not match the cached decoder")

        for maps in self.up_u_maps + self.down_u_maps:
            for item in maps:
                self._allocate(item, channels_last=False)
        for maps in self.up_ul_maps + self.down_ul_maps:
            for item in maps:
                self._allocate(item, channels_last=True)

        self.up_u_blocks = [
            [self._u_block(module, maps[n], maps[n + 1], None) for n, module in enumerate(net.up_u[level])]
            for level, maps in enumerate(self.up_u_maps)
        ]
        self.up_ul_blocks = [
            [
                self._ul_block(module, maps[n], maps[n + 1], self.up_u_maps[level][n + 1], None)
                for n, module in enumerate(net.up_ul[level])
            ]
            for level, maps in enumerate(self.up_ul_maps)
        ]
        self.down_u_blocks = [
            [
                self._u_block(module, maps[n], maps[n + 1], self.down_u_skips[stage][n])
                for n, module in enumerate(net.down_u[stage])
            ]
            for stage, maps in enumerate(self.down_u_maps)
        ]
        self.down_ul_blocks = [
            [
                self._ul_block(
                    module, maps[n], maps[n + 1], self.down_u_maps[stage][n + 1], self.down_ul_skips[stage][n]
                )
                for n, module in enumerate(net.down_ul[stage])
            ]
            for stage, maps in enumerate(self.down_ul_maps)
        ]

        # Input convolutions of ul at level 0: the row-above part (ul_input_above and the top tap of
        # ul_input_left) per row, the current-row tap of ul_input_left per step.
        self.input_above = self._zeros(batch, width, filters)
        left = net.ul_input_left.weight  # (F, C + 1, 2, 1)
        self.input_left_top = left[:, :, 0, 0].t().contiguous()
        self.input_left_bottom = product_weight(left[:, :, 1, 0].t())

        # Strided ul convolutions: per level s >= 1, the row-above term and the current-row weight.
        self.downsample_above = [None] + [
            self._zeros(batch, self.sizes[s][1], filters) for s in range(1, num_stages)
        ]
        self.input_grid = _Grid(self.input_above)
        self.downsample_grids = [None] + [_Grid(above) for above in self.downsample_above[1:]]
        # Broadcast against (B, F) to write [x, -x] into the (2, B, F) halves view of a position.
        self.signs = torch.tensor([1.0, -1.0], dtype=self.dtype, device=self.device).view(2, 1, 1)
        self.downsample_top = [None] + [_top_weight(conv.weight) for conv in net.downsample_ul]
        self.downsample_bottom = [None] + [_bottom_weight(conv.weight) for conv in net.downsample_ul]
        self.output_weight = product_weight(net.output_conv.weight[:, :, 0, 0].t())
        # Transposed ul convolutions: fine position (i, j) reads coarse position (i // 2, j // 2) through
        # kernel tap (i % 2, j % 2).
        self.upsample_taps = [None] + [
            [[product_weight(conv.weight[:, :, row, column]) for column in range(2)] for row in range(2)]
            for conv in net.upsample_ul
        ]

    # -----------------------------------------------------------------------------------------------------
    # Construction helpers
    # -----------------------------------------------------------------------------------------------------

    def _zeros(self, *shape: int) -> Tensor:
        return torch.zeros(*shape, dtype=self.dtype, device=self.device)

    def _allocate(self, item: _Map, channels_last: bool) -> None:
        if item.act is not None or item.raw is not None:
            return  # shared between the up and down passes
        height, width = self.sizes[item.level]
        for name, channels in (("act", 2 * self.filters), ("raw", self.filters)):
            if not getattr(item, f"need_{name}"):
                continue
            if channels_last:
                cache = self._zeros(self.batch, height + 1, width + 1, channels)
                setattr(item, f"{name}_grid", _Grid(cache))
            else:
                cache = self._zeros(self.batch, channels, height + 1, width + 2)
            setattr(item, name, cache)

    def _u_block(self, module: GatedResidualBlock, source: _Map, target: _Map, skip: _Map | None) -> _UBlock:
        height, width = self.sizes[source.level]
        hidden = self._zeros(self.batch, 2 * self.filters, height + 1, width + 2)
        return _UBlock(module, source, target, skip, hidden)

    def _ul_block(
        self, module: GatedResidualBlock, source: _Map, target: _Map, aux: _Map, skip: _Map | None
    ) -> _ULBlock:
        filters = self.filters
        height, width = self.sizes[source.level]
        aux_weight = module.aux_conv.weight[:, :, 0, 0]  # (F, 2F) or (F, 4F)
        hidden = self._zeros(self.batch, height + 1, width + 1, 2 * filters)
        in_above = self._zeros(self.batch, width, filters)
        out_above = self._zeros(self.batch, width, 2 * filters)
        return _ULBlock(
            source=source,
            target=target,
            aux=aux,
            skip=skip,
            hidden=hidden,
            in_top=_top_weight(module.conv_in.weight),
            in_bottom=_bottom_weight(module.conv_in.weight),
            out_top=_top_weight(module.conv_out.weight),
            out_bottom=_bottom_weight(module.conv_out.weight),
            aux_weight=aux_weight[:, : 2 * filters].t().contiguous(),
            skip_weight=product_weight(aux_weight[:, 2 * filters :].t()) if skip is not None else None,
            in_bias=module.conv_in.bias + module.aux_conv.bias,
            out_bias=module.conv_out.bias,
            in_above=in_above,
            out_above=out_above,
            hidden_grid=_Grid(hidden),
            in_grid=_Grid(in_above),
            out_grid=_Grid(out_above),
        )

    def cache_numel(self) -> int:
        """Count the elements of the canvas, every map, every block's hidden cache and the row terms."""
        tensors = [self.canvas, self.input_above, *self.downsample_above[1:]]
        seen = set()
        for maps in self.up_u_maps + self.up_ul_maps + self.down_u_maps + self.down_ul_maps:
            for item in maps:
                if id(item) not in seen:
                    seen.add(id(item))
                    tensors += [item.act, item.raw]
        for blocks in self.up_u_blocks + self.down_u_blocks:
            tensors += [block.hidden for block in blocks]
        for blocks in self.up_ul_blocks + self.down_ul_blocks:
            tensors += [
                tensor for block in blocks for tensor in (block.hidden, block.in_above, block.out_above)
            ]
        return tensor_numel(*tensors)

    # -----------------------------------------------------------------------------------------------------
    # Rows: the u stream and the row-above terms of the ul stream
    # -----------------------------------------------------------------------------------------------------

    def _store_u_row(self, item: _Map, row: int, value: Tensor) -> None:
        """Store the u-stream row value (B, F, 1, W_s) of a map at level row ``row``."""
        width = value.shape[-1]
        if item.act is not None:
            concat_elu_into(value, item.act[:, :, row + 1 : row + 2, 1 : width + 1], dim=1)
        if item.raw is not None:
            item.raw[:, :, row + 1 : row + 2, 1 : width + 1] = value

    def _u_block_row(self, block: _UBlock, row: int, value: Tensor) -> Tensor:
        """Apply a u-stream block to level row ``row``, given the raw input row value (B, F, 1, W_s)."""
        module = block.module
        width = value.shape[-1]
        c = F.conv2d(block.source.act[:, :, row : row + 2], module.conv_in.weight, module.conv_in.bias)
        if block.skip is not None:
            skip_row = block.skip.act[:, :, row + 1 : row + 2, 1 : width + 1]
            c = c + F.conv2d(skip_row, module.aux_conv.weight, module.aux_conv.bias)
        concat_elu_into(c, block.hidden[:, :, row + 1 : row + 2, 1 : width + 1], dim=1)
        out = F.conv2d(block.hidden[:, :, row : row + 2], module.conv_out.weight, module.conv_out.bias)
        filters = self.filters
        value = torch.addcmul(value, out[:, :filters], torch.sigmoid(out[:, filters:]))
        self._store_u_row(block.target, row, value)
        return value

    def _ul_block_row(self, block: _ULBlock, row: int) -> None:
        """Compute the bias, auxiliary and row-above terms of a ul block for level row ``row``."""
        filters = self.filters
        width = block.in_above.shape[1]
        in_above = block.in_above.view(-1, filters)
        torch.addmm(block.in_bias, _row_windows(block.source.act[:, row], 1), block.in_top, out=in_above)
        # The auxiliary u activations of this row, (B, 2F, W_s) -> (B·W_s, 2F).
        aux = block.aux.act[:, :, row + 1, 1 : width + 1].permute(0, 2, 1).reshape(-1, 2 * filters)
        in_above.addmm_(aux, block.aux_weight)
        torch.addmm(
            block.out_bias,
            _row_windows(block.hidden[:, row], 1),
            block.out_top,
            out=block.out_above.view(-1, 2 * filters),
        )

    def _start_row(self, image_row: int, levels: list[int]) -> None:
        """Compute the u stream of ``image_row`` at the given levels, and their ul row-above terms."""
        net = self.net
        last = self.num_stages - 1

        up_values = {}
        for level in levels:
            row = image_row >> level
            maps = self.up_u_maps[level]
            if level == 0:
                # u = down_shift(u_input(x)): image rows row - 2 .. row - 1, and zero on the first row.
                if row == 0:
                    value = self._zeros(self.batch, self.filters, 1, self.width)
                else:
                    value = F.conv2d(self.canvas[:, :, row : row + 2], net.u_input.weight, net.u_input.bias)
            else:
                source = self.up_u_maps[level - 1][-1].raw
                conv = net.downsample_u[level - 1]
                value = F.conv2d(source[:, :, 2 * row : 2 * row + 2], conv.weight, conv.bias, stride=(1, 2))
            self._store_u_row(maps[0], row, value)
            for block in self.up_u_blocks[level]:
                value = self._u_block_row(block, row, value)
            up_values[level] = value

            self._ul_input_row(level, row)
            for block in self.up_ul_blocks[level]:
                self._ul_block_row(block, row)

        for level in reversed(levels):
            row = image_row >> level
            stage = last - level
            if level == last:
                # The down pass continues the last up-pass map of the coarsest level.
                value = up_values[level]
            else:
                coarse = self.down_u_maps[stage - 1][-1].raw
                coarse_width = self.sizes[level + 1][1]
                conv = net.upsample_u[stage - 1]
                tap = row & 1
                value = F.conv_transpose2d(
                    coarse[:, :, (row >> 1) + 1 : (row >> 1) + 2, 1 : coarse_width + 1],
                    conv.weight[:, :, tap : tap + 1],
                    conv.bias,
                    stride=(1, 2),
                )
                # The transposed convolution writes columns 2j - 1 .. 2j + 1, of which 0 .. W_s - 1 are kept.
                value = value[:, :, :, 1 : self.sizes[level][1] + 1]
                self._store_u_row(self.down_u_maps[stage][0], row, value)
            for block in self.down_u_blocks[stage]:
                value = self._u_block_row(block, row, value)
            for block in self.down_ul_blocks[stage]:
                self._ul_block_row(block, row)

    def _ul_input_row(self, level: int, row: int) -> None:
        """Compute the row-above term of the first ul map of a level row."""
        net = self.net
        filters = self.filters
        if level == 0:
            above = self.input_above
            if row == 0:
                above.zero_()  # down_shift leaves the first row without even a bias
            else:
                conv = F.conv2d(
                    self.canvas[:, :, row + 1 : row + 2], net.ul_input_above.weight, net.ul_input_above.bias
                )
                above.copy_(conv[:, :, 0].permute(0, 2, 1))
            if self.width > 1:
                # right_shift(ul_input_left(x)): column j reads column j - 1 of rows row - 1 and row.
                previous = self.canvas[:, :, row + 1, 1 : self.width].permute(0, 2, 1)  # (B, W - 1, C + 1)
                left = torch.matmul(previous, self.input_left_top) + net.ul_input_left.bias
                above[:, 1:] += left
        else:
            source = self.up_ul_maps[level - 1][-1].raw
            torch.addmm(
                net.downsample_ul[level - 1].bias,
                _row_windows(source[:, 2 * row], 2),
                self.downsample_top[level],
                out=self.downsample_above[level].view(-1, filters),
            )

    # -----------------------------------------------------------------------------------------------------
    # Steps: the ul stream at one position
    # -----------------------------------------------------------------------------------------------------

    def _ul_block_step(self, block: _ULBlock, row: int, column: int, value: Tensor) -> Tensor:
        """Apply a ul block at padded position (row, column), given the raw input value (B, F) there.

        The current-row window of both (2, 2) convolutions is padded columns column - 1 and column.
        """
        c = torch.addmm(
            block.in_grid.at(column - 1), block.source.act_grid.pair(row, column - 1), block.in_bottom
        )
        if block.skip is not None:
            c = torch.addmm(c, block.skip.act_grid.at(row, column), block.skip_weight)
        halves = block.hidden_grid.halves(row, column)
        torch.mul(c, self.signs, out=halves)
        F.elu(halves, inplace=True)
        out = torch.addmm(
            block.out_grid.at(column - 1), block.hidden_grid.pair(row, column - 1), block.out_bottom
        )
        gate_value, gate = out.chunk(2, dim=1)
        value = torch.addcmul(value, gate_value, torch.sigmoid(gate))
        self._store_ul(block.target, row, column, value)
        return value

    def _store_ul(self, item: _Map, row: int, column: int, value: Tensor) -> None:
        """Store the raw ul value (B, F) of a map at padded position (row, column)."""
        if item.act_grid is not None:
            halves = item.act_grid.halves(row, column)
            torch.mul(value, self.signs, out=halves)
            F.elu(halves, inplace=True)
        if item.raw_grid is not None:
            item.raw_grid.at(row, column).copy_(value)

    def _step(self, image_row: int, image_column: int) -> Tensor:
        """Compute the ul stream at one image position and return its raw mixture parameters (B, P)."""
        net = self.net
        last = self.num_stages - 1
        top = 0
        while top < last and (image_row | image_column) & ((2 << top) - 1) == 0:
            top += 1

        value = None
        for level in range(top + 1):
            # Level position (i, j), which the caches hold at padded position (i + 1, j + 1).
            i, j = image_row >> level, image_column >> level
            if level == 0:
                value = self.input_grid.at(j)
                if j > 0:
                    value = torch.addmm(value, self.canvas[:, :, i + 2, j], self.input_left_bottom)
            else:
                # The current-row window: finer row 2i, columns 2j - 1 .. 2j.
                source = self.up_ul_maps[level - 1][-1].raw_grid.pair(2 * i + 1, 2 * j)
                value = torch.addmm(self.downsample_grids[level].at(j), source, self.downsample_bottom[level])
            self._store_ul(self.up_ul_maps[level][0], i + 1, j + 1, value)
            for block in self.up_ul_blocks[level]:
                value = self._ul_block_step(block, i + 1, j + 1, value)

        for level in range(top, -1, -1):
            i, j = image_row >> level, image_column >> level
            stage = last - level
            if level < last:
                # Coarse position (i // 2, j // 2) through kernel tap (i mod 2, j mod 2).
                coarse = self.down_ul_maps[stage - 1][-1].raw_grid.at((i >> 1) + 1, (j >> 1) + 1)
                tap = self.upsample_taps[stage][i & 1][j & 1]
                value = torch.addmm(net.upsample_ul[stage - 1].bias, coarse, tap)
                self._store_ul(self.down_ul_maps[stage][0], i + 1, j + 1, value)
            for block in self.down_ul_blocks[stage]:
                value = self._ul_block_step(block, i + 1, j + 1, value)

        # The output reads elu(ul), the first half of the cached concat_elu(ul).
        final = self.down_ul_maps[last][-1].act_grid.at(image_row + 1, image_column + 1)[:, : self.filters]
        return torch.addmm(net.output_conv.bias, final, self.output_weight)

    def run(self, z: Tensor, q: Tensor, start: int) -> None:
        """Decode pixels ``start ..`` of z (B, C, H, W) into q, given the pixels before ``start``."""
        height, width, channels = self.height, self.width, self.channels
        scale = 2.0 / (self.num_bins - 1)
        canvas = self.canvas
        canvas[:, :channels, 2:, 1 : width + 1] = q.to(self.dtype) * scale - 1.0
        z_steps = z.permute(2, 3, 0, 1).contiguous()  # (H, W, B, C)
        all_levels = list(range(self.num_stages))

        first_row, first_column = divmod(start, width)
        for image_row in range(first_row, height):
            if image_row == first_row:
                # Resuming inside a row: the row-above terms of every level's current row are recomputed.
                levels = all_levels
            else:
                levels = [level for level in all_levels if image_row & ((1 << level) - 1) == 0]
            self._start_row(image_row, levels)
            for image_column in range(first_column if image_row == first_row else 0, width):
                raw = self._step(image_row, image_column)
                bins, values = self.mixture(z_steps[image_row, image_column], raw)
                q[:, :, image_row, image_column] = bins
                canvas[:, :channels, image_row + 2, image_column + 1] = values
