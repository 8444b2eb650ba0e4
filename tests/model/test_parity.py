"""Parity with torchvision's Mask R-CNN (v1 and v2) on identical weights and inputs."""

from __future__ import annotations

import json

import pytest
import torch

from maskrcnn.predict import load_image

from .tv_reference import converted, torchvision_model

# reduced settings for most images, to keep the suite fast on 2 CPU cores
SMALL = {"min_size": 384, "max_size": 640, "rpn_pre_nms_top_n_test": 500, "rpn_post_nms_top_n_test": 300}
SMALL_OVERRIDES = [
    "model.input.min_size=[384]",
    "model.input.max_size=640",
    "model.rpn.pre_nms_topk_test=500",
    "model.rpn.post_nms_topk_test=300",
]


def real_images(shared_data):
    coco2 = sorted((shared_data / "coco-2img/images/val2017").iterdir())[0]
    ann = json.loads((shared_data / "coco-mini/annotations/instances_val2017.json").read_text())
    names = sorted(im["file_name"] for im in ann["images"])[:5]
    mini = [shared_data / "coco-mini/val2017" / n for n in names]
    return coco2, mini


def odd_images():
    gen = torch.Generator().manual_seed(7)
    return [torch.rand(3, 301, 457, generator=gen), torch.rand(3, 517, 263, generator=gen)]


def assert_same_detections(expected: dict, actual, what: str):
    n = len(expected["boxes"])
    assert n > 0, f"{what}: the reference model detected nothing; the test would be vacuous"
    assert len(actual.boxes) == n, f"{what}: {len(actual.boxes)} detections vs torchvision's {n}"
    assert torch.equal(actual.labels, expected["labels"]), what
    assert (actual.boxes - expected["boxes"]).abs().max() <= 1e-3, what
    assert (actual.scores - expected["scores"]).abs().max() <= 1e-4, what
    tv_masks = expected["masks"][:, 0] > 0.5
    assert actual.masks.shape == tv_masks.shape
    agree = (actual.masks == tv_masks).float().mean().item()
    assert agree >= 0.999, f"{what}: only {agree:.5f} of mask pixels equal"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_detections_match_torchvision(version, shared_data):
    coco2, mini = real_images(shared_data)
    # full-size on the coco-2img image
    tv = torchvision_model(version)
    ours = converted(tv, version)
    image = load_image(coco2)
    with torch.no_grad():
        assert_same_detections(tv([image])[0], ours.predict([image])[0], f"{version} {coco2.name}")
    # smaller inputs (to keep CI fast) on 5 coco-mini images and 2 random images of odd sizes
    tv_small = torchvision_model(version, **SMALL)
    ours_small = converted(tv_small, version, SMALL_OVERRIDES)
    images = [(p.name, load_image(p)) for p in mini] + [
        (f"random{i}", im) for i, im in enumerate(odd_images())
    ]
    with torch.no_grad():
        for name, image in images:
            assert_same_detections(tv_small([image])[0], ours_small.predict([image])[0], f"{version} {name}")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_proposals_match_torchvision(version, shared_data):
    coco2, _ = real_images(shared_data)
    tv = torchvision_model(version, **SMALL)
    ours = converted(tv, version, SMALL_OVERRIDES)
    images = [load_image(coco2), odd_images()[0]]
    with torch.no_grad():
        image_list, _ = tv.transform(images)
        tv_features = tv.backbone(image_list.tensors)
        tv_boxes, _ = tv.rpn(image_list, tv_features)
        batch, _ = ours.preprocess(images)
        assert torch.equal(batch.tensor, image_list.tensors)
        assert batch.image_sizes == [tuple(s) for s in image_list.image_sizes]
        features = ours.backbone(batch.tensor)
        for ours_f, tv_f in zip(features, tv_features.values()):
            torch.testing.assert_close(ours_f, tv_f, rtol=1e-5, atol=1e-5)
        proposals, _ = ours.propose(batch, features)
    for ours_p, tv_p in zip(proposals, tv_boxes):
        assert len(ours_p.boxes) == len(tv_p) > 100
        assert (ours_p.boxes - tv_p).abs().max() <= 1e-3
