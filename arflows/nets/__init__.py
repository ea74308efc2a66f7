"""Autoregressive networks that map scaled inputs to the parameters of the elementwise flow."""

from arflows.nets.pixelcnn import GatedPixelCNN, PixelCNN
from arflows.nets.pixelcnn_pp import PixelCNNPlusPlus, mixture_num_outputs
from arflows.nets.wavenet import WaveNet

__all__ = ["GatedPixelCNN", "PixelCNN", "PixelCNNPlusPlus", "WaveNet", "mixture_num_outputs"]
