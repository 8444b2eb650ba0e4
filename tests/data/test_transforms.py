"""Transforms keep image, masks, boxes and crowd boxes consistent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import maskrcnn.data
from maskrcnn.data import (
    CocoDataset,
    Compose,
    HorizontalFlip,
    LargeScaleJitter,
    ResizeShortestEdge,
    ShapesDataset,
)
from maskrcnn.ops.boxes import _masks_to_boxes_torch, masks_to_boxes
from maskrcnn.structures import Sample, Targets


@pytest.fixture(scope="module")
def coco_val(shared_data: Path) -> Sample:
    """The coco-2img val image: 427x640, 19 instances."""
    root = shared_data / "coco-2img"
    ds = CocoDataset(root / "annotations" / "instances_val2017.json", root / "images" / "val2017")
    return ds[0]


@pytest.fixture(scope="module")
def crowd_sample(shared_data: Path) -> Sample:
    """A coco-mini image with crowd regions (image 174375: 2 crowd boxes)."""
    root = shared_data / "coco-mini"
    ds = CocoDataset(root / "annotations" / "instances_train2017.json", root / "train2017")
    return ds[ds.image_ids.index(174375)]


def _check_consistent(s: Sample) -> None:
    t = s.targets
    h, w = s.image.shape[-2:]
    assert t.masks.shape == (len(t), h, w) and t.labels.shape == (len(t),) and t.boxes.shape == (len(t), 4)
    assert torch.equal(t.boxes, masks_to_boxes(t.masks)), "boxes must stay tight around the masks"
    assert bool(t.masks.flatten(1).any(1).all()), "empty instances must be removed"
    assert int(t.masks.max()) <= 1 and float(s.image.min()) >= 0.0 and float(s.image.max()) <= 1.0


def test_masks_to_boxes() -> None:
    m = torch.zeros((4, 5, 7), dtype=torch.uint8)
    m[0, 1:3, 2:6] = 1
    m[2, 4, 6] = 1
    m[3, 0, 1] = m[3, 3, 4] = 1  # two pixels with empty rows and columns between them
    expected = [[2, 1, 6, 3], [0, 0, 0, 0], [6, 4, 7, 5], [1, 0, 5, 4]]
    assert masks_to_boxes(m).tolist() == expected
    strided = m.transpose(1, 2).contiguous().transpose(1, 2)  # the same values, not contiguous
    for other in (m.bool(), m.float() * 0.5, strided):  # any dtype: nonzero is set
        assert masks_to_boxes(other).tolist() == expected
    assert masks_to_boxes(m.transpose(1, 2)).tolist() == [[y1, x1, y2, x2] for x1, y1, x2, y2 in expected]
    # the torch operations used on accelerators give the same boxes as the NumPy path on the CPU
    assert _masks_to_boxes_torch(m).tolist() == expected
    for shape in [(0, 4, 4), (2, 0, 3), (2, 3, 0)]:
        assert masks_to_boxes(torch.zeros(shape)).tolist() == [[0, 0, 0, 0]] * shape[0]
    assert masks_to_boxes(m).dtype == torch.float32
    assert maskrcnn.data.masks_to_boxes is masks_to_boxes  # one function, in maskrcnn.ops.boxes


def test_flip_twice_is_identity(coco_val: Sample) -> None:
    flip = HorizontalFlip(1.0)
    once = flip(coco_val)
    _check_consistent(once)
    assert torch.equal(once.image, coco_val.image.flip(-1))
    w = coco_val.image.shape[-1]
    assert torch.equal(once.targets.boxes[:, 0], w - coco_val.targets.boxes[:, 2])
    twice = flip(once)
    assert torch.equal(twice.image, coco_val.image)
    assert torch.equal(twice.targets.masks, coco_val.targets.masks)
    assert torch.equal(twice.targets.boxes, coco_val.targets.boxes)
    assert torch.equal(twice.targets.labels, coco_val.targets.labels)
    assert HorizontalFlip(0.0)(coco_val) is coco_val


def test_flip_crowd_boxes(crowd_sample: Sample) -> None:
    w = crowd_sample.image.shape[-1]
    flipped = HorizontalFlip(1.0)(crowd_sample)
    c0, c1 = crowd_sample.crowd_boxes, flipped.crowd_boxes
    assert c1.shape == (2, 4)
    assert torch.equal(c1[:, [0, 2]], w - c0[:, [2, 0]]) and torch.equal(c1[:, [1, 3]], c0[:, [1, 3]])


def test_resize_shortest_edge(coco_val: Sample) -> None:
    out = ResizeShortestEdge((400,), 1333)(coco_val)  # 427x640 -> 400x600 (scale 0.9368)
    assert out.image.shape == (3, 400, 600)
    _check_consistent(out)
    assert len(out.targets) == 19 and torch.equal(out.targets.labels, coco_val.targets.labels)
    # The boxes scale with the image (within a pixel of rounding).
    scaled = coco_val.targets.boxes * (400 / 427)
    assert (out.targets.boxes - scaled).abs().max() <= 1.5

    capped = ResizeShortestEdge(800, 1000)(coco_val)  # 800 would make the long side 1199 > 1000
    assert capped.image.shape == (3, 667, 1000)  # 427 * 1000 / 640 = 667.2
    _check_consistent(capped)


def test_resize_random_choice_uses_generator() -> None:
    sample = ShapesDataset(1, image_size=(100, 150))[0]
    t = ResizeShortestEdge((50, 80, 120), 1333)
    seen = set()
    for seed in range(12):
        a = t(sample, torch.Generator().manual_seed(seed))
        b = t(sample, torch.Generator().manual_seed(seed))
        assert torch.equal(a.image, b.image) and torch.equal(a.targets.masks, b.targets.masks)
        _check_consistent(a)
        seen.add(tuple(a.image.shape[-2:]))
    assert seen == {(50, 75), (80, 120), (120, 180)}


def test_resize_masks_exact_on_integer_upscale() -> None:
    masks = torch.tensor([[[0, 1, 1], [0, 0, 1]]], dtype=torch.uint8)
    s = Sample(torch.rand(3, 2, 3), Targets(masks_to_boxes(masks), torch.tensor([1]), masks), 0, "x")
    out = ResizeShortestEdge(4, 100)(s)  # exactly x2
    assert torch.equal(out.targets.masks[0], masks[0].repeat_interleave(2, 0).repeat_interleave(2, 1))
    assert out.targets.boxes.tolist() == [[2, 0, 6, 4]]


def test_large_scale_jitter_crop(coco_val: Sample) -> None:
    lsj = LargeScaleJitter(256, scale_range=(1.5, 2.0))  # always larger than 256: random crop
    for seed in range(3):
        out = lsj(coco_val, torch.Generator().manual_seed(seed))
        assert out.image.shape == (3, 256, 256) and out.extra["valid_size"] == (256, 256)
        _check_consistent(out)
        assert 0 < len(out.targets) <= 19
    a = lsj(coco_val, torch.Generator().manual_seed(5))
    b = lsj(coco_val, torch.Generator().manual_seed(5))
    assert torch.equal(a.image, b.image) and torch.equal(a.targets.masks, b.targets.masks)


def test_large_scale_jitter_pad(coco_val: Sample) -> None:
    out = LargeScaleJitter(256, scale_range=(0.5, 0.5))(coco_val)  # 427x640 -> 85x128, padded
    assert out.image.shape == (3, 256, 256) and out.extra["valid_size"] == (85, 128)
    _check_consistent(out)
    assert float(out.image[:, 85:].abs().sum()) == 0.0 and float(out.image[:, :, 128:].abs().sum()) == 0.0
    assert not bool(out.targets.masks[:, 85:].any()) and not bool(out.targets.masks[:, :, 128:].any())
    # Tiny objects may vanish at this scale; the survivors keep their labels in order.
    assert 0 < len(out.targets) <= 19


def test_large_scale_jitter_crowd_boxes(crowd_sample: Sample) -> None:
    out = LargeScaleJitter(128, scale_range=(2.0, 2.0))(crowd_sample, torch.Generator().manual_seed(0))
    c = out.crowd_boxes
    assert c is not None and c.shape[1] == 4
    assert bool((c[:, 0] >= 0).all() & (c[:, 2] <= 128).all() & (c[:, 2] > c[:, 0]).all())


def test_compose_pipeline_on_shapes() -> None:
    pipeline = Compose([ResizeShortestEdge((96, 160), 200), HorizontalFlip(0.5), LargeScaleJitter(128)])
    ds = ShapesDataset(5, seed=2)
    for i in range(len(ds)):
        g = torch.Generator().manual_seed(i)
        out = pipeline(ds[i], g)
        assert out.image.shape == (3, 128, 128)
        _check_consistent(out)


def test_transforms_on_image_without_instances() -> None:
    empty = Targets(
        torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64), torch.zeros((0, 30, 40), dtype=torch.uint8)
    )
    s = Sample(torch.rand(3, 30, 40), empty, 0, "x", crowd_boxes=torch.zeros((0, 4)))
    pipeline = Compose([ResizeShortestEdge(60, 100), HorizontalFlip(1.0), LargeScaleJitter(64)])
    out = pipeline(s, torch.Generator().manual_seed(0))
    assert out.image.shape == (3, 64, 64) and out.targets.masks.shape == (0, 64, 64)
    assert out.targets.boxes.shape == (0, 4) and out.crowd_boxes.shape == (0, 4)
