"""Tiny flows and the comparison against the naive loop shared by the cached-decoding tests."""

import torch

from arflows import create_flow
from arflows.generation import fast_decode


def tiny_flow(
    model, data_shape, num_bins, *, seed=0, weight_scale=2.0, dtype=torch.float64, **hyperparameters
):
    """Build a flow in eval mode with random weights, scaled up so that its conditionals are peaked."""
    torch.manual_seed(seed)
    flow = create_flow(model, data_shape, num_bins, **hyperparameters).to(dtype).eval()
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.mul_(weight_scale)
    return flow


def random_latents(flow, batch, shape=None, seed=0):
    """Draw uniform latents of shape (batch, *shape) in the network's dtype."""
    dtype = next(flow.parameters()).dtype
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, *(shape or flow.data_shape), dtype=dtype, generator=generator)


def assert_matches_naive(flow, z, message=""):
    """Assert that the fast path returns the naive loop's q and x bit for bit, and return its statistics."""
    naive_x = flow.decode(z, continuous=True, naive=True)
    naive_q = flow.decode(z, naive=True)
    stats = {}
    with torch.no_grad():
        q, u = fast_decode(flow, z.to(next(flow.parameters()).dtype), stats)
    fast_x = (q.to(u.dtype) + u) / flow.num_bins

    assert torch.equal(q, naive_q), (
        f"{message}: q differs from the naive loop at {(q != naive_q).sum()} entries"
    )
    assert torch.equal(fast_x, naive_x), f"{message}: x differs from the naive loop"
    assert torch.equal(flow.decode(z), naive_q), f"{message}: decode() differs from the naive loop"
    return stats
