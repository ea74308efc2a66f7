"""Training, exact evaluation and distributed helpers for autoregressive flows."""

from arflows.training.checks import check_data_matches_flow, find_validation_split
from arflows.training.config import PRECISIONS, Interval, TrainingConfig
from arflows.training.distributed import DistributedContext, init_distributed, resolve_device, shard_indices
from arflows.training.evaluation import EvaluationResult, collate_by_shape, evaluate_dataset
from arflows.training.loop import ADAM_BETAS, RUN_FILES, train
from arflows.training.results import ConfigurationError, NonFiniteLossError, TrainingSummary
from arflows.training.sampling import EpochBatchSampler

__all__ = [
    "ADAM_BETAS",
    "PRECISIONS",
    "RUN_FILES",
    "ConfigurationError",
    "DistributedContext",
    "EpochBatchSampler",
    "EvaluationResult",
    "Interval",
    "NonFiniteLossError",
    "TrainingConfig",
    "TrainingSummary",
    "check_data_matches_flow",
    "collate_by_shape",
    "evaluate_dataset",
    "find_validation_split",
    "init_distributed",
    "resolve_device",
    "shard_indices",
    "train",
]
