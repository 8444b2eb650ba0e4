"""Upload limits and decoding: what a request may send, and its bytes -> a (3, H, W) image tensor.

- `BodyLimit` (ASGI middleware): a request body over `max_bytes` is refused with 413, from its
  Content-Length header before anything is read, and otherwise by counting the bytes actually
  received (a chunked upload, or a Content-Length that lies), so a large upload is never held whole.
  Before answering, the rest of a refused body is read and dropped (at most `DRAIN_BYTES`, for at
  most `DRAIN_SECONDS`): a server that closes a socket with unread bytes in it resets the
  connection, and the reset can destroy the 413 before the client, still sending, has read it.
- `decode_upload(data, max_pixels=N)`: reads the image header first and refuses an image of more than
  N pixels with 413 before any pixel is decoded (a decompression bomb: a small file that declares a
  huge image), one too thin for the model (`maskrcnn.image_limits`: an aspect ratio over 100:1, or a
  side under 1 px once resized) with 422, a body that is no image with 415, then decodes it like
  `maskrcnn predict` does (`maskrcnn.files` AS_DISPLAYED: EXIF orientation applied, transparency
  composited on white).

Every refusal is an `UploadError` with an HTTP status and a one-line reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from typing import Any, Callable

import torch
from PIL import Image, UnidentifiedImageError

from ..files import AS_DISPLAYED, ImageReadError, NamedBytes, pixels_to_tensor, read_pixels
from ..image_limits import image_shape_problem

__all__ = ["BodyLimit", "UploadError", "decode_upload"]

MIB = 1 << 20
DRAIN_BYTES = 64 * MIB
DRAIN_SECONDS = 5.0


class UploadError(Exception):
    """A refused request: `status` (400, 413, 415, 422) and a one-line `reason`."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _size_text(n: float) -> str:
    return f"{n / MIB:.3g} MB"


def decode_upload(data: bytes, *, max_pixels: int, name: str = "upload", resize=None) -> torch.Tensor:
    """Image file bytes -> (3, H, W) float32 RGB in [0, 1]; UploadError 400/413/415/422 (module
    docstring). `resize`: the model's (h, w) -> resized (h, w), for the thin-image check."""
    if not data:
        raise UploadError(400, "empty upload: send an image as the multipart field 'image' or as the body")
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only
            width, height = im.size
    except UnidentifiedImageError:
        raise UploadError(415, f"{name}: not an image (Pillow recognises no image format in it)") from None
    except Image.DecompressionBombError as e:
        raise UploadError(413, f"{name}: image too large ({e})") from None
    except Exception as e:  # a header that starts like an image and then breaks
        raise UploadError(415, f"{name}: unreadable image header ({e or type(e).__name__})") from None
    resized = resize(height, width) if resize is not None and min(height, width) > 0 else None
    problem = image_shape_problem(height, width, max_pixels=max_pixels, resized=resized)
    if problem is not None:  # a thin image: 422, too many pixels: 413
        raise UploadError(422 if problem[0] == "thin" else 413, f"{name}: {problem[1]}")
    try:
        return pixels_to_tensor(read_pixels(NamedBytes(data, name), policy=AS_DISPLAYED))
    except ImageReadError as e:
        raise UploadError(415, str(e)) from None


Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


class BodyLimit:
    """ASGI middleware: 413 for a request body over `max_bytes` (see the module docstring)."""

    def __init__(self, app: Any, *, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, size: str) -> UploadError:
        return UploadError(
            413, f"upload of {size} is over the limit of {_size_text(self.max_bytes)} (--max-upload-mb)"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _send_json(send, 400, f"bad Content-Length header {declared.decode('latin-1')!r}")
                return
            if int(declared) > self.max_bytes:
                await _discard_body(receive)
                await _send_json(send, 413, self._too_large(_size_text(int(declared))).reason)
                return
        received = 0
        started = False
        body_done = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, body_done
            message = await receive()
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large(f"more than {_size_text(self.max_bytes)}")
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except UploadError as e:
            if started:
                raise
            if not body_done:
                await _discard_body(receive)
            await _send_json(send, e.status, e.reason)


async def _discard_body(receive: Receive) -> None:
    """Read and drop the rest of a request body, up to DRAIN_BYTES and DRAIN_SECONDS (module docstring)."""

    async def drain() -> None:
        dropped = 0
        while dropped <= DRAIN_BYTES:
            message = await receive()
            if message["type"] != "http.request":
                return
            dropped += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(drain(), DRAIN_SECONDS)


async def _send_json(send: Send, status: int, reason: str, *, headers: dict[str, str] | None = None) -> None:
    """A one-line JSON refusal {"detail": reason} that closes the connection; `headers` added."""
    body = json.dumps({"detail": reason}, separators=(",", ":")).encode()
    fields = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    fields.append((b"connection", b"close"))
    fields += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": fields})
    await send({"type": "http.response.body", "body": body})
