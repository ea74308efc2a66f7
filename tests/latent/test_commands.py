"""Tests of `arflows encode/decode/sample/inspect/interpolate` on a tiny checkpoint and real digits."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from arflows.cli import main

from .helpers import REPO_ROOT, save_flow_checkpoint, tiny_flow


def _arflows(*arguments, timeout=300):
    """Run `python -m arflows ARGUMENTS` in a subprocess and return the completed process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, "-m", "arflows", *map(str, arguments)], env=env, check=False,
                          capture_output=True, text=True, timeout=timeout)


def _error_line(capsys):
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1] if lines else ""


def _assert_png(path, min_size=1):
    assert path.is_file(), f"{path} was not written"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert min(image.size) >= min_size


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A gated PixelCNN checkpoint for 8×8 digits with random weights."""
    folder = tmp_path_factory.mktemp("checkpoint")
    return save_flow_checkpoint(folder / "tiny.pt", tiny_flow("gated_pixelcnn", (1, 8, 8), 17))


@pytest.fixture(scope="module")
def encoded(checkpoint, tmp_path_factory):
    """Latents of the first 12 test digits, written by `arflows encode` in a subprocess."""
    path = tmp_path_factory.mktemp("encoded") / "latents.npz"
    result = _arflows("encode", checkpoint, "--data", "digits", "--out", path, "--max-examples", "12",
                      "--seed", "3")
    assert result.returncode == 0, result.stderr
    return path, result


def test_encode_writes_latents_and_figure(encoded, digits):
    path, result = encoded

    with np.load(path) as archive:
        latents, indices = archive["latents"], archive["indices"]
        metadata = json.loads(str(archive["metadata"]))

    assert latents.shape == (12, 1, 8, 8)
    assert np.array_equal(indices, digits.indices("test")[:12])
    assert metadata["num_bins"] == 17
    assert metadata["split"] == "test"
    assert metadata["seed"] == 3
    assert len(metadata["weights_fingerprint"]) == 64
    _assert_png(path.with_suffix(".png"), min_size=200)
    assert "bits/dim" in result.stdout


def test_decode_returns_original_digits(checkpoint, encoded, digits, tmp_path):
    path, _ = encoded
    out = tmp_path / "decoded"

    result = _arflows("decode", checkpoint, path, "--out", out)
    with np.load(out / "decoded.npz") as archive:
        q, indices = archive["q"], archive["indices"]

    assert result.returncode == 0, result.stderr
    assert np.array_equal(q, digits.images[indices].astype(np.int64))
    assert np.array_equal(indices, digits.indices("test")[:12])
    first = out / f"example_{indices[0]:06d}.png"
    with Image.open(first) as image:
        pixels = np.asarray(image).astype(np.int64)
    assert np.array_equal(np.rint(pixels * 16 / 255), q[0, 0])
    assert len(list(out.glob("example_*.png"))) == 12
    _assert_png(out / "grid.png", min_size=200)


def test_sample_writes_grid_and_files(checkpoint, tmp_path):
    out = tmp_path / "samples.png"

    result = _arflows("sample", checkpoint, "-n", "5", "--out", out, "--seed", "1")
    with np.load(tmp_path / "samples" / "samples.npz") as archive:
        q = archive["q"]

    assert result.returncode == 0, result.stderr
    _assert_png(out, min_size=200)
    assert sorted(path.name for path in (tmp_path / "samples").glob("*.png")) == [
        f"sample_{number:04d}.png" for number in range(5)]
    assert q.shape == (5, 1, 8, 8)
    assert q.min() >= 0
    assert q.max() < 17


def test_inspect_writes_summary_and_figures(checkpoint, tmp_path):
    out = tmp_path / "inspect"

    result = _arflows("inspect", checkpoint, "--data", "digits", "--out", out, "--max-examples", "30",
                      "--num-samples", "16")
    summary = json.loads((out / "summary.json").read_text())

    assert result.returncode == 0, result.stderr
    assert summary["dataset"]["num_examples"] == 30
    assert summary["data"]["ks"]["num_values"] == 30 * 64
    assert summary["samples"]["ks"]["p_value"] > 1e-3
    assert np.isfinite(summary["bits_per_dim"])
    for name in ("data_vs_latent", "data_histogram", "data_ks_map", "samples_histogram", "samples_ks_map",
                 "correlations"):
        _assert_png(out / f"{name}.png", min_size=200)
    assert "verdict" in result.stdout


def test_interpolate_writes_grid(checkpoint, tmp_path):
    out = tmp_path / "interpolation.png"

    result = _arflows("interpolate", checkpoint, "--data", "digits", "--pairs", "2", "--steps", "4",
                      "--out", out, "--mode", "linear")

    assert result.returncode == 0, result.stderr
    assert "decode exactly" in result.stdout
    _assert_png(out, min_size=200)


def test_user_error_is_one_line_without_traceback(encoded, tmp_path):
    path, _ = encoded

    result = _arflows("encode", path.with_suffix(".pt"), "--data", "digits", "--out", tmp_path / "z.npz")

    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "not found" in result.stderr


# In-process bad-input cases: the same `main` as the subprocess runs, without the start-up time.


def test_existing_outputs_need_force(checkpoint, encoded, tmp_path, capsys):
    path, _ = encoded
    target = tmp_path / "latents.npz"
    target.write_bytes(b"old")
    folder = tmp_path / "decoded"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")

    assert main(["encode", str(checkpoint), "--data", "digits", "--out", str(target), "--max-examples", "2"]) == 2
    assert "already exists; pass --force" in _error_line(capsys)
    assert main(["decode", str(checkpoint), str(path), "--out", str(folder)]) == 2
    assert "not empty; pass --force" in _error_line(capsys)
    assert main(["encode", str(checkpoint), "--data", "digits", "--out", str(target), "--max-examples", "2",
                 "--force"]) == 0
    assert target.read_bytes()[:2] == b"PK"


def test_decode_rejects_latents_of_other_models(encoded, tmp_path, capsys):
    path, _ = encoded
    other_shape = save_flow_checkpoint(tmp_path / "shape.pt", tiny_flow("gated_pixelcnn", (1, 6, 6), 17))
    other_bins = save_flow_checkpoint(tmp_path / "bins.pt", tiny_flow("gated_pixelcnn", (1, 8, 8), 16))
    other_weights = save_flow_checkpoint(tmp_path / "weights.pt",
                                         tiny_flow("gated_pixelcnn", (1, 8, 8), 17, seed=5))

    assert main(["decode", str(other_shape), str(path), "--out", str(tmp_path / "a")]) == 2
    assert "data_shape=[1, 8, 8]" in _error_line(capsys)
    assert main(["decode", str(other_bins), str(path), "--out", str(tmp_path / "b")]) == 2
    assert "num_bins=17" in _error_line(capsys)
    assert main(["decode", str(other_weights), str(path), "--out", str(tmp_path / "c")]) == 2
    assert "other weights" in _error_line(capsys)
    assert main(["decode", str(other_weights), str(path), "--out", str(tmp_path / "c"),
                 "--allow-other-weights"]) == 0


@pytest.mark.parametrize("value, message", [(np.nan, "NaN; expected values in [0, 1]"),
                                            (1.25, "expected values in [0, 1]")])
def test_decode_rejects_bad_latent_values(checkpoint, encoded, tmp_path, capsys, value, message):
    path, _ = encoded
    with np.load(path) as archive:
        contents = {name: archive[name] for name in archive.files}
    contents["latents"][0, 0, 0, 0] = value
    broken = tmp_path / "broken.npz"
    np.savez(broken, **contents)

    assert main(["decode", str(checkpoint), str(broken), "--out", str(tmp_path / "out")]) == 2
    assert message in _error_line(capsys)


def test_checkpoint_data_mismatch(tmp_path, capsys):
    small = save_flow_checkpoint(tmp_path / "small.pt", tiny_flow("gated_pixelcnn", (1, 6, 6), 17))
    wide = save_flow_checkpoint(tmp_path / "wide.pt", tiny_flow("gated_pixelcnn", (1, 8, 8), 256))
    colour = save_flow_checkpoint(tmp_path / "colour.pt", tiny_flow("gated_pixelcnn", (3, 8, 8), 17))

    assert main(["encode", str(small), "--data", "digits", "--out", str(tmp_path / "a.npz")]) == 2
    assert "shape 1×8×8 instead of 1×6×6" in _error_line(capsys)
    assert main(["inspect", str(wide), "--data", "digits", "--out", str(tmp_path / "b")]) == 2
    assert "K=17 bins instead of K=256" in _error_line(capsys)
    assert not (tmp_path / "b").exists()
    assert main(["interpolate", str(colour), "--data", "digits", "--out", str(tmp_path / "c.png")]) == 2
    assert "instead of 3×8×8" in _error_line(capsys)


def test_argument_errors(checkpoint, tmp_path, capsys):
    assert main(["encode", str(checkpoint), "--data", "digits", "--out", str(tmp_path / "z.txt")]) == 2
    assert "must end in .npz" in _error_line(capsys)
    assert main(["decode", str(checkpoint), str(tmp_path / "missing.npz"), "--out", str(tmp_path / "d")]) == 2
    assert "not found" in _error_line(capsys)
    assert main(["interpolate", str(checkpoint), "--data", "digits", "--steps", "1",
                 "--out", str(tmp_path / "i.png")]) == 2
    assert "--steps must be at least 2" in _error_line(capsys)
    assert main(["interpolate", str(checkpoint), "--data", "digits", "--pairs", "7", "--max-examples", "10",
                 "--out", str(tmp_path / "i.png")]) == 2
    assert "needs 14 examples" in _error_line(capsys)
    assert main(["encode", str(checkpoint), "--data", "digits", "--split", "dev",
                 "--out", str(tmp_path / "s.npz")]) == 2
    assert "unknown split 'dev'" in _error_line(capsys)
