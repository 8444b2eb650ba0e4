"""Masks against torchvision's, detection by detection and pixel by pixel.

A pooled pixel fraction over mostly-background images would hide a wrong or shifted mask: here every
detection's mask must reach IoU >= 0.99 with torchvision's own mask of that detection, and the
batched pasting is compared with torchvision's `paste_masks_in_image` (not with a reference that
shares our helpers).
"""

from __future__ import annotations

import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from maskrcnn.inputs import load_image
from maskrcnn.model.mask_paste import paste_masks

from .tv_reference import converted, torchvision_model

# smaller than test_parity's SMALL (each R50 forward costs seconds on 2 CPU cores); 25 detections
# per image still give 50 masks per version
TV_SIZE = {
    "min_size": 320,
    "max_size": 480,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 150,
    "box_detections_per_img": 25,
}
OVERRIDES = [
    "model.input.min_size=[320]",
    "model.input.max_size=480",
    "model.rpn.pre_nms_topk_test=300",
    "model.rpn.post_nms_topk_test=150",
    "model.roi_heads.detections_per_image=25",
]


def mask_ious(ours: torch.Tensor, theirs: torch.Tensor) -> list[float]:
    """IoU of each pair of (D, H, W) boolean masks; 1.0 where both are empty."""
    inter = (ours & theirs).flatten(1).sum(1)
    union = (ours | theirs).flatten(1).sum(1)
    return [1.0 if u == 0 else float(i) / float(u) for i, u in zip(inter.tolist(), union.tolist())]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_every_mask_matches_torchvision(version, shared_data):
    tv = torchvision_model(version, **TV_SIZE)
    ours = converted(tv, version, OVERRIDES)
    checked = 0
    for path in sorted((shared_data / "coco-mini/val2017").iterdir())[:2]:
        image = load_image(path)
        with torch.no_grad():
            expected, det = tv([image])[0], ours.predict([image])[0]
        n = len(expected["boxes"])
        assert n == 25 and len(det) == n, f"{version} {path.name}: {len(det)} detections vs {n}"
        assert torch.equal(det.labels, expected["labels"])
        assert (det.boxes - expected["boxes"]).abs().max() <= 1e-3
        tv_masks = expected["masks"][:, 0] > 0.5
        assert det.masks.shape == tv_masks.shape and det.masks.dtype == torch.bool
        ious = mask_ious(det.masks, tv_masks)
        worst = min(range(n), key=ious.__getitem__)
        assert ious[worst] >= 0.99, f"{version} {path.name}: detection {worst} has mask IoU {ious[worst]:.4f}"
        # non-vacuous: the masks are real shapes, not all empty
        sizes = tv_masks.flatten(1).sum(1)
        assert (sizes > 0).float().mean() > 0.8 and int(sizes.max()) > 500
        checked += n
    assert checked == 50


def _random_case(seed: int, num: int, image_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Random 28x28 probability maps and boxes: inside, partly outside, tiny, larger than the image.
    No box lies entirely outside the image: torchvision's paste_mask_in_image fails on those (and
    detections are clipped to the image, so the model never pastes one)."""
    gen = torch.Generator().manual_seed(seed)
    h, w = image_size
    bw = torch.rand(num, generator=gen) * w * 0.8 + 0.5
    bh = torch.rand(num, generator=gen) * h * 0.8 + 0.5
    x1 = torch.rand(num, generator=gen) * (w - 2 + bw) - bw + 1  # 1 - bw <= x1 <= w - 1: x2 >= 1
    y1 = torch.rand(num, generator=gen) * (h - 2 + bh) - bh + 1
    special = torch.tensor(
        [
            [10.2, 12.7, 10.6, 13.1],  # under a pixel
            [3.0, 4.0, 3.0, 4.0],  # zero size
            [20.0, 9.0, 22.5, 11.0],  # a few pixels
            [-30.0, -20.0, 15.5, 9.5],  # sticking out at the top left
            [w - 10.5, h - 7.25, w + 40.0, h + 30.0],  # sticking out at the bottom right
            [-50.0, -50.0, w + 50.0, h + 50.0],  # larger than the image
            [0.0, 0.0, 1.0, float(h)],  # one pixel wide, full height
        ]
    )
    boxes = torch.cat((special, torch.stack((x1, y1, x1 + bw, y1 + bh), dim=1)))
    # smooth-ish maps (like a mask head's) and raw noise
    noise = torch.rand(len(boxes), 28, 28, generator=gen)
    blobs = torch.nn.functional.avg_pool2d(noise[:, None], 5, stride=1, padding=2)[:, 0]
    probs = torch.where(torch.arange(len(boxes))[:, None, None] % 2 == 0, noise, (blobs - 0.5) * 4 + 0.5)
    return probs.clamp(0, 1), boxes


@pytest.mark.parametrize("seed, image_size", [(0, (97, 131)), (1, (64, 48)), (2, (240, 320))])
def test_paste_masks_equals_torchvision(seed, image_size):
    probs, boxes = _random_case(seed, 40, image_size)
    expected = paste_masks_in_image(probs[:, None], boxes, image_size, padding=1)[:, 0]
    ours = paste_masks(probs, boxes, image_size)
    assert ours.dtype == torch.bool and ours.shape == (len(boxes), *image_size)
    differ = ours != (expected > 0.5)
    assert int(differ.sum()) == 0, (
        f"{int(differ.sum())} pixels differ, in masks {differ.any((1, 2)).nonzero()}"
    )
    # non-vacuous: most masks cover pixels, the tiny one a few
    covered = ours.flatten(1).sum(1)
    assert (covered > 0).sum() >= 25 and int(covered.sum()) > 5000
    assert 0 < int(covered[2]) < 50


def test_paste_no_masks_like_torchvision():
    expected = paste_masks_in_image(torch.zeros((0, 1, 28, 28)), torch.zeros((0, 4)), (37, 53), padding=1)
    ours = paste_masks(torch.zeros((0, 28, 28)), torch.zeros((0, 4)), (37, 53))
    assert ours.shape == expected[:, 0].shape == (0, 37, 53) and ours.dtype == torch.bool
