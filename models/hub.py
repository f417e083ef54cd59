"""Files from the Hugging Face hub over plain HTTPS, with the standard library only.

The hub is asked first with a short deadline that covers the name lookup too, so a
machine without it learns so in seconds. Files stream to disk under a .part name, are
checked against the manifest's sha256 when it has one, and are renamed into place only
when whole, so a finished download is reused by the next build.
"""

from __future__ import annotations

import hashlib
import os
import threading
import urllib.error
import urllib.request
from pathlib import Path

from progress import percent, say

ENDPOINT = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
CONNECT_TIMEOUT = 5.0  # seconds, for the first answer
READ_TIMEOUT = 60.0  # seconds without a byte during a download
CHUNK = 1 << 20


class HubError(Exception):
    """The hub cannot be used: unreachable, or a file is not what the manifest says."""


def check_reachable(repo: str, revision: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Raises HubError unless the hub describes repo@revision within `timeout` seconds."""
    url = f"{ENDPOINT}/api/models/{repo}/revision/{revision}"
    outcome: list[BaseException | None] = []

    def ask() -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout):
                outcome.append(None)
        except Exception as error:
            outcome.append(error)

    # a thread, since the socket timeout does not bound getaddrinfo
    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    asker.join(timeout + 1)
    if not outcome:
        raise HubError(f"the Hugging Face hub ({ENDPOINT}) did not answer within {timeout:g} s")
    error = outcome[0]
    if isinstance(error, urllib.error.HTTPError):
        raise HubError(f"the Hugging Face hub ({ENDPOINT}) has no {repo}@{revision}: {error}")
    if error is not None:
        reason = getattr(error, "reason", error)
        raise HubError(f"cannot reach the Hugging Face hub ({ENDPOINT}): {reason}")


def file_url(repo: str, revision: str, path: str) -> str:
    return f"{ENDPOINT}/{repo}/resolve/{revision}/{path}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str | None, size: int | None) -> str:
    """Fetches `url` to `dest` unless a whole copy is there already; returns its sha256.

    With no sha256 in the manifest the file's is computed and reported, not verified.
    """
    if dest.is_file() and (sha256 is None or sha256_of(dest) == sha256):
        say(f"{dest.name}: already downloaded")
        return sha256 or sha256_of(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    got = 0
    try:
        with urllib.request.urlopen(url, timeout=READ_TIMEOUT) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or size or 0)
            update = percent(f"downloading {dest.name} ({total / 1e6:.0f} MB)", every=10)
            while chunk := response.read(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                got += len(chunk)
                update(got, total)
    except OSError as error:  # URLError, HTTPError and timeouts included
        part.unlink(missing_ok=True)
        raise HubError(f"downloading {url} failed after {got} bytes: {error}") from error
    actual = digest.hexdigest()
    problem = None
    if size is not None and got != size:
        problem = f"{got} bytes, the manifest says {size}"
    elif sha256 is not None and actual != sha256:
        problem = f"sha256 {actual}, the manifest says {sha256}"
    if problem:
        part.unlink()
        raise HubError(f"{url} is not the file the manifest pins: {problem}")
    if sha256 is None:
        say(f"{dest.name}: sha256 {actual} recorded; NOT verified (the manifest has none)")
    part.rename(dest)
    return actual
