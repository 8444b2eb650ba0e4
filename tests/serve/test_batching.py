"""MicroBatcher in-process, with the tiny real model: requests that arrive together run as one
batch and give what single predictions give; a request the model fails on fails alone."""

from __future__ import annotations

import asyncio

import pytest
import torch

import maskrcnn
from maskrcnn.inputs import load_image
from maskrcnn.serve.batching import MicroBatcher

VAL = "coco-mini/val2017"
NAMES = ["000000000139.jpg", "000000022192.jpg", "000000000802.jpg"]  # the first two: one padded size


def _same(a, b) -> None:
    assert torch.equal(a.labels, b.labels)
    assert torch.allclose(a.boxes, b.boxes, atol=1e-3) and torch.allclose(a.scores, b.scores, atol=1e-4)
    assert torch.equal(a.masks, b.masks)


async def _submit_all(batcher: MicroBatcher, requests: list[tuple[torch.Tensor, dict]]) -> list:
    return await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(image, **o) for image, o in requests), return_exceptions=True), 120
    )


@pytest.fixture(scope="module")
def predictor(weights):
    return maskrcnn.load(str(weights))


def test_concurrent_requests_form_one_batch_with_single_results(predictor, shared_data):
    images = [load_image(shared_data / VAL / name) for name in NAMES]
    options = [{}, {"score_thresh": 0.36}, {"classes": ["cat"]}]
    requests = [(image, o) for image in images for o in options]
    batcher = MicroBatcher(predictor, max_batch_size=16, max_wait_s=0.5)
    batcher.start()
    try:
        results = asyncio.run(_submit_all(batcher, requests))
    finally:
        batcher.stop()
    assert batcher.snapshot() == {
        "batches": 1,
        "requests": 9,
        "failed": 0,
        "largest_batch": 9,
        "batch_sizes": {"9": 1},
    }
    for (image, o), det in zip(requests, results):
        _same(det, predictor.predict([image], **o)[0])
    assert len(results[1]) < len(results[0]) == 5  # the threshold did apply


def test_a_failing_request_fails_alone(predictor, shared_data):
    good = load_image(shared_data / VAL / NAMES[0])
    bad = torch.rand(2, 64, 64)  # two channels: the model cannot normalise it
    batcher = MicroBatcher(predictor, max_batch_size=8, max_wait_s=0.5)
    batcher.start()
    try:
        results = asyncio.run(_submit_all(batcher, [(good, {}), (bad, {}), (good, {})]))
        again = asyncio.run(_submit_all(batcher, [(good, {})]))
    finally:
        batcher.stop()
    assert isinstance(results[1], Exception)
    expected = predictor.predict([good])[0]
    for det in (results[0], results[2], again[0]):
        _same(det, expected)
    stats = batcher.snapshot()
    assert (stats["requests"], stats["failed"], stats["largest_batch"]) == (4, 1, 3)
