"""Tests of checksum-verified downloads against servers on 127.0.0.1 only; no other host is contacted."""

import functools
import hashlib
import http.server
import os
import socket
import threading

import pytest

from arflows.data import load_dataset
from arflows.data.download import DOWNLOAD_URL_VARIABLE, DownloadError, download_file, file_digest


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # A proxy from the environment would send the loopback requests to another host.
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@pytest.fixture
def file_server(tmp_path):
    """Serve the folder tmp_path/served on 127.0.0.1 and yield its base URL."""
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", served
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def closed_port_url():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port after the socket closes, so connecting is refused at once.
    return f"http://127.0.0.1:{port}"


def test_download_verifies_sha256(file_server, tmp_path):
    base_url, served = file_server
    content = b"discrete data " * 1000
    (served / "file.bin").write_bytes(content)
    destination = tmp_path / "out" / "file.bin"

    result = download_file(
        "file.bin",
        destination,
        default_base_url="http://invalid.example",
        base_url=base_url,
        sha256=hashlib.sha256(content).hexdigest(),
        md5=hashlib.md5(content).hexdigest(),
    )
    assert result == destination
    assert destination.read_bytes() == content
    assert file_digest(destination, "md5") == hashlib.md5(content).hexdigest()
    assert not (tmp_path / "out" / "file.bin.part").exists()


def test_download_checksum_mismatch(file_server, tmp_path):
    base_url, served = file_server
    (served / "file.bin").write_bytes(b"not the published file")
    destination = tmp_path / "file.bin"

    with pytest.raises(DownloadError, match=f"have sha256 .* expected {'0' * 64}; the file was discarded"):
        download_file(
            "file.bin",
            destination,
            default_base_url="http://invalid.example",
            base_url=base_url,
            sha256="0" * 64,
        )
    assert not destination.exists()
    assert not (tmp_path / "file.bin.part").exists()


def test_download_server_error(file_server, tmp_path):
    base_url, _ = file_server
    destination = tmp_path / "missing.bin"

    with pytest.raises(DownloadError, match="404"):
        download_file(
            "missing.bin", destination, default_base_url="http://invalid.example", base_url=base_url
        )
    assert not destination.exists()


def test_mnist_download_offline(monkeypatch, tmp_path, closed_port_url):
    monkeypatch.setenv(DOWNLOAD_URL_VARIABLE, closed_port_url)
    folder = tmp_path / "mnist"

    with pytest.raises(DownloadError) as raised:
        load_dataset(f"mnist:{folder}", download=True)
    message = str(raised.value)
    assert f"failed to download {closed_port_url}/mnist.npz" in message
    assert "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz" in message
    assert f"place it at {folder / 'mnist.npz'}" in message
    assert not (folder / "mnist.npz").exists()


def test_cifar10_download_offline(monkeypatch, tmp_path, closed_port_url):
    monkeypatch.setenv(DOWNLOAD_URL_VARIABLE, closed_port_url)

    with pytest.raises(DownloadError, match=r"place it at .*cifar-10-python\.tar\.gz"):
        load_dataset(f"cifar10:{tmp_path}", download=True)


def test_mnist_download_checksum_mismatch(monkeypatch, tmp_path, file_server):
    base_url, served = file_server
    (served / "mnist.npz").write_bytes(b"a wrong mnist.npz")
    monkeypatch.setenv(DOWNLOAD_URL_VARIABLE, base_url)
    destination = tmp_path / "data" / "mnist.npz"

    with pytest.raises(DownloadError, match="expected 731c5ac6"):
        load_dataset(f"mnist:{destination}", download=True)
    assert not destination.exists()


def test_cifar10_download_checksum_mismatch(monkeypatch, tmp_path, file_server):
    base_url, served = file_server
    (served / "cifar-10-python.tar.gz").write_bytes(b"a wrong archive")
    monkeypatch.setenv(DOWNLOAD_URL_VARIABLE, base_url)

    with pytest.raises(DownloadError, match="have md5 .* expected c58f30108f718f92721af3b95e74349a"):
        load_dataset(f"cifar10:{tmp_path / 'cifar'}", download=True)
    assert not (tmp_path / "cifar" / "cifar-10-python.tar.gz").exists()


def test_missing_data_without_download(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Pass download=True \(--download\)"):
        load_dataset(f"mnist:{tmp_path}")
    with pytest.raises(FileNotFoundError, match="cifar-10-python.tar.gz"):
        load_dataset(f"cifar10:{tmp_path / 'absent'}")
