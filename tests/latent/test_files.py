"""Tests of latent files: exact round trips, weight fingerprints and rejection of bad or foreign files."""

import io
import json
import logging

import numpy as np
import pytest
import torch

from arflows.latent import (
    LatentFileError,
    check_latents_match_flow,
    encode_data,
    load_latents,
    save_latents,
    weights_fingerprint,
)

from .helpers import tiny_flow

INFO = {"split": "test", "noise": "uniform", "seed": 0, "dataset": {"spec": "digits", "options": {"crop": (8, 8)}}}


def _written_file(tmp_path, flow, count=3):
    q = torch.randint(0, flow.num_bins, (count, *flow.data_shape), generator=torch.Generator().manual_seed(0))
    z, _ = encode_data(flow, q)
    path = tmp_path / "latents.npz"
    save_latents(path, z.numpy(), np.arange(count) + 10, np.arange(count) % 2, flow=flow, info=INFO)
    return path, z


def _rewrite(path, **arrays):
    """Replace arrays of an existing latent file, keeping the others."""
    with np.load(path) as archive:
        contents = {name: archive[name] for name in archive.files}
    contents.update(arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **contents)
    path.write_bytes(buffer.getvalue())


def test_round_trip_bit_exact(tmp_path):
    flow = tiny_flow("gated_pixelcnn", (1, 4, 4), 17)
    path, z = _written_file(tmp_path, flow)

    loaded = load_latents(path)

    assert loaded.latents.dtype == np.float32
    assert np.array_equal(loaded.latents, z.numpy())
    assert loaded.indices.tolist() == [10, 11, 12]
    assert loaded.labels.tolist() == [0, 1, 0]
    assert loaded.metadata["num_bins"] == 17
    assert loaded.metadata["data_shape"] == [1, 4, 4]
    assert loaded.metadata["flow"] == json.loads(json.dumps(flow.config))
    assert loaded.metadata["dataset"]["options"]["crop"] == [8, 8]
    assert loaded.metadata["weights_fingerprint"] == weights_fingerprint(flow)
    check_latents_match_flow(loaded, flow, weights_fingerprint(flow))


def test_fingerprint_tracks_weights_and_dtype():
    flow = tiny_flow("pixelcnn", (1, 4, 4), 5)
    same = tiny_flow("pixelcnn", (1, 4, 4), 5)
    other = tiny_flow("pixelcnn", (1, 4, 4), 5)
    with torch.no_grad():
        next(other.parameters()).view(-1)[0] += 1e-6

    assert weights_fingerprint(flow) == weights_fingerprint(same)
    assert weights_fingerprint(flow) != weights_fingerprint(other)
    assert weights_fingerprint(flow) != weights_fingerprint(same.double())
    assert weights_fingerprint(flow.to(torch.bfloat16))


def test_rejects_other_architecture(tmp_path):
    flow = tiny_flow("gated_pixelcnn", (1, 4, 4), 17)
    path, _ = _written_file(tmp_path, flow)
    loaded = load_latents(path)
    cases = [
        (tiny_flow("gated_pixelcnn", (1, 5, 5), 17), "data_shape=\\[1, 4, 4\\]"),
        (tiny_flow("gated_pixelcnn", (1, 4, 4), 16), "num_bins=17"),
        (tiny_flow("pixelcnn", (1, 4, 4), 17), "written by the flow"),
    ]

    for other, message in cases:
        with pytest.raises(LatentFileError, match=message):
            check_latents_match_flow(loaded, other, weights_fingerprint(other))


def test_rejects_other_weights_unless_allowed(tmp_path, caplog):
    flow = tiny_flow("gated_pixelcnn", (1, 4, 4), 17)
    retrained = tiny_flow("gated_pixelcnn", (1, 4, 4), 17, seed=1)
    path, _ = _written_file(tmp_path, flow)
    loaded = load_latents(path)

    with pytest.raises(LatentFileError, match="other weights"):
        check_latents_match_flow(loaded, retrained, weights_fingerprint(retrained))
    with caplog.at_level(logging.WARNING):
        check_latents_match_flow(loaded, retrained, weights_fingerprint(retrained), allow_other_weights=True)
    assert "decoding anyway" in caplog.text


@pytest.mark.parametrize("latents, message", [
    (np.full((3, 1, 4, 4), np.nan, dtype=np.float32), "3 latents are NaN|48 latents are NaN"),
    (np.full((3, 1, 4, 4), 1.5, dtype=np.float32), "lie in \\[1.5, 1.5\\]; expected values in \\[0, 1\\]"),
    (np.full((3, 1, 4, 4), -0.25), "lie in \\[-0.25"),
    (np.zeros((3, 1, 5, 4), dtype=np.float32), "shape \\(3, 1, 5, 4\\)"),
    (np.zeros((3, 1, 4, 4), dtype=np.int64), "dtype int64"),
])
def test_rejects_bad_latents(tmp_path, latents, message):
    flow = tiny_flow("gated_pixelcnn", (1, 4, 4), 17)
    path, _ = _written_file(tmp_path, flow)
    _rewrite(path, latents=latents)

    with pytest.raises(LatentFileError, match=message):
        load_latents(path)


def test_rejects_non_latent_files(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("not an archive")
    plain = tmp_path / "plain.npz"
    np.savez(plain, latents=np.zeros((1, 1, 2, 2)))
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, latents=np.zeros((1, 1, 2, 2)), indices=np.zeros(1), labels=np.zeros(1),
             metadata=np.array(json.dumps({"format": "something-else"})))

    with pytest.raises(LatentFileError, match="not found"):
        load_latents(tmp_path / "missing.npz")
    with pytest.raises(LatentFileError, match="not a readable .npz"):
        load_latents(text)
    with pytest.raises(LatentFileError, match="lacks the arrays"):
        load_latents(plain)
    with pytest.raises(LatentFileError, match="not an arflows latent file"):
        load_latents(foreign)


def test_save_rejects_mismatched_lengths(tmp_path):
    flow = tiny_flow("gated_pixelcnn", (1, 4, 4), 17)

    with pytest.raises(ValueError, match="same number of examples"):
        save_latents(tmp_path / "x.npz", np.zeros((2, 1, 4, 4)), np.arange(3), np.arange(2), flow=flow, info={})
