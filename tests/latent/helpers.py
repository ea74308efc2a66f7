"""Tiny flows, real example images and a checkpoint writer shared by the latent-tool tests."""

from pathlib import Path

import numpy as np
import torch

from arflows import create_flow
from arflows.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, save_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
MNIST_FILE = SHARED_DATA / "mnist" / "mnist.npz"
CIFAR_FOLDER = SHARED_DATA / "cifar10-jpg" / "train"

FAMILIES = ("pixelcnn", "gated_pixelcnn", "pixelcnn_pp")

# Small networks of every image family, fast enough for sequential decoding of 8×8 images.
TINY = {
    "pixelcnn": {"num_filters": 6, "num_blocks": 1, "first_kernel_size": 3},
    "gated_pixelcnn": {"num_filters": 6, "num_blocks": 1},
    "pixelcnn_pp": {"num_filters": 4, "num_blocks": 1, "num_components": 2, "dropout": 0.0, "num_stages": 1},
}


def tiny_flow(model, data_shape, num_bins, *, seed=0, weight_scale=2.0, dtype=torch.float32):
    """Build a flow with random weights, scaled up so that its conditionals are far from uniform."""
    torch.manual_seed(seed)
    flow = create_flow(model, data_shape, num_bins, **TINY[model]).to(dtype).eval()
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.mul_(weight_scale)
    return flow


def cifar_crops(count=4, size=6):
    """Return centre crops of the first CIFAR-10 JPEG of `count` classes, int64 (count, 3, size, size)."""
    from PIL import Image

    files = [min(folder.glob("*.jpg")) for folder in sorted(CIFAR_FOLDER.iterdir())[:count]]
    images = []
    for path in files:
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.int64)  # (32, 32, 3)
        top = (pixels.shape[0] - size) // 2
        images.append(pixels[top : top + size, top : top + size].transpose(2, 0, 1))
    return torch.from_numpy(np.stack(images))


def save_flow_checkpoint(path, flow, *, data="digits"):
    """Write `flow` as an arflows checkpoint with raw weights only, as `arflows train --ema-decay 0` does."""
    save_checkpoint(path, {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "flow": flow.config,
        "model": flow.state_dict(),
        "averaged_model": None,
        "step": 0,
        "dataset": {"spec": data, "options": {}},
        "config": {"data": data},
    })
    return path
