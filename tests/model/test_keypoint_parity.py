"""Parity with torchvision's Keypoint R-CNN (`keypointrcnn_resnet50_fpn`) on identical weights and
inputs: detections and keypoints on real person images and random odd-size images, and the
keypoint loss on the same sampled RoIs."""

from __future__ import annotations

import json

import pytest
import torch
from torchvision.models.detection.roi_heads import keypointrcnn_loss

from maskrcnn.inputs import load_image
from maskrcnn.model.keypoint_branch import keypoint_loss, keypoint_targets

from .tv_reference import converted, torchvision_model

# small inputs, and the top 25 detections (not 100) per image: the keypoint head (8 conv3x3 of 512
# channels on 14x14 per detection) is most of the cost of each model on 2 CPU cores
SMALL = {
    "min_size": 384,
    "max_size": 640,
    "rpn_pre_nms_top_n_test": 500,
    "rpn_post_nms_top_n_test": 300,
    "box_detections_per_img": 25,
}
SMALL_OVERRIDES = [
    "model.input.min_size=[384]",
    "model.input.max_size=640",
    "model.rpn.pre_nms_topk_test=500",
    "model.rpn.post_nms_topk_test=300",
    "model.roi_heads.detections_per_image=25",
]
PERSONS = "coco-mini/annotations/person_keypoints_val2017.json"


def person_images(shared_data, count: int = 3):
    """The coco-mini val images with the most annotated people."""
    ann = json.loads((shared_data / PERSONS).read_text())
    people: dict[int, int] = {}
    for a in ann["annotations"]:
        if a["num_keypoints"] > 0:
            people[a["image_id"]] = people.get(a["image_id"], 0) + 1
    names = {im["id"]: im["file_name"] for im in ann["images"]}
    best = sorted(people, key=lambda i: -people[i])[:count]
    return [shared_data / "coco-mini/val2017" / names[i] for i in best]


@pytest.fixture(scope="module")
def models():
    tv = torchvision_model("keypoint", **SMALL)
    return tv, converted(tv, "keypoint", SMALL_OVERRIDES)


def test_detections_and_keypoints_match_torchvision(models, shared_data):
    tv, ours = models
    gen = torch.Generator().manual_seed(7)
    images = [load_image(p) for p in person_images(shared_data)]
    images += [torch.rand(3, 301, 457, generator=gen), torch.rand(3, 517, 263, generator=gen)]
    total = 0
    for i, image in enumerate(images):
        with torch.no_grad():
            (expected,) = tv([image])
            (actual,) = ours.predict([image])
        n = len(expected["boxes"])
        assert n > 0, f"image {i}: torchvision detected nothing; the test would be vacuous"
        assert len(actual) == n and torch.equal(actual.labels, expected["labels"]), i
        assert (actual.boxes - expected["boxes"]).abs().max() <= 1e-3, i
        assert (actual.scores - expected["scores"]).abs().max() <= 1e-4, i
        assert actual.masks is None and actual.keypoints.shape == (n, 17, 3)
        xy_error = (actual.keypoints[..., :2] - expected["keypoints"][..., :2]).abs().max()
        assert xy_error <= 1e-3, f"image {i}: keypoints differ by {xy_error:.4g} px"
        score_error = (actual.keypoints[..., 2] - expected["keypoints_scores"]).abs().max()
        assert score_error <= 1e-4, f"image {i}: keypoint scores differ by {score_error:.4g}"
        total += n
    assert total >= 50


def test_keypoint_loss_matches_torchvision_on_the_same_rois(shared_data):
    """Ground-truth keypoints of real people on RoIs jittered around their boxes (some keypoints
    fall outside, some on the right/bottom edge, some unlabelled): targets and loss equal
    torchvision's `keypointrcnn_loss`."""
    ann = json.loads((shared_data / PERSONS).read_text())
    people = [a for a in ann["annotations"] if a["num_keypoints"] > 0][:12]
    keypoints = torch.tensor([a["keypoints"] for a in people], dtype=torch.float32).reshape(-1, 17, 3)
    boxes = torch.tensor([a["bbox"] for a in people], dtype=torch.float32)
    boxes[:, 2:] += boxes[:, :2]
    gen = torch.Generator().manual_seed(3)
    matched = torch.randint(0, len(people), (40,), generator=gen)
    jitter = (torch.rand(40, 4, generator=gen) - 0.5) * 30
    rois = boxes[matched] + jitter
    rois[:, 2:] = torch.maximum(rois[:, 2:], rois[:, :2] + 4)
    # put some labelled keypoints exactly on their RoI's right or bottom edge
    labelled = torch.where(keypoints[matched][:, 0, 2] > 0)[0][:3]
    for r in labelled.tolist():
        rois[r, 2] = keypoints[matched[r], 0, 0]
        rois[r, 3] = keypoints[matched[r], 0, 1] + 1
    logits = torch.randn(40, 17, 56, 56, generator=gen)
    expected = keypointrcnn_loss(logits, [rois], [keypoints], [matched])
    cells, valid = keypoint_targets(keypoints[matched], rois, 56)
    assert 0 < int(valid.sum()) < valid.numel()  # both kinds present: the test is not vacuous
    assert (cells[labelled, 0] % 56 == 55).all()  # edge keypoints land in the last column
    actual = keypoint_loss(logits, cells, valid)
    assert abs(actual.item() - expected.item()) <= 1e-5
