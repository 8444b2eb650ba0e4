"""NMS over the images of a padded batch in one call: per image the same kept boxes, in the same
order, as torchvision's batched_nms on that image alone (its coordinate-offset path, a GPU's, up to
1000 boxes on the CPU; beyond, per image through batched_nms, as today)."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import batched_nms

from maskrcnn.inspect.host_sync import count_host_syncs
from maskrcnn.ops.nms import batched_nms_over_images


def random_batch(num_images: int, count: int, num_groups: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(num_images, count, 2, generator=gen) * 300
    wh = torch.rand(num_images, count, 2, generator=gen) * 80
    boxes = torch.cat((xy, xy + wh), dim=-1).clamp(max=320)  # clipped to a 320 px image
    # clusters of near-duplicates, so that NMS suppresses a lot
    boxes[:, 1::2] = boxes[:, 0::2] + torch.rand(num_images, count // 2, 4, generator=gen) * 3
    scores = torch.rand(num_images, count, generator=gen)
    scores[:, 5] = scores[:, 6]  # a tie
    groups = torch.randint(0, num_groups, (num_images, count), generator=gen)
    valid = torch.rand(num_images, count, generator=gen) > 0.2
    return boxes, scores, groups, valid


# (images, boxes each, groups); 2 x 1600: over 1000 valid boxes an image, torchvision's per-group path
SIZES = [(1, 50, 3), (2, 400, 5), (4, 300, 2), (7, 200, 4), (2, 1600, 5)]


@pytest.mark.parametrize(("num_images", "count", "num_groups"), SIZES)
def test_same_kept_boxes_per_image_as_one_call_per_image(num_images, count, num_groups) -> None:
    boxes, scores, groups, valid = random_batch(num_images, count, num_groups, seed=num_images)
    keep = batched_nms_over_images(boxes, scores, groups, valid, 0.5)
    kept_valid = keep[valid.flatten()[keep]]
    image = torch.div(kept_valid, count, rounding_mode="floor")
    total = 0
    for i in range(num_images):
        index = torch.where(valid[i])[0]
        want = index[batched_nms(boxes[i][index], scores[i][index], groups[i][index], 0.5)]
        got = kept_valid[image == i] - i * count
        assert torch.equal(got, want), f"image {i}"
        total += len(want)
    assert total == len(kept_valid) and 0 < total < valid.sum()
    # valid entries first, by decreasing score
    assert bool(valid.flatten()[keep[:total]].all())
    assert bool((scores.flatten()[kept_valid].diff() <= 0).all())


def test_one_wait_for_up_to_four_images() -> None:
    boxes, scores, groups, valid = random_batch(4, 300, 5, seed=0)
    report = count_host_syncs(batched_nms_over_images, boxes, scores, groups, valid, 0.7)
    assert [e.op for e in report.events] == ["torchvision::nms"], report.table()


def test_empty_batch() -> None:
    empty = torch.zeros(2, 0, 4)
    groups, valid = torch.zeros(2, 0, dtype=torch.int64), torch.zeros(2, 0, dtype=torch.bool)
    keep = batched_nms_over_images(empty, torch.zeros(2, 0), groups, valid, 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.int64
