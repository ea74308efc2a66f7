"""Datasets of discrete values q in {0, ..., K-1}: images (B×C×H×W) and audio clips (B×1×T)."""

from .audio import (
    AudioClipSplit,
    AudioDataset,
    AudioSegmentSplit,
    collate_audio_clips,
    load_wav_folder,
    read_wav,
    save_wav,
)
from .cifar10 import load_cifar10, read_cifar10
from .dataset import SPLIT_NAMES, DiscreteDataset, partition_examples
from .download import DOWNLOAD_URL_VARIABLE, DownloadError
from .image_folder import load_image_folder
from .images import ImageDataset, ImageSplit, load_digits
from .mnist import load_mnist, read_idx, read_mnist
from .quantization import (
    QUANTIZATIONS,
    dequantize,
    linear_decode,
    linear_encode,
    mu_law_decode,
    mu_law_encode,
    quantize,
)
from .specs import DATASET_KINDS, load_dataset, parse_spec

__all__ = [
    "DATASET_KINDS",
    "DOWNLOAD_URL_VARIABLE",
    "QUANTIZATIONS",
    "SPLIT_NAMES",
    "AudioClipSplit",
    "AudioDataset",
    "AudioSegmentSplit",
    "DiscreteDataset",
    "DownloadError",
    "ImageDataset",
    "ImageSplit",
    "collate_audio_clips",
    "dequantize",
    "linear_decode",
    "linear_encode",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "load_image_folder",
    "load_mnist",
    "load_wav_folder",
    "mu_law_decode",
    "mu_law_encode",
    "parse_spec",
    "partition_examples",
    "quantize",
    "read_cifar10",
    "read_idx",
    "read_mnist",
    "read_wav",
    "save_wav",
]
