"""Checks that a dataset fits a flow, and the lookup of a dataset's validation split."""

from __future__ import annotations

from typing import Any, Optional

__all__ = ["check_data_matches_flow", "find_validation_split", "format_shape"]

_VALIDATION_SPLIT_NAMES = ("validation", "valid", "val")


def find_validation_split(split_names: Any) -> Optional[str]:
    """Return the name of the validation split among `split_names`, or None if there is none."""
    for name in _VALIDATION_SPLIT_NAMES:
        if name in split_names:
            return name
    return None


def check_data_matches_flow(flow_config: dict, num_bins: int, data_shape: Any, description: str) -> None:
    """Raise ValueError if data of `data_shape` with `num_bins` bins cannot go through the flow.

    Images must match channels, height and width exactly. Audio flows take any length, so only the
    channel count is compared.

    Args:
        flow_config: A flow's `config` dictionary (keys `model`, `data_shape`, `num_bins`).
        num_bins: K of the data.
        data_shape: Shape of one example of the data, `(C, H, W)` or `(1, T)`.
        description: Names the data in the message, for example `"dataset mnist"`.
    """
    expected_shape = tuple(int(size) for size in flow_config["data_shape"])
    actual_shape = tuple(data_shape) if data_shape is not None else None
    expected_bins = int(flow_config["num_bins"])
    problems = []
    if int(num_bins) != expected_bins:
        problems.append(f"K={num_bins} bins instead of K={expected_bins}")
    if actual_shape is not None:
        if len(expected_shape) == 2:
            if len(actual_shape) != 2 or actual_shape[0] != expected_shape[0]:
                problems.append(f"shape {format_shape(actual_shape)} instead of 1×T audio")
        elif actual_shape != expected_shape:
            problems.append(f"shape {format_shape(actual_shape)} instead of {format_shape(expected_shape)}")
    if problems:
        raise ValueError(f"{description} does not match the {flow_config['model']} flow: it has "
                         f"{' and '.join(problems)}. Use the data options of training (for example "
                         "--channels, --crop, --resize or the same quantization)")


def format_shape(shape: tuple) -> str:
    """Return a shape as text such as `1×28×28`, with `T` for a length that varies."""
    return "×".join("T" if size is None else str(size) for size in shape)
