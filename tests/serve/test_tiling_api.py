"""The `tile` field of POST /v1/predict (tiled inference, `maskrcnn.tiling`) against the real server:
the same detections as `Predictor.predict(..., tile=)`, and 400 for bad tile values."""

from __future__ import annotations

import httpx

import maskrcnn
from maskrcnn.tiling import TileSettings

from .test_api import IMAGES, TIMEOUT, VAL, _expected, _post_file


def test_tile_field_gives_the_tiled_prediction(server, weights, shared_data):
    predictor = maskrcnn.load(str(weights))
    path = shared_data / VAL / IMAGES[0]
    expected = _expected(predictor, path, tile=TileSettings(480, overlap=0.1, merge="nms"))
    assert len(expected) > 5  # 2 tiles: more than one image's 5 detections
    response = _post_file(server.url, path, tile="480", tile_overlap="0.1", tile_merge="nms")
    assert response.status_code == 200, response.text
    assert response.json()["detections"] == expected
    with open(path, "rb") as f:  # as form fields
        form = httpx.post(
            f"{server.url}/v1/predict",
            files={"image": f},
            data={"tile": "480", "tile_overlap": "0.1", "tile_merge": "nms"},
            timeout=TIMEOUT,
        )
    assert form.status_code == 200 and form.json()["detections"] == expected
    for params, field in (
        ({"tile": "big"}, "tile must be"),
        ({"tile": "8"}, "tile size"),
        ({"tile": "480", "tile_merge": "union"}, "tile merge"),
        ({"tile_merge": "nms"}, "tile_merge needs tile"),
    ):
        refused = _post_file(server.url, path, **params)
        assert refused.status_code == 400 and field in refused.json()["detail"], refused.text
