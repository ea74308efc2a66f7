"""Latent-space tools: encoding, uniformity checks, interpolation and figures of an autoregressive flow."""

from arflows.latent.audio import LATENT_PADDING, crop_or_pad, decode_clips, encode_clips, pad_clips, unpad
from arflows.latent.audio_figures import audio_interpolation_figure, audio_latent_figure, waveform_figure
from arflows.latent.encoding import EncodedSplit, decode_latents, encode_data, encode_split
from arflows.latent.figures import (
    correlation_figure,
    data_latent_figure,
    figure_pixel_size,
    histogram_figure,
    interpolation_figure,
    ks_map_figure,
    sample_grid_figure,
    save_figure,
    write_png,
)
from arflows.latent.files import (
    LatentFile,
    LatentFileError,
    check_latents_match_flow,
    load_latents,
    save_latents,
    weights_fingerprint,
)
from arflows.latent.inspection import Inspection, inspect_latents, sample_and_reencode
from arflows.latent.interpolation import (
    INTERPOLATION_MODES,
    Z_CLAMP,
    Interpolation,
    interpolate,
    interpolate_latents,
    interpolation_weights,
)
from arflows.latent.uniformity import (
    KSResult,
    NeighbourCorrelation,
    ks_per_channel,
    ks_statistic_map,
    ks_uniform,
    neighbour_correlations,
    uniformity_summary,
)

__all__ = [
    "INTERPOLATION_MODES",
    "LATENT_PADDING",
    "Z_CLAMP",
    "EncodedSplit",
    "Inspection",
    "Interpolation",
    "KSResult",
    "LatentFile",
    "LatentFileError",
    "NeighbourCorrelation",
    "audio_interpolation_figure",
    "audio_latent_figure",
    "check_latents_match_flow",
    "correlation_figure",
    "crop_or_pad",
    "data_latent_figure",
    "decode_clips",
    "decode_latents",
    "encode_clips",
    "encode_data",
    "encode_split",
    "figure_pixel_size",
    "histogram_figure",
    "inspect_latents",
    "interpolate",
    "interpolate_latents",
    "interpolation_figure",
    "interpolation_weights",
    "ks_map_figure",
    "ks_per_channel",
    "ks_statistic_map",
    "ks_uniform",
    "load_latents",
    "neighbour_correlations",
    "pad_clips",
    "sample_and_reencode",
    "sample_grid_figure",
    "save_figure",
    "save_latents",
    "uniformity_summary",
    "unpad",
    "waveform_figure",
    "weights_fingerprint",
    "write_png",
]
