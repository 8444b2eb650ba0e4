"""`maskrcnn serve` answers 422 for an image too thin for the model (1x20000, 20000x1: an aspect ratio
over `maskrcnn.image_limits.MAX_ASPECT_RATIO`), one line naming the upload, and keeps serving."""

from __future__ import annotations

import io

import httpx
from PIL import Image

TIMEOUT = httpx.Timeout(60.0)


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_thin_image_gets_422_and_the_server_keeps_serving(server):
    url = f"{server.url}/v1/predict"
    for width, height in ((20000, 1), (1, 20000)):
        response = httpx.post(url, files={"image": ("strip.png", _png(width, height))}, timeout=TIMEOUT)
        assert response.status_code == 422, response.text
        reason = response.json()["detail"]
        assert "\n" not in reason and reason.startswith("strip.png: ") and "too thin" in reason
        assert f"{width}x{height}" in reason
    good = httpx.post(url, content=_png(200, 3), timeout=TIMEOUT)  # 66:1 is within the limit
    assert good.status_code == 200 and good.json()["height"] == 3
    assert server.process.poll() is None
