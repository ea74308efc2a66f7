"""Checksum-verified downloads of dataset archives into a folder that the user names."""

from __future__ import annotations

import hashlib
import logging
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["DOWNLOAD_URL_VARIABLE", "DownloadError", "download_file", "file_digest"]

logger = logging.getLogger(__name__)

# Environment variable with the base URL of a mirror. It replaces the default base URL of every dataset,
# and the file name is appended to it.
DOWNLOAD_URL_VARIABLE = "ARFLOWS_DOWNLOAD_URL"

_CHUNK_BYTES = 1 << 20


class DownloadError(OSError):
    """A download that failed, or whose checksum differs from the published one."""


def file_digest(path: Path, algorithm: str) -> str:
    """Return the hexadecimal ``algorithm`` digest (for example "md5" or "sha256") of the file at ``path``."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _resolve_base_url(default_base_url: str, base_url: str | None) -> str:
    if base_url is not None:
        return base_url
    return os.environ.get(DOWNLOAD_URL_VARIABLE) or default_base_url


def download_file(
    filename: str,
    destination: Path,
    *,
    default_base_url: str,
    sha256: str | None = None,
    md5: str | None = None,
    base_url: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``filename`` to ``destination`` and check its digest before moving it into place.

    The URL is ``<base>/<filename>`` with the base taken from ``base_url``, else from the
    ``ARFLOWS_DOWNLOAD_URL`` environment variable, else ``default_base_url``. The bytes go to
    ``<destination>.part`` first, which is removed on any failure, so ``destination`` only ever contains a
    verified file. Proxies set in the environment (``https_proxy`` and so on) apply, as in ``urllib``.

    Args:
        filename: the file name on the server.
        destination: the path to write; missing parent folders are created.
        default_base_url: the official location of the file, used when no mirror is set.
        sha256: the expected SHA-256 digest in hexadecimal, or None.
        md5: the expected MD5 digest in hexadecimal, or None.
        base_url: a mirror that overrides the environment variable and the default.
        timeout: seconds to wait for the connection and for each read.

    Returns:
        ``destination``.

    Raises:
        DownloadError: if the server cannot be reached or sends an error, or a digest differs.
    """
    official_url = f"{default_base_url.rstrip('/')}/{filename}"
    url = f"{_resolve_base_url(default_base_url, base_url).rstrip('/')}/{filename}"
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".part")
    hashes = {"sha256": hashlib.sha256(), "md5": hashlib.md5()}

    logger.info("Downloading %s to %s", url, destination)
    start = time.perf_counter()
    try:
        num_bytes = _fetch(url, partial, hashes, timeout)
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        raise DownloadError(
            f"failed to download {url}: {error}. Without network access, download {official_url} on "
            f"another machine and place it at {destination}, or set {DOWNLOAD_URL_VARIABLE} to the base "
            f"URL of a mirror that serves {filename}"
        ) from error
    except BaseException:
        # An interrupted download must not leave a partial file behind.
        partial.unlink(missing_ok=True)
        raise

    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        actual = hashes[algorithm].hexdigest()
        if expected is not None and actual != expected.lower():
            partial.unlink(missing_ok=True)
            raise DownloadError(
                f"the {num_bytes} bytes downloaded from {url} have {algorithm} {actual}, expected "
                f"{expected}; the file was discarded. Check the mirror or download {official_url} "
                f"by hand to {destination}"
            )

    os.replace(partial, destination)
    logger.info("Downloaded %d bytes to %s in %.1f s", num_bytes, destination, time.perf_counter() - start)
    return destination


def _fetch(url: str, path: Path, hashes: dict, timeout: float) -> int:
    """Stream ``url`` into ``path``, update every digest in ``hashes`` and return the byte count."""
    num_bytes = 0
    with urllib.request.urlopen(url, timeout=timeout) as response, open(path, "wb") as file:
        for chunk in iter(lambda: response.read(_CHUNK_BYTES), b""):
            file.write(chunk)
            num_bytes += len(chunk)
            for digest in hashes.values():
                digest.update(chunk)
    return num_bytes
