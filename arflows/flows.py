"""Autoregressive networks combined with elementwise transforms into exact single-layer flows."""

from __future__ import annotations

import contextlib
import itertools
import math
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from arflows import transforms

__all__ = ["MODELS", "LOG_SCALE_MIN", "AutoregressiveFlow", "create_flow", "flow_from_config"]

MODELS = ("pixelcnn", "gated_pixelcnn", "pixelcnn_pp", "wavenet")

# PixelCNN++ bounds the log-scales of its logistic components from below at -7 (scale ~ 1e-3, a tenth of a
# bin at K = 256), which keeps the likelihood of a perfectly predicted bin from diverging during training.
LOG_SCALE_MIN = -7.0

Noise = Union[str, Tensor]


class AutoregressiveFlow(nn.Module):
    r"""An autoregressive network and an elementwise transform, viewed as one invertible flow.

    The network maps the data scaled to [-1, 1] to the parameters of each dimension's conditional. The
    elementwise transform (CatFlow or a discretized logistic mixture) turns each conditional into a monotone
    piecewise-linear map of [0, 1], so that for dequantized data :math:`x = (q + u)/K` the flow density is
    :math:`K^D P(q)`: the discrete likelihood is exact.

    Encoding runs the network once, in parallel. Decoding is sequential: one network pass per dimension for
    per-sub-pixel categorical networks, one per pixel for PixelCNN++ (the mixture handles channels), one per
    step for WaveNet.

    Args:
        net: The autoregressive network.
        output: "categorical" (K logits per dimension) or "mixture" (a channel-autoregressive discretized
            logistic mixture per position).
        data_shape: Shape of one example, (C, H, W) for images or (1, T) for audio.
        num_bins: The number of bins K.
        config: The arguments of :func:`create_flow` that rebuild this flow.
    """

    def __init__(
        self,
        net: nn.Module,
        output: str,
        data_shape: Sequence[int],
        num_bins: int,
        config: Optional[Dict[str, Any]] = None,
    ):
        super().__init__()
        if output not in ("categorical", "mixture"):
            raise ValueError(f"output must be 'categorical' or 'mixture', got {output!r}")
        self.net = net
        self.output = output
        self.data_shape = tuple(int(size) for size in data_shape)
        self.num_bins = int(num_bins)
        self.num_channels = self.data_shape[0]
        self.is_audio = len(self.data_shape) == 2
        self.config = dict(config or {})
        if output == "categorical":
            self.transform = transforms.CatFlow(self.num_bins)
        else:
            self.transform = transforms.MultivariateDMOLFlow(self.num_bins)

    @property
    def num_dims(self) -> int:
        """Number of dimensions D of one example of the default shape."""
        return math.prod(self.data_shape)

    # -----------------------------------------------------------------------------------------------------
    # Input checks
    # -----------------------------------------------------------------------------------------------------

    def _expected_shape_text(self) -> str:
        if self.is_audio:
            return "(B, 1, T) or (B, T) with T >= 1"
        return f"(B, {', '.join(str(size) for size in self.data_shape)})"

    def _check_shape(self, name: str, value: Tensor) -> Tensor:
        """Return value with shape (B, *data_shape), audio (B, T) becoming (B, 1, T); raise on mismatch."""
        if self.is_audio and value.dim() == 2:
            value = value.unsqueeze(1)
        if self.is_audio:
            matches = value.dim() == 3 and value.shape[1] == 1 and value.shape[2] >= 1
        else:
            matches = value.dim() == 4 and tuple(value.shape[1:]) == self.data_shape
        if not matches or value.shape[0] < 1:
            raise ValueError(
                f"{name} has shape {tuple(value.shape)}; expected {self._expected_shape_text()} with B >= 1"
            )
        return value

    def check_data(self, q: Tensor) -> Tensor:
        """Validate discrete data and return it as a long tensor of shape (B, *data_shape).

        Raises:
            TypeError: If q is not a tensor of integers or floats.
            ValueError: If q has the wrong shape, non-integer values or values outside [0, K).
        """
        if not isinstance(q, Tensor):
            raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
        if q.dtype == torch.bool or q.is_complex():
            raise TypeError(f"q must hold integers in [0, {self.num_bins}), got dtype {q.dtype}")
        q = self._check_shape("q", q)
        if q.is_floating_point():
            if not torch.isfinite(q).all() or not torch.equal(q, q.round()):
                raise ValueError(f"q must hold integers in [0, {self.num_bins}); got non-integer values")
        low, high = q.min().item(), q.max().item()
        if low < 0 or high >= self.num_bins:
            raise ValueError(
                f"q has values in [{low:g}, {high:g}]; expected integers in [0, {self.num_bins - 1}]"
            )
        return q.long()

    def check_latent(self, z: Tensor) -> Tensor:
        """Validate latents and return them with shape (B, *data_shape).

        Raises:
            OutOfDomainError: If z contains NaN or values outside [0, 1].
            ValueError: If z has the wrong shape.
        """
        if not isinstance(z, Tensor):
            raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
        z = self._check_shape("z", z)
        transforms._check_unit_interval("z", z, closed=True)
        return z

    # -----------------------------------------------------------------------------------------------------
    # Network parameters
    # -----------------------------------------------------------------------------------------------------

    def scale(self, q: Tensor) -> Tensor:
        """Map bins to the network input 2q/(K-1) - 1 in [-1, 1], in the network's dtype."""
        dtype = next(self.net.parameters()).dtype
        return 2.0 * q.to(dtype) / (self.num_bins - 1) - 1.0

    def parameters_of(self, q: Tensor) -> Tuple[Tensor, ...]:
        """Run the network on q and split its output into the transform's parameters.

        The parameters are computed in float32 or better even under autocast, because the likelihood and
        the latents need the precision of the exact bin masses.

        Args:
            q: Bins, long, shape (B, *data_shape).

        Returns:
            For "categorical": (logits,) with logits of shape (B, C, *S, K) where S is the spatial shape.
            For "mixture": (logits (B, *S, M), means (B, C, *S, M), log-scales (B, C, *S, M),
            coefficients (B, C(C-1)/2, *S, M)), as :class:`~arflows.transforms.MultivariateDMOLFlow` takes.
        """
        raw = self.net(self.scale(q))
        device_type = raw.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            if raw.dtype in (torch.float16, torch.bfloat16):
                raw = raw.float()
            return self._split_parameters(raw)

    def _split_parameters(self, raw: Tensor) -> Tuple[Tensor, ...]:
        batch, channels = raw.shape[0], self.num_channels
        spatial = tuple(raw.shape[2:])
        if self.output == "categorical":
            # (B, C*K, *S) -> (B, C, K, *S) -> (B, C, *S, K)
            logits = raw.reshape(batch, channels, self.num_bins, *spatial).movedim(2, -1)
            return (logits,)

        num_components = raw.shape[1] // (1 + 2 * channels + channels * (channels - 1) // 2)
        per_channel = channels * num_components
        num_pairs = channels * (channels - 1) // 2
        # One split rather than four slices: its backward pass assembles the gradient of raw in one tensor,
        # where each slice would add a zero-filled tensor of raw's size.
        logits, means, log_scales, coefficients = raw.split(
            [num_components, per_channel, per_channel, num_pairs * num_components], dim=1
        )
        logits = logits.movedim(1, -1)  # (B, *S, M)
        # (B, C*M, *S) -> (B, C, M, *S) -> (B, C, *S, M)
        means = means.reshape(batch, channels, num_components, *spatial).movedim(2, -1)
        log_scales = log_scales.reshape(batch, channels, num_components, *spatial).movedim(2, -1)
        log_scales = log_scales.clamp(min=LOG_SCALE_MIN)
        coefficients = coefficients.reshape(batch, num_pairs, num_components, *spatial).movedim(2, -1)
        return logits, means, log_scales, torch.tanh(coefficients)

    # -----------------------------------------------------------------------------------------------------
    # Likelihood
    # -----------------------------------------------------------------------------------------------------

    def log_prob(self, q: Tensor) -> Tensor:
        """Compute the exact discrete log-likelihood log P(q) in nats.

        Args:
            q: Integer data in [0, K), shape (B, *data_shape) (audio also (B, T)).

        Returns:
            Log-likelihoods, shape (B,), in float32 or the network's wider dtype.
        """
        q = self.check_data(q)
        params = self.parameters_of(q)
        per_dim = self.transform.log_prob(q, params)
        return per_dim.flatten(1).sum(dim=1)

    def bits_per_dim(self, q: Tensor) -> Tensor:
        r"""Compute :math:`-\log_2 P(q) / D`, averaged over the batch (a scalar)."""
        q = self.check_data(q)
        num_dims = q[0].numel()
        return -self.log_prob(q).mean() / (num_dims * math.log(2.0))

    # -----------------------------------------------------------------------------------------------------
    # Encoding and decoding
    # -----------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _deterministic(self) -> Iterator[None]:
        """Run the network in eval mode (no dropout) and restore the previous mode afterwards."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    def _noise(self, q: Tensor, noise: Noise, generator: Optional[torch.Generator], dtype) -> Tensor:
        if isinstance(noise, Tensor):
            u = self._check_shape("noise", noise)
            if tuple(u.shape) != tuple(q.shape):
                raise ValueError(f"noise has shape {tuple(u.shape)}; expected the shape of q, {tuple(q.shape)}")
            transforms._check_unit_interval("noise", u, closed=False)
            return u.to(device=q.device, dtype=dtype)
        if noise == "uniform":
            return torch.rand(q.shape, generator=generator, dtype=dtype, device=q.device)
        if noise == "center":
            return torch.full(q.shape, 0.5, dtype=dtype, device=q.device)
        raise ValueError(f"noise must be 'uniform', 'center' or a tensor of values in [0, 1); got {noise!r}")

    def encode(
        self, q: Tensor, noise: Noise = "uniform", generator: Optional[torch.Generator] = None
    ) -> Tuple[Tensor, Tensor]:
        r"""Map data to latents z = f((q + u)/K) with one parallel network pass.

        The network runs in eval mode (no dropout), so that the latents depend on q and u only.

        Args:
            q: Integer data in [0, K), shape (B, *data_shape).
            noise: "uniform" (u ~ U[0, 1)), "center" (u = 1/2) or a tensor of u values in [0, 1).
            generator: Random generator for uniform noise.

        Returns:
            z in [0, 1] of the shape of q, and the log-det of shape (B,), equal to
            :math:`\log P(q) + D \log K`.
        """
        q = self.check_data(q)
        with self._deterministic():
            params = self.parameters_of(q)
            u = self._noise(q, noise, generator, params[0].dtype)
            z, log_det = self.transform.encode(q, u, params)
        return z, log_det.flatten(1).sum(dim=1)

    def _decode_steps(self, shape: Tuple[int, ...]) -> Iterator[Tuple]:
        """Yield the index of each sequential decoding step, in raster then channel order."""
        spatial = shape[2:]
        for position in itertools.product(*(range(size) for size in spatial)):
            if self.output == "categorical":
                for channel in range(shape[1]):
                    yield (slice(None), channel, *position)
            else:
                yield (slice(None), slice(None), *position)

    @torch.no_grad()
    def decode(self, z: Tensor, *, continuous: bool = False, naive: bool = False) -> Tensor:
        r"""Map latents back to data, by default with cached incremental generation.

        The naive loop (``naive=True``) runs, at each step, the network on the whole canvas and the inverse
        transform on the whole tensor, then keeps only the current step. Evaluating the transform on the
        same shapes as :meth:`encode` makes every floating-point bin edge bit-identical to the one encoding
        used, so that decoding is exact even for latents on a bin edge. Memory stays that of one pass,
        whatever the number of steps.

        The fast path (:mod:`arflows.generation`) computes each feature of the network once, at the step at
        which it becomes final, from cached features, so the whole decode costs about one parallel pass
        plus a per-step overhead. Its cached features can differ from the full pass in the last bits, which
        changes a decision only where z lies within rounding distance of a bin edge. So the fast path then
        verifies itself: one parallel pass on its proposal gives the naive loop's decision at every step
        given the proposal's earlier steps; at the first disagreement it takes the naive decision and
        resumes from the next step (after 8 repairs, the naive loop finishes). The returned q and u are
        therefore the naive loop's, bit for bit, even for latents on bin edges, provided that the network
        computes each output element with the same arithmetic whatever the values at positions it does
        not depend on. PyTorch's CPU convolutions (oneDNN direct and im2col with GEMM) do; Winograd or FFT
        convolutions, which some GPU libraries choose, would not. Networks without a cached decoder (not
        exactly PixelCNN, GatedPixelCNN, PixelCNNPlusPlus or WaveNet) use the naive loop.

        Args:
            z: Latents in [0, 1], shape (B, *data_shape).
            continuous: Return x = (q + u)/K instead of q.
            naive: Use the naive loop.

        Returns:
            q (long) or x, shape of z.
        """
        z = self.check_latent(z)
        if not naive:
            from arflows import generation

            with self._deterministic():
                dtype = next(self.net.parameters()).dtype
                decoded = generation.fast_decode(self, z.to(dtype))
            if decoded is not None:
                q, u = decoded
                if continuous:
                    return (q.to(u.dtype) + u) / self.num_bins
                return q

        with self._deterministic():
            dtype = next(self.net.parameters()).dtype
            z = z.to(dtype)
            q = torch.zeros(z.shape, dtype=torch.long, device=z.device)
            u = torch.zeros_like(z)
            for index in self._decode_steps(tuple(z.shape)):
                params = self.parameters_of(q)
                step_q, step_u = self.transform.decode(z.to(params[0].dtype), params)
                q[index] = step_q[index]
                u[index] = step_u[index].to(u.dtype)
        if continuous:
            return (q.to(u.dtype) + u) / self.num_bins
        return q

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        generator: Optional[torch.Generator] = None,
        length: Optional[int] = None,
        *,
        naive: bool = False,
    ) -> Tensor:
        """Draw samples by decoding uniform latents.

        Args:
            num_samples: Number of examples B >= 1.
            generator: Random generator for the latents.
            length: For audio, the number of steps T (default: the flow's data shape).
            naive: Decode with the naive loop instead of cached generation (same result, see :meth:`decode`).

        Returns:
            q, long, shape (B, *data_shape) (audio (B, 1, length)).
        """
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}")
        shape = self.data_shape
        if length is not None:
            if not self.is_audio:
                raise ValueError("length applies to audio flows only; image flows sample their data shape")
            if length < 1:
                raise ValueError(f"length must be at least 1, got {length}")
            shape = (1, length)
        dtype = next(self.net.parameters()).dtype
        device = next(self.net.parameters()).device
        z = torch.rand((num_samples, *shape), generator=generator, dtype=dtype, device=device)
        return self.decode(z, naive=naive)


def _build_net(model: str, data_shape: Tuple[int, ...], num_bins: int, hyperparameters: Dict[str, Any]):
    from arflows import nets

    channels = data_shape[0]
    if model == "pixelcnn":
        return nets.PixelCNN(channels, num_bins, **hyperparameters), "categorical"
    if model == "gated_pixelcnn":
        return nets.GatedPixelCNN(channels, num_bins, **hyperparameters), "categorical"
    if model == "pixelcnn_pp":
        return nets.PixelCNNPlusPlus(channels, **hyperparameters), "mixture"

    options = dict(hyperparameters)
    output = options.pop("output", "categorical")
    num_components = options.pop("num_components", 10)
    if output == "categorical":
        return nets.WaveNet(num_bins, **options), "categorical"
    if output == "dmol":
        return nets.WaveNet(3 * num_components, **options), "mixture"
    raise ValueError(f"wavenet output must be 'categorical' or 'dmol', got {output!r}")


def create_flow(model: str, data_shape: Sequence[int], num_bins: int, **hyperparameters: Any) -> AutoregressiveFlow:
    """Build an autoregressive flow.

    Args:
        model: "pixelcnn", "gated_pixelcnn", "pixelcnn_pp" or "wavenet".
        data_shape: (C, H, W) for the image models, (1, T) for WaveNet (T is the default sample length;
            the flow accepts any length).
        num_bins: The number of bins K >= 2.
        **hyperparameters: Network arguments such as num_filters, num_blocks, num_components, dropout.
            WaveNet also takes output="categorical" or "dmol".

    Returns:
        The flow; ``flow_from_config(flow.config)`` rebuilds it.
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 2:
        raise ValueError(f"num_bins must be an integer of at least 2, got {num_bins!r}")
    shape = tuple(data_shape)
    if not all(isinstance(size, int) and not isinstance(size, bool) and size >= 1 for size in shape):
        raise ValueError(f"data_shape must hold positive integers, got {shape!r}")
    if model == "wavenet":
        if len(shape) != 2 or shape[0] != 1:
            raise ValueError(f"wavenet data_shape must be (1, T) with T >= 1, got {shape!r}")
    elif len(shape) != 3:
        raise ValueError(f"{model} data_shape must be (C, H, W), got {shape!r}")

    net, output = _build_net(model, shape, num_bins, hyperparameters)
    config = {
        "model": model,
        "data_shape": list(shape),
        "num_bins": num_bins,
        "hyperparameters": dict(hyperparameters),
    }
    return AutoregressiveFlow(net, output, shape, num_bins, config)


def flow_from_config(config: Dict[str, Any]) -> AutoregressiveFlow:
    """Rebuild a flow from its ``config`` dictionary (keys model, data_shape, num_bins, hyperparameters)."""
    missing = [key for key in ("model", "data_shape", "num_bins") if key not in config]
    if missing:
        raise ValueError(f"flow configuration lacks the keys {missing}; got keys {sorted(config)}")
    return create_flow(
        config["model"],
        [int(size) for size in config["data_shape"]],
        int(config["num_bins"]),
        **config.get("hyperparameters", {}),
    )
