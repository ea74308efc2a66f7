"""End-to-end audio tests: WaveNet as an exact flow on WAV files, through the library and the command line.

The mu-law round trip of every level is tested in tests/data/test_quantization.py
(test_encode_decode_every_level); these tests build on it.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from arflows import create_flow
from arflows.checkpoint import load_checkpoint
from arflows.cli import main
from arflows.data import load_dataset, quantize, read_wav

REPO_ROOT = Path(__file__).resolve().parents[1]
FSDD = REPO_ROOT.parent / "shared" / "data" / "fsdd" / "train"

needs_fsdd = pytest.mark.skipif(not FSDD.is_dir(), reason=f"FSDD recordings not found at {FSDD}")

# A WaveNet small enough for sequential decoding of a few hundred steps in a fraction of a second.
TINY_WAVENET = {"residual_channels": 8, "dilation_channels": 8, "skip_channels": 8, "num_layers": 4,
                "num_cycles": 1}

# The training run of the command-line tests: 150 steps of a categorical WaveNet of 22,656 parameters on crops
# of 1,024 samples of 300 recordings. On one thread of a 2-core machine shared with other jobs it took 23 s
# and reached 5.94 bits/sample on the 30 held-out test clips.
TRAIN_ARGUMENTS = ["--model", "wavenet", "--segment-length", "1024", "--residual-channels", "16",
                   "--dilation-channels", "16", "--skip-channels", "32", "--layers", "7", "--cycles", "1",
                   "--batch-size", "8", "--lr", "0.003", "--ema-decay", "0", "--max-steps", "150",
                   "--eval-every", "150", "--max-examples", "300"]


def _arflows(*arguments, timeout=600):
    """Run `python -m arflows ARGUMENTS` in a subprocess on one thread and return the completed process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    # Sequential decoding runs thousands of tiny products, which extra threads only slow down.
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-m", "arflows", *map(str, arguments)], env=env, check=False,
                          capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


def _write_wav(path, samples, sample_rate=8000, subtype="PCM_16"):
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(path, samples, sample_rate, subtype=subtype)
    return path


def _speech_like(length, seed, sample_rate=8000):
    """A decaying two-tone burst with noise, a stand-in for a spoken syllable, in [-1, 1]."""
    rng = np.random.default_rng(seed)
    time = np.arange(length) / sample_rate
    envelope = np.exp(-3.0 * time) * np.minimum(1.0, 20.0 * time)
    tones = np.sin(2 * np.pi * (180 + 40 * seed) * time) + 0.5 * np.sin(2 * np.pi * 900 * time)
    return 0.4 * envelope * tones + 0.01 * rng.standard_normal(length)


def _wavenet_flow(output="categorical", *, seed=0, dtype=torch.float64, kernel_size=2, num_layers=4,
                  num_cycles=1, weight_scale=1.0):
    torch.manual_seed(seed)
    options = dict(TINY_WAVENET, kernel_size=kernel_size, num_layers=num_layers, num_cycles=num_cycles)
    if output == "dmol":
        options.update(output="dmol", num_components=3)
    flow = create_flow("wavenet", (1, 64), 256, **options).to(dtype).eval()
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.mul_(weight_scale)
    return flow


def _per_step_log_prob(flow, q):
    """Return log P(q_t | q_<t) of every step, shape (B, 1, T), as the flow's transform computes it."""
    with torch.no_grad():
        return flow.transform.log_prob(q, flow.parameters_of(q))


@pytest.fixture
def one_thread():
    """Run torch on one thread: sequential decoding runs thousands of tiny products that threads slow down."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _single_error_line(capsys):
    """Return the one error line on stderr, after checking that there is no traceback (log records may precede)."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = err.splitlines()
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1, err
    assert lines[-1] == errors[0]
    return errors[0]


