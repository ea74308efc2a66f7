"""Tests of dataset specifications and of the options that load_dataset accepts for each kind."""

from pathlib import Path

import numpy as np
import pytest
import soundfile

from arflows.data import load_dataset, parse_spec
from arflows.data.audio import AudioDataset
from arflows.data.images import ImageDataset


def test_parse_spec():
    assert parse_spec("mnist:data/mnist.npz") == ("mnist", Path("data/mnist.npz"))
    assert parse_spec("wav:C:/audio") == ("wav", Path("C:/audio"))
    assert parse_spec("digits") == ("digits", None)
    assert parse_spec("folder:~/images")[1] == Path.home() / "images"


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            "imagenet:/data",
            r"unknown dataset kind 'imagenet' in 'imagenet:/data'; expected one of mnist, cifar10",
        ),
        ("/data/mnist.npz", r"unknown dataset kind '/data/mnist.npz'"),
        ("mnist", r"mnist needs a path, as in 'mnist:PATH', got 'mnist'"),
        ("wav:", r"wav needs a path"),
        ("digits:/tmp", r"'digits' takes no path"),
    ],
)
def test_parse_spec_rejects(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_spec(spec)


def test_spec_must_be_string():
    with pytest.raises(TypeError, match="must be a string"):
        load_dataset(Path("mnist.npz"))


def test_missing_paths(tmp_path):
    for spec in ("mnist:{}/absent.npz", "cifar10:{}/absent", "wav:{}/absent"):
        with pytest.raises(FileNotFoundError, match="absent"):
            load_dataset(spec.format(tmp_path))
    with pytest.raises(FileNotFoundError, match="absent"):
        load_dataset(f"folder:{tmp_path / 'absent'}", channels=3)


def test_digits_spec_returns_image_dataset():
    dataset = load_dataset("digits", num_bins=17, seed=3)

    assert isinstance(dataset, ImageDataset)
    assert dataset.spec == "digits"
    assert dataset.num_bins == 17


@pytest.mark.parametrize(
    "options, message",
    [
        ({"sample_rate": 8000}, "sample_rate=8000 cannot be used with digits datasets, which are images"),
        ({"mono": True}, "mono=True cannot be used with digits"),
        ({"quantization": "linear"}, "quantization='linear' cannot be used with digits"),
        ({"num_bins": 256}, "digits images have K = 17 levels, got num_bins=256"),
        ({"download": True}, "download=True applies only to mnist and cifar10, not to digits"),
        ({"validation_fraction": 1.5}, r"validation_fraction must be a number in \[0, 1\), got 1.5"),
        ({"max_examples": -1}, "max_examples must be a positive integer or None, got -1"),
    ],
)
def test_image_options_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        load_dataset("digits", **options)


@pytest.fixture
def wav_folder(tmp_path):
    for index in range(10):
        soundfile.write(tmp_path / f"clip{index}.wav", np.linspace(-0.5, 0.5, 100 + index), 8000)
    return tmp_path


def test_wav_spec_returns_audio_dataset(wav_folder):
    dataset = load_dataset(f"wav:{wav_folder}", channels=1, quantization="linear", num_bins=1024)

    assert isinstance(dataset, AudioDataset)
    assert dataset.num_bins == 1024
    assert dataset.quantization == "linear"
    assert dataset.clips[0].dtype == np.uint16


@pytest.mark.parametrize(
    "options, message",
    [
        ({"crop": 4}, "crop=4 cannot be used with wav datasets, which are mono audio"),
        ({"resize": (2, 2)}, r"resize=\(2, 2\) cannot be used with wav"),
        ({"channels": 2}, "channels=2 cannot be used with wav"),
        ({"download": True}, "download=True applies only to mnist and cifar10, not to wav"),
        ({"quantization": "a-law"}, "quantization must be one of"),
        ({"num_bins": 1}, "num_bins must be an integer >= 2, got 1"),
        ({"sample_rate": 0}, "sample_rate must be a positive integer in Hz or None, got 0"),
    ],
)
def test_wav_options_rejected(wav_folder, options, message):
    with pytest.raises(ValueError, match=message):
        load_dataset(f"wav:{wav_folder}", **options)


def test_audio_defaults_accepted_for_images():
    # A command line may pass the audio defaults with every dataset.
    dataset = load_dataset("digits", sample_rate=None, mono=False, quantization="mu-law", max_examples=100)

    assert sum(dataset.num_examples(split) for split in dataset.split_names) == 100
