"""Tests of `arflows demo`: a shortened run writes a report whose figures and numbers are all there."""

import json
import math
import re

import numpy as np
import pytest
from PIL import Image

from arflows.cli import main
from arflows.demo import DEMO_OUTPUTS, run_demo


def _finite_numbers(value, path="numbers"):
    """Yield (path, number) for every int or float inside nested dicts and lists."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _finite_numbers(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _finite_numbers(item, f"{path}[{index}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path, value


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A demo trained for 30 steps, with fewer samples and interpolations than the default."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    return run_demo(out, minutes=2.0, max_steps=30, num_samples=16, num_pairs=2, num_steps=3, num_decoded=20)


def test_report_shows_every_figure(demo):
    text = demo.report.read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)

    assert sorted(linked) == sorted(path.name for path in demo.figures.values())
    assert len(linked) == 10
    for name in linked:
        path = demo.out / name
        assert path.stat().st_size > 1000, name
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert min(image.size) >= 200
            assert np.asarray(image.convert("L")).std() > 1.0, f"{name} is blank"


def test_numbers_are_finite(demo):
    saved = json.loads((demo.out / "summary.json").read_text())

    numbers = list(_finite_numbers(saved))
    assert len(numbers) > 50
    for path, value in numbers:
        assert math.isfinite(value), path
    assert saved["training"]["step"] == 30
    assert saved["training"]["stop_reason"] == "max_steps"
    assert 0.0 < saved["test_bits_per_dim"] < math.log2(17) + 1.0
    assert saved["decode_exact"] is True
    assert saved["interpolation"]["endpoints_exact"] is True
    assert saved["inspection"]["samples"]["ks"]["p_value"] > 1e-3


def test_report_states_the_numbers(demo):
    text = demo.report.read_text()
    numbers = demo.numbers

    assert f"{numbers['test_bits_per_dim']:.4f}" in text
    assert numbers["inspection"]["data"]["ks"]["text"] in text
    assert numbers["inspection"]["samples"]["ks"]["text"] in text
    assert "necessary but not sufficient" in text
    assert "returns their test images exactly" in text


def test_demo_refuses_nonempty_output(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep")

    assert main(["demo", "--out", str(tmp_path), "--minutes", "0.1"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep"


def test_demo_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="minutes"):
        run_demo(tmp_path / "a", minutes=0.0)
    with pytest.raises(ValueError, match="num_steps"):
        run_demo(tmp_path / "b", num_steps=1)
    with pytest.raises(ValueError, match="num_decoded"):
        run_demo(tmp_path / "c", num_decoded=0)


def test_outputs_list_covers_every_file(demo):
    written = {path.name for path in demo.out.iterdir()}

    assert written <= set(DEMO_OUTPUTS)


def test_force_removes_only_demo_files(tmp_path):
    from arflows.demo import _prepare_output

    (tmp_path / "notes.txt").write_text("keep")
    (tmp_path / "report.md").write_text("old report")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"old")

    _prepare_output(tmp_path, force=True)

    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]