# ---------------------------------------------------------------------------------------------------------
# The dilated stack as a flow: causality, receptive field, prefix consistency (synthetic, always run)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("output", ["categorical", "dmol"])
@pytest.mark.parametrize("kernel_size, num_layers, num_cycles", [(2, 3, 2), (3, 3, 1)])
def test_flow_step_reads_exactly_its_receptive_field(output, kernel_size, num_layers, num_cycles):
    flow = _wavenet_flow(output, kernel_size=kernel_size, num_layers=num_layers, num_cycles=num_cycles)
    receptive_field = flow.net.receptive_field
    generator = torch.Generator().manual_seed(1)
    q = torch.randint(0, 256, (2, 1, 64), generator=generator)
    before = _per_step_log_prob(flow, q)

    assert receptive_field == (kernel_size - 1) * (1 + num_cycles * (2**num_layers - 1)) + 1
    for t in (0, 5, 30, 63 - receptive_field):
        changed = q.clone()
        changed[:, :, t] = (changed[:, :, t] + 101) % 256
        after = _per_step_log_prob(flow, changed)

        assert torch.equal(after[..., :t], before[..., :t]), f"a step before {t} changed"
        assert torch.equal(after[..., t + receptive_field + 1 :], before[..., t + receptive_field + 1 :]), (
            f"a step beyond t + {receptive_field} changed")
        assert not torch.equal(after[..., t + 1], before[..., t + 1])
        assert not torch.equal(after[..., t + receptive_field], before[..., t + receptive_field])


def test_wav_clip_prefix_likelihood_ignores_the_rest(tmp_path):
    _write_wav(tmp_path / "wavs" / "burst.wav", _speech_like(900, seed=1))
    dataset = load_dataset(f"wav:{tmp_path / 'wavs'}", validation_fraction=0.0, test_fraction=0.0)
    q = dataset.split("train")[0][0].unsqueeze(0)  # (1, 1, 900)
    other_suffix = q.clone()
    other_suffix[..., 400:] = torch.randint(0, 256, (1, 1, 500), generator=torch.Generator().manual_seed(2))

    for output in ("categorical", "dmol"):
        flow = _wavenet_flow(output, num_layers=5, weight_scale=1.5)
        per_step = _per_step_log_prob(flow, q)
        for prefix in (1, 2, 31, 400):
            expected = per_step[..., :prefix].sum().item()
            assert flow.log_prob(q[..., :prefix]).item() == pytest.approx(expected, rel=1e-13, abs=1e-12)
            assert flow.log_prob(other_suffix[..., :prefix]).item() == pytest.approx(expected, rel=1e-13,
                                                                                     abs=1e-12)
        assert flow.log_prob(q).item() == pytest.approx(per_step.sum().item(), rel=1e-13)


# ---------------------------------------------------------------------------------------------------------
# Exact round trips on real recordings
# ---------------------------------------------------------------------------------------------------------


