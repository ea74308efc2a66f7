"""Folders of WAV files as quantized audio clips, with random fixed-length crops for training."""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.signal
import soundfile
import torch

from .dataset import DiscreteDataset, choose_subset, hold_out_validation, list_files, partition_examples
from .quantization import QUANTIZATIONS, ArrayLike, dequantize, quantize

__all__ = [
    "FSDD_FILE_NAME",
    "AudioClipSplit",
    "AudioDataset",
    "AudioSegmentSplit",
    "collate_audio_clips",
    "load_wav_folder",
    "read_wav",
    "save_wav",
]

logger = logging.getLogger(__name__)

DEFAULT_AUDIO_BINS = 256

# Free Spoken Digit Dataset file names, {digit}_{speaker}_{recording index}.wav. FSDD's own split puts
# recordings 0 to 4 of every speaker and digit into the test set.
FSDD_FILE_NAME = re.compile(r"(?P<digit>[0-9])_(?P<speaker>[^_]+)_(?P<index>[0-9]+)\.wav", re.IGNORECASE)
FSDD_TEST_INDICES = range(5)


def _storage_dtype(num_bins: int) -> type:
    if num_bins <= 1 << 8:
        return np.uint8
    if num_bins <= 1 << 16:
        return np.uint16
    return np.int64


class AudioClipSplit(torch.utils.data.Dataset):
    """One split of whole clips. Item i is ``(q, label)`` with q an int64 tensor of shape 1×T_i.

    Clip lengths vary, so a DataLoader needs ``batch_size=1`` or ``collate_fn=collate_audio_clips``.
    """

    def __init__(self, clips: Sequence[np.ndarray], labels: np.ndarray, indices: np.ndarray) -> None:
        self.clips = clips
        self.labels = labels
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        example = self.indices[index]
        q = torch.from_numpy(self.clips[example].astype(np.int64))[None]  # (1, T)
        return q, int(self.labels[example])


class AudioSegmentSplit(torch.utils.data.Dataset):
    """One split as random crops of ``segment_length`` samples, one crop per clip and access.

    Item i is ``(q, label)`` with q an int64 tensor of shape 1×``segment_length``, cut at an offset drawn
    uniformly from the valid offsets of the i-th long-enough clip. Clips shorter than ``segment_length``
    are skipped, and their count is logged as a warning. Offsets come from ``generator``, or from torch's
    global generator when it is None, which DataLoader worker processes seed differently from each other.
    Each worker process gets its own copy of a given ``generator``, so with ``num_workers`` > 0 the workers
    repeat each other's offsets; leave it None there.
    """

    def __init__(
        self,
        clips: Sequence[np.ndarray],
        labels: np.ndarray,
        indices: np.ndarray,
        segment_length: int,
        *,
        generator: torch.Generator | None = None,
        source: str = "",
    ) -> None:
        if (
            isinstance(segment_length, bool)
            or not isinstance(segment_length, (int, np.integer))
            or segment_length < 1
        ):
            raise ValueError(f"segment_length must be a positive integer or None, got {segment_length!r}")
        lengths = np.array([len(clips[index]) for index in indices], dtype=np.int64)
        long_enough = lengths >= segment_length
        if not long_enough.any():
            longest = int(lengths.max()) if len(lengths) else 0
            raise ValueError(
                f"no clip of {source} has segment_length={segment_length} samples (the longest has {longest}); "
                f"pass a smaller segment_length"
            )
        skipped = int((~long_enough).sum())
        if skipped:
            logger.warning(
                "Skipped %d of %d clips of %s that are shorter than segment_length=%d",
                skipped,
                len(indices),
                source,
                segment_length,
            )

        self.clips = clips
        self.labels = labels
        self.indices = np.asarray(indices)[long_enough]
        self.segment_length = int(segment_length)
        self.generator = generator

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        example = self.indices[index]
        clip = self.clips[example]
        num_offsets = len(clip) - self.segment_length + 1
        offset = int(torch.randint(num_offsets, (1,), generator=self.generator).item())
        segment = clip[offset : offset + self.segment_length]
        return torch.from_numpy(segment.astype(np.int64))[None], int(self.labels[example])  # (1, L)


