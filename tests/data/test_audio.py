"""Tests of WAV folder loading, FSDD splits, random crops, batching and writing WAV files."""

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile
import torch

from arflows.data import load_dataset
from arflows.data.audio import collate_audio_clips, read_wav, save_wav
from arflows.data.quantization import linear_encode, mu_law_encode

SHARED_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
FSDD = SHARED_DATA / "fsdd" / "train"

needs_fsdd = pytest.mark.skipif(not FSDD.is_dir(), reason=f"FSDD recordings not found at {FSDD}")


def _write_pcm(path, pcm, bits, sample_rate=8000):
    """Write integer b-bit PCM samples exactly, whatever b, by placing them in the top bits of int32."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subtype = {8: "PCM_U8", 16: "PCM_16", 24: "PCM_24", 32: "PCM_32"}[bits]
    shifted = (np.asarray(pcm, dtype=np.int64) << (32 - bits)).astype(np.int32)
    soundfile.write(path, shifted, sample_rate, subtype=subtype)


def _tone(length, sample_rate=8000, frequency=440.0, amplitude=0.5):
    return amplitude * np.sin(2 * np.pi * frequency * np.arange(length) / sample_rate)


def _load(folder, **options):
    options.setdefault("validation_fraction", 0.0)
    options.setdefault("test_fraction", 0.0)
    return load_dataset(f"wav:{folder}", **options)


@pytest.fixture(scope="module")
def fsdd():
    if not FSDD.is_dir():
        pytest.skip(f"FSDD recordings not found at {FSDD}")
    return load_dataset(f"wav:{FSDD}", sample_rate=8000)


# Real recordings


def test_fsdd_metadata_and_splits(fsdd):
    assert fsdd.name == "wav"
    assert fsdd.spec == f"wav:{FSDD}"
    assert fsdd.num_bins == 256
    assert fsdd.data_shape == (1, None)
    assert fsdd.sample_rate == 8000
    assert fsdd.quantization == "mu-law"
    assert fsdd.class_names == tuple("0123456789")
    assert [fsdd.num_examples(split) for split in fsdd.split_names] == [2160, 270, 270]

    indices = np.concatenate([fsdd.indices(split) for split in fsdd.split_names])
    assert len(np.unique(indices)) == 2700
    for path, label in zip(fsdd.paths, fsdd.labels):
        assert int(path.name.split("_")[0]) == label
    # The folder contains recordings 5 to 49 only, so the test split is held out at random.
    test_recordings = {int(fsdd.paths[index].stem.split("_")[2]) for index in fsdd.indices("test")}
    assert min(test_recordings) >= 5
    assert len(test_recordings) > 10


@needs_fsdd
def test_fsdd_splits_are_seeded():
    again = load_dataset(f"wav:{FSDD}", max_examples=400, seed=0)
    same = load_dataset(f"wav:{FSDD}", max_examples=400, seed=0)
    other = load_dataset(f"wav:{FSDD}", max_examples=400, seed=5)

    assert again.paths == same.paths
    for split in again.split_names:
        assert np.array_equal(again.indices(split), same.indices(split))
    assert again.paths != other.paths


def test_fsdd_clip_matches_file(fsdd):
    clip_split = fsdd.split("test")
    q, label = clip_split[3]
    path = fsdd.paths[fsdd.indices("test")[3]]
    audio, sample_rate = soundfile.read(path, dtype="float64")

    assert sample_rate == 8000
    assert q.dtype == torch.int64
    assert q.shape == (1, len(audio))
    assert np.array_equal(q[0].numpy(), mu_law_encode(audio, 256))
    assert label == int(path.name[0])


def test_fsdd_random_crops(fsdd, caplog):
    with caplog.at_level(logging.WARNING, logger="arflows.data.audio"):
        segments = fsdd.split("train", segment_length=4000, generator=torch.Generator().manual_seed(0))
    short = int((fsdd.lengths[fsdd.indices("train")] < 4000).sum())
    assert short > 0
    assert len(segments) == fsdd.num_examples("train") - short
    assert any(f"Skipped {short} of 2160 clips" in record.getMessage() for record in caplog.records)

    for index in (0, 1, len(segments) - 1):
        q, _ = segments[index]
        assert q.shape == (1, 4000)
        clip = fsdd.clips[segments.indices[index]].astype(np.int64)
        windows = np.lib.stride_tricks.sliding_window_view(clip, 4000)
        assert (windows == q[0].numpy()).all(axis=1).any(), "a crop must be a window of its clip"

    first = fsdd.split("train", segment_length=4000, generator=torch.Generator().manual_seed(1))
    second = fsdd.split("train", segment_length=4000, generator=torch.Generator().manual_seed(1))
    for index in range(5):
        assert torch.equal(first[index][0], second[index][0])

    batch, labels = next(iter(torch.utils.data.DataLoader(segments, batch_size=8)))
    assert batch.shape == (8, 1, 4000)
    assert labels.shape == (8,)


def test_fsdd_whole_clip_batches(fsdd):
    clips = fsdd.split("validation")
    loader = torch.utils.data.DataLoader(clips, batch_size=4, collate_fn=collate_audio_clips)
    q, labels, lengths = next(iter(loader))

    expected_lengths = fsdd.lengths[fsdd.indices("validation")[:4]]
    assert labels.tolist() == fsdd.labels[fsdd.indices("validation")[:4]].tolist()
    assert lengths.tolist() == expected_lengths.tolist()
    assert q.shape == (4, 1, int(expected_lengths.max()))
    for row in range(4):
        assert torch.equal(q[row, :, : lengths[row]], clips[row][0])
        assert torch.all(q[row, :, lengths[row] :] == 0)


@needs_fsdd
def test_fsdd_resampled():
    dataset = load_dataset(f"wav:{FSDD}", sample_rate=16000, max_examples=20)
    audio, _ = soundfile.read(dataset.paths[0], dtype="float64")

    assert dataset.sample_rate == 16000
    assert dataset.lengths[0] == 2 * len(audio)
    expected = np.clip(scipy.signal.resample_poly(audio, 2, 1), -1.0, 1.0)
    assert np.array_equal(dataset.clips[0].astype(np.int64), mu_law_encode(expected, 256))


# Synthetic files


@pytest.mark.parametrize("bits", [8, 16, 24, 32])
def test_pcm_formats_exact(tmp_path, bits):
    rng = np.random.default_rng(bits)
    half = 1 << (bits - 1)
    pcm = rng.integers(-half, half, size=500)
    pcm[:2] = [-half, half - 1]
    _write_pcm(tmp_path / "clip.wav", pcm, bits)

    audio, _ = read_wav(tmp_path / "clip.wav")
    assert np.array_equal(audio * half, pcm)

    num_bins = min(1 << bits, 1 << 24)
    dataset = _load(tmp_path, quantization="linear", num_bins=num_bins)
    q = dataset.split("train")[0][0][0].numpy()
    if bits <= 24:
        # Linear quantization with K = 2^b is the PCM code plus 2^(b-1).
        assert np.array_equal(q, pcm + half)
    else:
        assert np.array_equal(q, linear_encode(pcm / half, num_bins))

    mu_law = _load(tmp_path)
    assert np.array_equal(mu_law.split("train")[0][0][0].numpy(), mu_law_encode(pcm / half, 256))


@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE"])
def test_float_wav(tmp_path, subtype):
    values = np.linspace(-1.0, 1.0, 301).astype(np.float32)
    soundfile.write(tmp_path / "float.wav", values, 8000, subtype=subtype)

    dataset = _load(tmp_path)
    assert np.array_equal(dataset.clips[0].astype(np.int64), mu_law_encode(values.astype(np.float64), 256))

    loud = np.array([0.0, 1.5, -0.25], dtype=np.float32)
    soundfile.write(tmp_path / "loud.wav", loud, 8000, subtype=subtype)
    with pytest.raises(
        ValueError, match=r"loud.wav has samples of magnitude 1.5; expected samples in \[-1, 1\]"
    ):
        _load(tmp_path)


def test_stereo_needs_mono(tmp_path):
    left, right = _tone(400), _tone(400, frequency=300.0)
    soundfile.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 8000, subtype="FLOAT")

    with pytest.raises(
        ValueError, match=r"stereo.wav has 2 channels; expected mono audio, or pass mono=True"
    ):
        _load(tmp_path)

    dataset = _load(tmp_path, mono=True)
    expected = (left.astype(np.float32).astype(np.float64) + right.astype(np.float32).astype(np.float64)) / 2
    assert np.array_equal(dataset.clips[0].astype(np.int64), mu_law_encode(expected, 256))


def test_mixed_sample_rates(tmp_path, caplog):
    for name in ("a", "b", "c"):
        soundfile.write(tmp_path / f"{name}.wav", _tone(800), 8000, subtype="PCM_16")
    square = np.where(_tone(1600, sample_rate=16000, frequency=1000.0) >= 0, 0.999, -0.999)
    soundfile.write(tmp_path / "fast.wav", square, 16000, subtype="PCM_16")

    with pytest.raises(ValueError) as raised:
        _load(tmp_path)
    message = str(raised.value)
    assert "3 files have 8000 Hz" in message
    assert f"{tmp_path / 'fast.wav'} (16000 Hz)" in message
    assert "pass sample_rate" in message

    with caplog.at_level(logging.INFO, logger="arflows.data.audio"):
        dataset = _load(tmp_path, sample_rate=8000)
    fast_index = [path.name for path in dataset.paths].index("fast.wav")
    audio, _ = soundfile.read(tmp_path / "fast.wav", dtype="float64")
    resampled = scipy.signal.resample_poly(audio, 1, 2)
    assert dataset.lengths[fast_index] == math.ceil(len(audio) / 2)
    assert np.array_equal(
        dataset.clips[fast_index].astype(np.int64), mu_law_encode(np.clip(resampled, -1, 1), 256)
    )
    # A full-scale square wave rings past [-1, 1] after the lowpass filter, and the clipping is reported.
    assert np.abs(resampled).max() > 1.0
    assert any(
        "Clipped" in record.getMessage() and record.levelno == logging.WARNING for record in caplog.records
    )
    assert any("Resampled 1 WAV files" in record.getMessage() for record in caplog.records)


def test_bad_wav_files(tmp_path):
    soundfile.write(tmp_path / "good.wav", _tone(100), 8000)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunkjunk")
    with pytest.raises(ValueError, match=f"cannot read WAV file {corrupt}"):
        _load(tmp_path)

    corrupt.unlink()
    soundfile.write(tmp_path / "empty.wav", np.zeros(0), 8000)
    with pytest.raises(ValueError, match=r"empty.wav has no samples"):
        _load(tmp_path)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="WAV folder .*absent not found"):
        load_dataset(f"wav:{tmp_path / 'absent'}")

    (tmp_path / "notes.txt").write_text("no audio here")
    with pytest.raises(ValueError, match="no .wav files found in"):
        load_dataset(f"wav:{tmp_path}")
    with pytest.raises(ValueError, match="expects a folder of .wav files, got the file"):
        load_dataset(f"wav:{tmp_path / 'notes.txt'}")


def test_silent_file_kept_with_warning(tmp_path, caplog):
    soundfile.write(tmp_path / "silent.wav", np.zeros(200), 8000, subtype="PCM_16")
    soundfile.write(tmp_path / "tone.wav", _tone(200), 8000, subtype="PCM_16")

    with caplog.at_level(logging.WARNING, logger="arflows.data.audio"):
        dataset = _load(tmp_path)
    assert len(dataset.clips) == 2
    assert np.all(dataset.clips[0] == 128)
    assert any("Kept 1 silent WAV files" in record.getMessage() for record in caplog.records)


def test_fsdd_names_use_official_test_split(tmp_path):
    for digit in range(2):
        for recording in range(10):
            _write_pcm(tmp_path / "nested" / f"{digit}_alice_{recording}.wav", np.arange(100) * digit, 16)

    dataset = load_dataset(f"wav:{tmp_path}", validation_fraction=0.2)
    recordings = {
        split: sorted(int(dataset.paths[i].stem.split("_")[2]) for i in dataset.indices(split))
        for split in dataset.split_names
    }
    assert recordings["test"] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert min(recordings["train"] + recordings["validation"]) == 5
    assert dataset.num_examples("validation") == 2
    assert dataset.labels.tolist() == [0] * 10 + [1] * 10
    assert dataset.class_names == tuple("0123456789")


def test_other_names_are_unlabelled(tmp_path):
    for index in range(10):
        soundfile.write(tmp_path / f"take{index}.wav", _tone(100 + index), 8000)

    dataset = load_dataset(f"wav:{tmp_path}")
    assert dataset.class_names is None
    assert set(dataset.labels.tolist()) == {-1}
    assert [dataset.num_examples(split) for split in dataset.split_names] == [8, 1, 1]


def test_segment_length_errors(tmp_path):
    soundfile.write(tmp_path / "short.wav", _tone(50), 8000)
    dataset = _load(tmp_path)

    with pytest.raises(
        ValueError, match=r"no clip of split 'train' .* has segment_length=100 samples \(the longest has 50\)"
    ):
        dataset.split("train", segment_length=100)
    with pytest.raises(ValueError, match="segment_length must be a positive integer or None, got 0"):
        dataset.split("train", segment_length=0)
    assert dataset.split("train", segment_length=50)[0][0].shape == (1, 50)


def test_collate_pads_and_reports_lengths():
    batch = [(torch.tensor([[1, 2, 3]]), 4), (torch.tensor([[5]]), -1)]
    q, labels, lengths = collate_audio_clips(batch, padding_value=7)

    assert q.tolist() == [[[1, 2, 3]], [[5, 7, 7]]]
    assert labels.tolist() == [4, -1]
    assert lengths.tolist() == [3, 1]


def test_save_wav_linear_is_exact(tmp_path):
    pcm = np.arange(-32768, 32768, 7)
    q = torch.from_numpy(pcm + 32768)[None]
    save_wav(tmp_path / "out.wav", q, 16000, num_bins=65536, quantization="linear")

    written, sample_rate = soundfile.read(tmp_path / "out.wav", dtype="int16")
    assert sample_rate == 16000
    assert soundfile.info(tmp_path / "out.wav").subtype == "PCM_16"
    assert np.array_equal(written, pcm)


def test_save_wav_mu_law_round_trip(tmp_path):
    q = np.tile(np.arange(256), 3)
    save_wav(tmp_path / "levels.wav", q, 8000)

    dataset = _load(tmp_path)
    assert np.array_equal(dataset.clips[0].astype(np.int64), q)
    with pytest.raises(ValueError, match=r"expects levels of shape \(T,\) or \(1, T\), got \(2, 3\)"):
        save_wav(tmp_path / "bad.wav", np.zeros((2, 3), dtype=np.int64), 8000)
    with pytest.raises(ValueError, match=r"levels in \[0, 300\]"):
        save_wav(tmp_path / "bad.wav", np.array([0, 300]), 8000)


def test_wide_levels_stored_and_returned(tmp_path):
    audio = _tone(300, amplitude=0.9)
    soundfile.write(tmp_path / "tone.wav", audio, 8000, subtype="DOUBLE")

    dataset = _load(tmp_path, num_bins=65536)
    assert dataset.clips[0].dtype == np.uint16
    q = dataset.split("train")[0][0]
    assert q.dtype == torch.int64
    assert np.array_equal(q[0].numpy(), mu_law_encode(audio, 65536))