@needs_fsdd
@pytest.mark.parametrize("output", ["categorical", "dmol"])
def test_fsdd_crops_round_trip_exactly(output, one_thread):
    dataset = load_dataset(f"wav:{FSDD}", max_examples=12)
    crops = dataset.split("train", segment_length=300, generator=torch.Generator().manual_seed(0))
    q = torch.stack([crops[index][0] for index in range(4)])  # (4, 1, 300)
    flow = _wavenet_flow(output, dtype=torch.float32, weight_scale=2.0)

    z, log_det = flow.encode(q, generator=torch.Generator().manual_seed(3))
    decoded = flow.decode(z)
    decoded_naively = flow.decode(z[..., :120], naive=True)

    assert torch.equal(decoded, q)
    assert torch.equal(decoded_naively, q[..., :120])
    assert torch.allclose(log_det, flow.log_prob(q) + 300 * math.log(256), rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# The command line on real speech
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech_run(tmp_path_factory):
    """A tiny categorical WaveNet trained by `arflows train` on 300 FSDD recordings."""
    if not FSDD.is_dir():
        pytest.skip(f"FSDD recordings not found at {FSDD}")
    run_dir = tmp_path_factory.mktemp("speech") / "run"
    result = _arflows("train", "--data", f"wav:{FSDD}", "--out", run_dir, *TRAIN_ARGUMENTS)
    assert result.returncode == 0, result.stderr
    return run_dir, result


@pytest.mark.slow
def test_train_logs_and_stores_receptive_field(speech_run):
    run_dir, result = speech_run
    expected = 1 * (1 + 1 * (2**7 - 1)) + 1

    assert f"receptive field: {expected} samples (16.1 ms at 8000 Hz)" in result.stderr
    assert json.loads((run_dir / "config.json").read_text())["receptive_field"] == expected
    stored = load_checkpoint(run_dir / "last.pt")
    assert stored["receptive_field"] == expected
    assert stored["dataset"]["sample_rate"] == 8000
    assert stored["dataset"]["quantization"] == "mu-law"


@pytest.mark.slow
def test_trained_wavenet_beats_eight_bits_per_sample(speech_run):
    run_dir, _ = speech_run

    result = _arflows("evaluate", run_dir, "--split", "test", "--json")
    report = json.loads(result.stdout)
    text = _arflows("evaluate", run_dir, "--split", "test")

    assert result.returncode == 0, result.stderr
    assert report["unit"] == "bits/sample"
    assert report["num_examples"] == 30
    assert report["dims_per_example"] is None
    # Every sample of every held-out clip counts, not crops.
    dataset = load_dataset(f"wav:{FSDD}", max_examples=300)
    assert report["num_dims"] == int(dataset.lengths[dataset.indices("test")].sum())
    assert report["bits_per_dim"] < math.log2(256)
    assert "bits/sample" in text.stdout


@pytest.mark.slow
def test_cli_encode_decode_whole_clips_exactly(speech_run, tmp_path):
    run_dir, _ = speech_run
    latents = tmp_path / "speech.npz"

    encoded = _arflows("encode", run_dir, "--max-examples", "3", "--out", latents)
    decoded = _arflows("decode", run_dir, latents, "--out", tmp_path / "decoded")

    assert encoded.returncode == 0, encoded.stderr
    assert decoded.returncode == 0, decoded.stderr
    assert "bits/sample" in encoded.stdout
    dataset = load_dataset(f"wav:{FSDD}", max_examples=300)
    with np.load(latents) as archive:
        lengths, indices, z = archive["lengths"], archive["indices"], archive["latents"]
        metadata = json.loads(str(archive["metadata"]))
    with np.load(tmp_path / "decoded" / "decoded.npz") as archive:
        q = archive["q"]
    assert np.array_equal(indices, dataset.indices("test")[:3])
    assert metadata["sample_rate"] == 8000
    assert z.shape == (3, 1, lengths.max())
    for row, index in enumerate(indices):
        original = dataset.clips[index].astype(np.int64)
        assert lengths[row] == len(original)
        assert np.array_equal(q[row, 0, : lengths[row]], original)
        samples, sample_rate = read_wav(tmp_path / "decoded" / f"clip_{index:06d}.wav")
        assert sample_rate == 8000
        assert np.array_equal(quantize(samples, 256, "mu-law"), original)
    assert (tmp_path / "speech.png").stat().st_size > 10_000
    assert (tmp_path / "decoded" / "waveforms.png").is_file()


@pytest.mark.slow
def test_cli_sample_inspect_interpolate_write_audio(speech_run, tmp_path):
    run_dir, _ = speech_run

    sampled = _arflows("sample", run_dir, "-n", "2", "--seconds", "0.05", "--out", tmp_path / "samples.png")
    inspected = _arflows("inspect", run_dir, "--max-examples", "4", "--num-samples", "4", "--length", "300",
                         "--out", tmp_path / "inspection")
    interpolated = _arflows("interpolate", run_dir, "--pairs", "1", "--steps", "3", "--length", "400",
                            "--out", tmp_path / "interpolation.png")

    assert sampled.returncode == 0, sampled.stderr
    for number in range(2):
        samples, sample_rate = read_wav(tmp_path / "samples" / f"sample_{number:04d}.wav")
        assert sample_rate == 8000
        assert len(samples) == 400
    assert inspected.returncode == 0, inspected.stderr
    summary = json.loads((tmp_path / "inspection" / "summary.json").read_text())
    assert summary["samples"]["shape"] == [4, 1, 300]
    assert summary["data"]["ks"]["num_values"] == summary["data"]["lengths"]["total"]
    assert set(summary["data"]["neighbour_correlations"]) == {"left"}
    assert len(list((tmp_path / "inspection").glob("*.png"))) == 6
    assert interpolated.returncode == 0, interpolated.stderr
    assert "decode exactly to the examples" in interpolated.stdout
    for step in range(3):
        samples, _ = read_wav(tmp_path / "interpolation" / f"pair_0_step_{step}.wav")
        assert len(samples) == 400
    assert (tmp_path / "interpolation.png").is_file()


# ---------------------------------------------------------------------------------------------------------
# Short runs and bad input through the command line (synthetic WAV files)
# ---------------------------------------------------------------------------------------------------------


def _train(folder, out, *extra):
    return main(["train", "--model", "wavenet", "--data", f"wav:{folder}", "--out", str(out),
                 "--residual-channels", "4", "--dilation-channels", "4", "--skip-channels", "4", "--layers", "3",
                 "--cycles", "1", "--batch-size", "2", "--max-steps", "4", "--eval-every", "4", "--ema-decay", "0",
                 *extra])


def test_train_dmol_on_wav_folder(tmp_path):
    for number in range(6):
        _write_wav(tmp_path / "wavs" / f"clip{number}.wav", _speech_like(600 + 50 * number, seed=number))

    status = _train(tmp_path / "wavs", tmp_path / "run", "--output", "dmol", "--components", "2",
                    "--segment-length", "256")
    evaluated = main(["evaluate", str(tmp_path / "run"), "--json", "--no-progress"])

    assert status == 0
    assert evaluated == 0
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["receptive_field"] == 9
    assert stored["flow"]["hyperparameters"]["output"] == "dmol"


def test_train_warns_about_crops_shorter_than_receptive_field(tmp_path, caplog):
    for number in range(6):
        _write_wav(tmp_path / "wavs" / f"clip{number}.wav", _speech_like(400, seed=number))

    assert _train(tmp_path / "wavs", tmp_path / "run", "--segment-length", "5") == 0
    assert "shorter than the receptive field (9 samples)" in caplog.text


def test_train_skips_clips_shorter_than_crop(tmp_path, caplog):
    for number, length in enumerate([100, 120, 900, 900, 900, 900, 900, 900]):
        _write_wav(tmp_path / "wavs" / f"clip{number}.wav", _speech_like(length, seed=number))

    # No validation examples: training must still finish, without best.pt.
    assert _train(tmp_path / "wavs", tmp_path / "run", "--segment-length", "500", "--validation-fraction", "0.0",
                  "--test-fraction", "0.0") == 0
    assert "Skipped 2 of 8 clips" in caplog.text
    assert (tmp_path / "run" / "last.pt").is_file()
    assert not (tmp_path / "run" / "best.pt").exists()


def test_train_rejects_when_every_clip_is_short(tmp_path, capsys):
    for number in range(4):
        _write_wav(tmp_path / "wavs" / f"clip{number}.wav", _speech_like(100, seed=number))

    assert _train(tmp_path / "wavs", tmp_path / "run", "--segment-length", "500") == 2
    line = _single_error_line(capsys)
    assert "no clip" in line
    assert "segment_length=500" in line
    assert "the longest has 100" in line


def test_train_on_silence_only_finishes(tmp_path, caplog):
    for number in range(6):
        _write_wav(tmp_path / "wavs" / f"silence{number}.wav", np.zeros(700))

    assert _train(tmp_path / "wavs", tmp_path / "run", "--segment-length", "256") == 0
    assert "silent WAV files" in caplog.text
    assert (tmp_path / "run" / "last.pt").is_file()


@pytest.mark.parametrize("case", ["not_wav", "corrupt", "empty_folder", "mixed_rates", "no_segment_length"])
def test_train_bad_input_exits_with_one_line(case, tmp_path, capsys):
    folder = tmp_path / "wavs"
    folder.mkdir()
    extra = ["--segment-length", "128"]
    expected = []
    if case == "not_wav":
        _write_wav(folder / "good.wav", _speech_like(500, seed=0))
        (folder / "notes.wav").write_text("not audio")
        expected = ["cannot read WAV file", str(folder / "notes.wav")]
    elif case == "corrupt":
        _write_wav(folder / "good.wav", _speech_like(500, seed=0))
        data = _write_wav(folder / "broken.wav", _speech_like(500, seed=1)).read_bytes()
        (folder / "broken.wav").write_bytes(data[:20])
        expected = [str(folder / "broken.wav")]
    elif case == "empty_folder":
        expected = ["no .wav files found", str(folder)]
    elif case == "mixed_rates":
        _write_wav(folder / "a.wav", _speech_like(500, seed=0), sample_rate=8000)
        _write_wav(folder / "b.wav", _speech_like(500, seed=1), sample_rate=16000)
        expected = ["different sample rates", str(folder / "b.wav"), "--sample-rate"]
    else:
        _write_wav(folder / "a.wav", _speech_like(500, seed=0))
        extra = []
        expected = ["--segment-length is required"]

    assert _train(folder, tmp_path / "run", *extra) == 2
    line = _single_error_line(capsys)
    assert line.startswith("arflows train: error: ")
    for text in expected:
        assert text in line
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------------
# arflows demo --audio
# ---------------------------------------------------------------------------------------------------------


@needs_fsdd
@pytest.mark.slow
def test_audio_demo_writes_report_and_wav_files(tmp_path, one_thread):
    import re

    from arflows.audio_demo import AUDIO_DEMO_OUTPUTS, run_audio_demo

    result = run_audio_demo(tmp_path / "demo", data=f"wav:{FSDD}", minutes=2.0, max_steps=10, max_files=60,
                            num_encoded=4, num_decoded=2, num_samples=2, sample_seconds=0.05, num_steps=3)
    text = result.report.read_text()
    numbers = json.loads((result.out / "summary.json").read_text())

    linked_figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    linked_audio = re.findall(r"\]\((wav/[^)]+\.wav)\)", text)
    assert sorted(linked_figures) == sorted(path.name for path in result.figures.values())
    assert len(linked_figures) == 9
    assert len(linked_audio) == 2 + 3 + 2
    for name in linked_audio:
        samples, sample_rate = read_wav(result.out / name)
        assert sample_rate == 8000
        assert len(samples) > 0
    assert {path.name for path in result.out.iterdir()} <= set(AUDIO_DEMO_OUTPUTS)
    assert numbers["training"]["step"] == 10
    assert numbers["receptive_field"] == 257
    assert numbers["decode_exact"] is True
    assert numbers["interpolation"]["endpoints_exact"] is True
    assert 0.0 < numbers["test_bits_per_sample"] < 9.0
    assert f"{numbers['test_bits_per_sample']:.4f}" in text


def test_audio_demo_without_recordings_exits_with_one_line(tmp_path, capsys):
    missing = tmp_path / "missing"

    status = main(["demo", "--audio", "--audio-data", f"wav:{missing}", "--out", str(tmp_path / "demo")])

    assert status == 2
    line = _single_error_line(capsys)
    assert f"WAV folder {missing} not found" in line
    assert main(["demo", "--audio-data", f"wav:{missing}", "--out", str(tmp_path / "other")]) == 2
    assert "add --audio" in _single_error_line(capsys)