def collate_audio_clips(
    batch: Sequence[tuple[torch.Tensor, int]], padding_value: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad clips of different lengths at the end into one batch, for ``DataLoader(collate_fn=...)``.

    Positions at or after a clip's length hold ``padding_value``, which is a valid level, so a loss must
    mask them. For a causal model such as WaveNet, the masked per-clip loss equals the loss of the
    unpadded clip because end padding cannot influence earlier outputs.

    Args:
        batch: pairs ``(q, label)`` with q of shape 1×T_i.
        padding_value: the level written after each clip's end.

    Returns:
        ``(q, labels, lengths)``: q int64 of shape B×1×max(T_i), labels int64 of shape B, lengths int64
        of shape B.
    """
    lengths = torch.tensor([q.shape[-1] for q, _ in batch], dtype=torch.int64)
    # (B, 1, T_max)
    padded = torch.full((len(batch), 1, int(lengths.max())), padding_value, dtype=torch.int64)
    for row, (q, _) in enumerate(batch):
        padded[row, :, : q.shape[-1]] = q
    labels = torch.tensor([label for _, label in batch], dtype=torch.int64)
    return padded, labels, lengths


class AudioDataset(DiscreteDataset):
    """Quantized mono clips of one sample rate, held in memory; ``data_shape`` is (1, None).

    The None in ``data_shape`` is the clip length, which varies. ``split(name)`` returns whole clips
    (shape 1×T_i) and ``split(name, segment_length=L)`` random crops of shape 1×L.

    Attributes:
        clips: one 1-D integer array of levels per clip (uint8 for K <= 256, uint16 for K <= 65536).
        lengths: int64 array of clip lengths in samples.
        sample_rate: the common sample rate in Hz.
        quantization: "mu-law" or "linear", see ``quantize``.
        paths: the source file of each clip.
    """

    def __init__(
        self,
        *,
        spec: str,
        num_bins: int,
        clips: list[np.ndarray],
        labels: np.ndarray,
        splits: dict[str, np.ndarray],
        sample_rate: int,
        quantization: str,
        paths: Sequence[Path],
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__(
            name="wav",
            spec=spec,
            num_bins=num_bins,
            data_shape=(1, None),
            labels=labels,
            splits=splits,
            class_names=class_names,
        )
        self.clips = clips
        self.lengths = np.array([len(clip) for clip in clips], dtype=np.int64)
        self.sample_rate = int(sample_rate)
        self.quantization = quantization
        self.paths = tuple(paths)

    def split(
        self,
        name: str,
        *,
        segment_length: int | None = None,
        generator: torch.Generator | None = None,
    ) -> AudioClipSplit | AudioSegmentSplit:
        """Return split ``name`` as whole clips, or as random crops of ``segment_length`` samples.

        Crops work on every split, but evaluation usually takes whole clips so that it is deterministic.
        See ``AudioSegmentSplit`` for how short clips and ``generator`` are handled.
        """
        self._check_split_name(name)
        if segment_length is None:
            return AudioClipSplit(self.clips, self.labels, self._splits[name])
        return AudioSegmentSplit(
            self.clips,
            self.labels,
            self._splits[name],
            segment_length,
            generator=generator,
            source=f"split {name!r} of {self.spec}",
        )


def read_wav(path: Path, *, mono: bool = False) -> tuple[np.ndarray, int]:
    """Read a WAV file with soundfile as float64 samples of one channel.

    b-bit PCM reads as pcm / 2^(b-1), exactly, and float files keep their values. With ``mono`` True the
    channels are averaged.

    Returns:
        The samples of shape (T,) and the sample rate in Hz.

    Raises:
        ValueError: if soundfile cannot read the file, or it has several channels and ``mono`` is False.
    """
    try:
        audio, sample_rate = soundfile.read(path, dtype="float64", always_2d=True)  # (T, channels)
    except (RuntimeError, OSError) as error:
        # soundfile raises LibsndfileError, a RuntimeError, for unknown formats and corrupt data.
        raise ValueError(f"cannot read WAV file {path}: {error}") from error

    num_channels = audio.shape[1]
    if num_channels == 1:
        return audio[:, 0], int(sample_rate)
    if not mono:
        raise ValueError(
            f"WAV file {path} has {num_channels} channels; expected mono audio, or pass mono=True (--mono) "
            f"to average the channels"
        )
    return audio.mean(axis=1), int(sample_rate)


def _common_sample_rate(paths: Sequence[Path], rates: Sequence[int], root: Path) -> int:
    counts = Counter(rates)
    if len(counts) == 1:
        return rates[0]

    majority = counts.most_common(1)[0][0]
    others = [f"{path} ({rate} Hz)" for path, rate in zip(paths, rates) if rate != majority]
    listed = ", ".join(others[:10]) + (f" and {len(others) - 10} more" if len(others) > 10 else "")
    raise ValueError(
        f"WAV files in {root} have different sample rates: {counts[majority]} files have {majority} Hz, but "
        f"{listed}; pass sample_rate (--sample-rate) to resample all files to one rate"
    )


def _resample(audio: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """Resample with a polyphase filter (scipy's Kaiser-windowed FIR) from ``rate`` to ``target_rate`` Hz."""
    divisor = math.gcd(rate, target_rate)
    return scipy.signal.resample_poly(audio, target_rate // divisor, rate // divisor)


def _split_clips(
    paths: Sequence[Path], *, validation_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, tuple[str, ...] | None, dict[str, np.ndarray]]:
    """Return labels, class names and splits: FSDD's own test split where the file names allow it.

    When every file name has the FSDD form, the label is the spoken digit, and if recordings 0 to 4
    are present they form the test split. Otherwise the clips are unlabelled (-1). Without FSDD test
    recordings, seeded ``test_fraction`` and ``validation_fraction`` parts are held out.
    """
    matches = [FSDD_FILE_NAME.fullmatch(path.name) for path in paths]
    if not all(matches):
        labels = np.full(len(paths), -1, dtype=np.int64)
        splits = partition_examples(
            len(paths), validation_fraction=validation_fraction, test_fraction=test_fraction, seed=seed
        )
        return labels, None, splits

    labels = np.array([int(match["digit"]) for match in matches], dtype=np.int64)
    class_names = tuple(str(digit) for digit in range(10))
    is_test = np.array([int(match["index"]) in FSDD_TEST_INDICES for match in matches])
    if is_test.any():
        logger.info("Using FSDD's test split: recordings 0 to 4, %d of %d files", is_test.sum(), len(paths))
        splits = hold_out_validation(
            np.flatnonzero(~is_test),
            np.flatnonzero(is_test),
            validation_fraction=validation_fraction,
            seed=seed,
        )
    else:
        logger.info(
            "FSDD file names without recordings 0 to 4: holding out a seeded test_fraction=%s as the test split",
            test_fraction,
        )
        splits = partition_examples(
            len(paths), validation_fraction=validation_fraction, test_fraction=test_fraction, seed=seed
        )
    return labels, class_names, splits


def load_wav_folder(
    path: Path,
    *,
    spec: str | None = None,
    sample_rate: int | None = None,
    mono: bool = False,
    quantization: str = "mu-law",
    num_bins: int | None = None,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
    max_examples: int | None = None,
) -> AudioDataset:
    """Load every .wav file below ``path`` (recursively) as one quantized clip.

    soundfile reads 8-, 16-, 24- and 32-bit PCM and float WAV. Files with several channels are rejected
    unless ``mono`` averages them. If ``sample_rate`` is given, files at other rates are resampled to it
    (``scipy.signal.resample_poly``), and any resampler overshoot beyond [-1, 1] is clipped with a
    warning. Without ``sample_rate``, all files must share one rate. Silent files are kept with a
    warning. Samples are then quantized to K = ``num_bins`` levels (default 256) by ``quantization``.
    Splits follow FSDD's test split when the file names allow it, see ``_split_clips``.
    ``max_examples`` reads only a seeded random choice of that many files.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: for no WAV files, a file that cannot be read, an empty file, several channels
            without ``mono``, samples outside [-1, 1] or mixed sample rates without ``sample_rate``.
            The message names the file.
    """
    num_bins = DEFAULT_AUDIO_BINS if num_bins is None else num_bins
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or num_bins < 2:
        raise ValueError(f"num_bins must be an integer >= 2, got {num_bins!r}")
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    if sample_rate is not None and (
        isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate < 1
    ):
        raise ValueError(f"sample_rate must be a positive integer in Hz or None, got {sample_rate!r}")

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"WAV folder {path} not found")
    if not path.is_dir():
        raise ValueError(f"wav: expects a folder of .wav files, got the file {path}")
    files = [file for file in list_files(path) if file.suffix.lower() == ".wav"]
    if not files:
        raise ValueError(f"no .wav files found in {path} or its subfolders")
    files = [files[index] for index in choose_subset(len(files), max_examples, seed=seed)]

    audio_clips, rates = [], []
    for file in files:
        audio, rate = read_wav(file, mono=mono)
        if len(audio) == 0:
            raise ValueError(f"WAV file {file} has no samples")
        peak = float(np.abs(audio).max())
        if not peak <= 1.0:
            raise ValueError(
                f"WAV file {file} has samples of magnitude {peak}; expected samples in [-1, 1] "
                f"(normalize float WAV files)"
            )
        audio_clips.append(audio)
        rates.append(rate)

    target_rate = sample_rate if sample_rate is not None else _common_sample_rate(files, rates, path)
    _resample_clips(audio_clips, rates, target_rate, path)

    silent = [file for file, audio in zip(files, audio_clips) if not np.any(audio)]
    if silent:
        logger.warning(
            "Kept %d silent WAV files (every sample is 0) in %s, for example %s", len(silent), path, silent[0]
        )

    storage = _storage_dtype(num_bins)
    clips = [quantize(audio, num_bins, quantization).astype(storage) for audio in audio_clips]
    labels, class_names, splits = _split_clips(
        files, validation_fraction=validation_fraction, test_fraction=test_fraction, seed=seed
    )
    logger.info(
        "Read %d WAV files (%.1f s of audio at %d Hz) from %s",
        len(files),
        sum(len(clip) for clip in clips) / target_rate,
        target_rate,
        path,
    )
    return AudioDataset(
        spec=spec or f"wav:{path}",
        num_bins=num_bins,
        clips=clips,
        labels=labels,
        splits=splits,
        sample_rate=target_rate,
        quantization=quantization,
        paths=files,
        class_names=class_names,
    )


def _resample_clips(
    audio_clips: list[np.ndarray], rates: Sequence[int], target_rate: int, root: Path
) -> None:
    """Resample, in place, every clip whose rate differs from ``target_rate``; clip overshoot to [-1, 1]."""
    resampled = clipped_files = clipped_samples = 0
    for position, rate in enumerate(rates):
        if rate == target_rate:
            continue
        audio = _resample(audio_clips[position], rate, target_rate)
        outside = int(np.count_nonzero(np.abs(audio) > 1.0))
        if outside:
            clipped_files += 1
            clipped_samples += outside
            audio = np.clip(audio, -1.0, 1.0)
        audio_clips[position] = audio
        resampled += 1

    if resampled:
        logger.info("Resampled %d WAV files in %s to %d Hz", resampled, root, target_rate)
    if clipped_files:
        logger.warning(
            "Clipped %d samples in %d resampled WAV files in %s to [-1, 1], where the resampling filter overshot",
            clipped_samples,
            clipped_files,
            root,
        )


def save_wav(
    path: Path,
    q: ArrayLike,
    sample_rate: int,
    *,
    num_bins: int = DEFAULT_AUDIO_BINS,
    quantization: str = "mu-law",
) -> None:
    """Decode levels with ``dequantize`` and write them as a mono 16-bit PCM WAV file.

    A decoded sample x becomes pcm = min(round(x 32768), 32767), so only x = 1 is clipped, by one step.
    Linear levels with K = 65536 are written exactly as pcm = q - 32768.

    Args:
        path: the file to write; it is overwritten.
        q: integer levels of shape (T,) or (1, T), as a NumPy array or tensor.
        sample_rate: the sample rate in Hz.
        num_bins: the number of levels K.
        quantization: "mu-law" or "linear", as used to encode ``q``.
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive integer in Hz, got {sample_rate!r}")
    levels = q.detach().cpu() if isinstance(q, torch.Tensor) else np.asarray(q)
    if levels.ndim == 2 and levels.shape[0] == 1:
        levels = levels[0]
    if levels.ndim != 1:
        raise ValueError(f"save_wav expects levels of shape (T,) or (1, T), got {tuple(levels.shape)}")

    audio = np.asarray(dequantize(levels, num_bins, quantization))
    pcm = np.clip(np.floor(audio * 32768.0 + 0.5), -32768, 32767).astype(np.int16)
    soundfile.write(path, pcm, int(sample_rate), subtype="PCM_16", format="WAV")
