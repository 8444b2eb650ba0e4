"""Downloading one file from a URL (http, https, file) into place, checked before anyone sees it.

`download(url, target, expected=...)` streams the response into a hidden temporary file beside
`target` (`.NAME.RANDOM.partial`), with a progress bar (tqdm, on stderr), hashing as it goes, and
renames it to `target` only when

- it holds as many bytes as the response's Content-Length announced (always checked when the
  server sends one: a server that closes the connection half-way gives a short body without any
  error from urllib), and
- its sha256 starts with `expected` (a full digest or a prefix), when one is given.

Anything else (a short body, a wrong hash, a network error, Ctrl-C) removes the temporary file
(and the target's folder when that is left empty):
`target` is either absent, or the old file, or the whole verified new one. It is torch hub's
`download_url_to_file` plus the length check, which that function does not make.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.request
from pathlib import Path

from .errors import UserError
from .files import default_file_mode

__all__ = ["download"]

_BLOCK = 1 << 16


def _announced_length(response) -> int | None:
    value = (response.headers.get("Content-Length") or "").strip()
    return int(value) if value.isdigit() else None


def download(url: str, target: Path, *, expected: str | None = None, progress: bool = True) -> Path:
    """`url` -> the file `target` (its folder is created), verified as the module docstring says;
    a UserError naming `url` when the download fails or the file is not what was announced."""
    from tqdm import tqdm

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "maskrcnn"})
        with urllib.request.urlopen(request, timeout=60) as response:
            total = _announced_length(response)
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
            digest, got = hashlib.sha256(), 0
            bar = tqdm(total=total, disable=not progress, unit="B", unit_scale=True, unit_divisor=1024)
            with os.fdopen(fd, "wb") as f, bar:
                while block := response.read(_BLOCK):
                    f.write(block)
                    digest.update(block)
                    got += len(block)
                    bar.update(len(block))
                f.flush()
                os.fsync(f.fileno())
        if total is not None and got != total:
            raise UserError(
                f"could not download {url}: the server sent {got} of the {total} bytes it announced "
                f"(Content-Length); nothing was written to {target.parent}"
            )
        if expected and not digest.hexdigest().startswith(expected):
            raise UserError(
                f"checksum mismatch for {url}: expected sha256 {expected}..., got {digest.hexdigest()}; "
                f"nothing was written to {target.parent}"
            )
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, target)
        tmp = None
    except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, a missing file://, a reset
        reason = getattr(e, "reason", None) or e
        raise UserError(f"could not download {url}: {reason}; nothing was written to {target.parent}") from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if not target.exists() and not any(target.parent.iterdir()):
            target.parent.rmdir()  # a folder made for this download alone: not left empty
    return target
