"""Tests of the latent tools on audio clips of varying length: padding, encoding, files, statistics, figures."""

import math

import numpy as np
import pytest
import soundfile
import torch

from arflows import create_flow
from arflows.data import load_dataset
from arflows.latent import (
    encode_split,
    inspect_latents,
    interpolate,
    load_latents,
    neighbour_correlations,
    save_figure,
    save_latents,
    uniformity_summary,
)
from arflows.latent.audio import (
    LATENT_PADDING,
    crop_or_pad,
    decode_clips,
    encode_clips,
    length_groups,
    pad_clips,
    silence_level,
    unpad,
    valid_values,
)
from arflows.latent.audio_figures import audio_interpolation_figure, audio_latent_figure, waveform_figure
from arflows.latent.figures import histogram_figure
from arflows.latent.files import LatentFileError
from arflows.latent.uniformity import ks_statistic_map
from arflows.training import evaluate_dataset

LENGTHS = (23, 40, 7, 40, 31)


@pytest.fixture(autouse=True)
def one_thread():
    """Run torch on one thread: sequential decoding runs thousands of tiny products that threads slow down."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _flow(output="categorical", dtype=torch.float32):
    torch.manual_seed(0)
    options = {"residual_channels": 6, "dilation_channels": 6, "skip_channels": 6, "num_layers": 3,
               "num_cycles": 1}
    if output == "dmol":
        options.update(output="dmol", num_components=2)
    flow = create_flow("wavenet", (1, 32), 256, **options).to(dtype).eval()
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.mul_(2.0)
    return flow


def _clips(lengths=LENGTHS, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (1, length), generator=generator) for length in lengths]


@pytest.fixture
def wav_dataset(tmp_path):
    """A folder of 12 tones of different lengths, loaded with 4 validation and 4 test clips."""
    for number in range(12):
        length = 150 + 37 * number
        time = np.arange(length) / 8000
        soundfile.write(tmp_path / f"tone{number}.wav", 0.3 * np.sin(2 * np.pi * (200 + 30 * number) * time), 8000,
                        subtype="PCM_16")
    return load_dataset(f"wav:{tmp_path}", validation_fraction=0.3, test_fraction=0.3)


def test_pad_and_unpad_round_trip():
    clips = _clips()

    padded, lengths = pad_clips(clips, padding_value=255)

    assert padded.shape == (5, 1, 40)
    assert lengths.tolist() == list(LENGTHS)
    assert (padded[2, 0, 7:] == 255).all()
    for clip, restored in zip(clips, unpad(padded, lengths)):
        assert np.array_equal(restored, clip.numpy())
    assert valid_values(padded, lengths).size == sum(LENGTHS)
    with pytest.raises(ValueError, match="empty list"):
        pad_clips([])


def test_length_groups_batch_equal_lengths_only():
    batches = length_groups(LENGTHS, batch_size=1)
    grouped = length_groups(LENGTHS, batch_size=8)

    assert sorted(np.concatenate(grouped).tolist()) == list(range(5))
    assert [batch.tolist() for batch in grouped] == [[0], [1, 3], [2], [4]]
    assert all(len(batch) == 1 for batch in batches)
    with pytest.raises(ValueError, match="batch_size"):
        length_groups(LENGTHS, batch_size=0)


@pytest.mark.parametrize("output", ["categorical", "dmol"])
def test_encode_decode_clips_exact_and_batching_only_rounds(output):
    flow = _flow(output)
    clips = _clips()

    latents, log_det, lengths = encode_clips(flow, clips, generator=torch.Generator().manual_seed(4), batch_size=8)
    alone, _, _ = encode_clips(flow, clips, generator=torch.Generator().manual_seed(4), batch_size=1)
    decoded = decode_clips(flow, latents, lengths, batch_size=3)

    # The noise is drawn per clip, so batching changes the latents only by rounding in the network.
    assert np.allclose(latents, alone, rtol=0.0, atol=1e-5)
    assert (latents[2, 0, 7:] == LATENT_PADDING).all()
    for clip, restored in zip(clips, unpad(decoded, lengths)):
        assert np.array_equal(restored, clip.numpy())
    for row, clip in enumerate(clips):
        expected = flow.log_prob(clip.unsqueeze(0)).item() + clip.shape[-1] * math.log(256)
        assert log_det[row] == pytest.approx(expected, rel=1e-5)


def test_decode_clips_rejects_bad_lengths():
    flow = _flow()
    latents = np.full((2, 1, 10), 0.5, dtype=np.float32)

    with pytest.raises(ValueError, match=r"lengths lie in \[0, 10\]"):
        decode_clips(flow, latents, np.array([0, 10]))
    with pytest.raises(ValueError, match="one per clip"):
        decode_clips(flow, latents, np.array([10]))
    with pytest.raises(ValueError, match=r"expected audio latents \(N, 1, T\)"):
        decode_clips(flow, latents[:, 0], np.array([10, 10]))


def test_encode_split_of_wav_folder_counts_every_sample(wav_dataset):
    flow = _flow()

    encoded = encode_split(flow, wav_dataset, "test", generator=torch.Generator().manual_seed(0))
    evaluated = evaluate_dataset(flow, wav_dataset.split("test"))

    test_lengths = wav_dataset.lengths[wav_dataset.indices("test")]
    assert encoded.lengths.tolist() == test_lengths.tolist()
    assert encoded.latents.shape == (len(test_lengths), 1, test_lengths.max())
    assert encoded.bits_per_dim == pytest.approx(evaluated.bits_per_dim, rel=1e-5)
    with pytest.raises(TypeError, match="not a tensor"):
        encode_split(flow, wav_dataset, "test", noise=torch.full((4, 1, 10), 0.5))


def test_latent_file_keeps_lengths(tmp_path):
    flow = _flow()
    latents, _, lengths = encode_clips(flow, _clips(), generator=torch.Generator().manual_seed(0))
    indices, labels = np.arange(5), np.full(5, -1)

    save_latents(tmp_path / "z.npz", latents, indices, labels, flow=flow, lengths=lengths,
                 info={"sample_rate": 8000, "quantization": "mu-law"})
    loaded = load_latents(tmp_path / "z.npz")

    assert np.array_equal(loaded.latents, latents)
    assert loaded.lengths.tolist() == list(LENGTHS)
    assert loaded.metadata["sample_rate"] == 8000
    with pytest.raises(ValueError, match="maximum is the padded length 40"):
        save_latents(tmp_path / "bad.npz", latents, indices, labels, flow=flow, lengths=lengths - 1, info={})

    # A file whose lengths disagree with its latents is rejected on reading, too.
    with np.load(tmp_path / "z.npz") as archive:
        contents = dict(archive)
    contents["lengths"] = contents["lengths"][:3]
    np.savez(tmp_path / "broken.npz", **contents)
    with pytest.raises(LatentFileError, match="one per clip"):
        load_latents(tmp_path / "broken.npz")


def test_uniformity_ignores_padding():
    rng = np.random.default_rng(0)
    lengths = np.array([300, 120, 800, 45])
    latents = np.zeros((4, 1, 800))  # padding of 0 would fail a KS test at once if it were counted
    for row, length in enumerate(lengths):
        latents[row, 0, :length] = rng.random(length)

    summary = uniformity_summary(latents, lengths=lengths)
    correlations = neighbour_correlations(latents, lengths)
    statistic_map, _ = ks_statistic_map(latents, lengths)

    assert summary["ks"]["num_values"] == lengths.sum()
    assert summary["ks"]["p_value"] > 1e-3
    assert summary["min"] > 0.0
    assert summary["lengths"] == {"min": 45, "max": 800, "total": int(lengths.sum())}
    assert summary["ks_map"]["num_steps"] == 45
    assert statistic_map.shape == (1, 45)
    assert correlations["left"].num_pairs == int((lengths - 1).sum())
    assert abs(correlations["left"].z_score) < 4.0
    with pytest.raises(ValueError, match="expected values in"):
        uniformity_summary(latents, lengths=np.array([300, 120, 801, 45]))


def test_inspect_clips_and_samples_of_given_length():
    flow = _flow()
    latents, _, lengths = encode_clips(flow, _clips(), generator=torch.Generator().manual_seed(0))

    inspection = inspect_latents(flow, latents, lengths=lengths, num_samples=6, sample_length=50,
                                 generator=torch.Generator().manual_seed(1), batch_size=4)
    figures = inspection.figures()

    assert inspection.samples.shape == (6, 1, 50)
    assert inspection.summary["data"]["ks"]["num_values"] == sum(LENGTHS)
    # Samples of the flow itself re-encode to uniform latents, whatever the weights.
    assert inspection.summary["samples"]["ks"]["p_value"] > 1e-3
    assert set(figures) == {"data_histogram", "data_ks_map", "samples_histogram", "samples_ks_map", "correlations"}


def test_interpolate_cropped_clips_endpoints_exact():
    flow = _flow()
    silence = silence_level(256, "mu-law")
    clips = _clips(lengths=(30, 45, 12, 60))
    q = torch.from_numpy(np.stack([crop_or_pad(clip, 40, silence) for clip in clips]))  # (4, 1, 40)

    result = interpolate(flow, q[:2], q[2:], 4, generator=torch.Generator().manual_seed(0))

    assert silence == 128
    assert (q[2, 0, 12:] == silence).all()
    assert torch.equal(q[1, 0], clips[1][0, :40])
    assert result.data.shape == (2, 4, 1, 40)
    assert result.endpoints_exact
    with pytest.raises(ValueError, match="positive number of samples"):
        crop_or_pad(clips[0], 0, silence)


def test_audio_figures_render(tmp_path):
    rng = np.random.default_rng(3)
    q, lengths = pad_clips([rng.integers(0, 256, length) for length in (500, 120, 900)])
    z, _ = pad_clips([rng.random(length) for length in (500, 120, 900)], padding_value=0.5)
    data = rng.integers(0, 256, (2, 3, 1, 200))
    figures = {
        "clips": audio_latent_figure(q, z, lengths, 256, sample_rate=8000, title="clips"),
        "waveforms": waveform_figure(q, lengths, 256, sample_rate=8000, num_columns=2),
        "interpolation": audio_interpolation_figure(data, 256, [1.0, 0.5, 0.0], mode="gaussian"),
        "histogram": histogram_figure(z, lengths=lengths),
    }

    for name, figure in figures.items():
        path = tmp_path / f"{name}.png"
        save_figure(figure, path)
        assert path.stat().st_size > 5000, name
    with pytest.raises(ValueError, match=r"lengths has shape \(3,\); expected \(2,\), one per clip"):
        audio_latent_figure(q, z[:2], lengths, 256)
