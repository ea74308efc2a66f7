"""PixelCNN, PixelCNN++ and WaveNet as exact single-layer normalizing flows between uniform noise and data."""

from arflows.flows import MODELS, AutoregressiveFlow, create_flow, flow_from_config
from arflows.transforms import OutOfDomainError

__all__ = ["MODELS", "AutoregressiveFlow", "OutOfDomainError", "create_flow", "flow_from_config"]
__version__ = "0.1.0"
