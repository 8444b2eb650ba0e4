"""Large-scale jitter and the other transforms keep the image, masks and crowd boxes aligned.

Images of flat-coloured convex shapes, each instance its own colour on a distinct background: after
the transform, the image under each mask (less a one-pixel rim, where bilinear resampling blends
neighbours) is exactly that instance's colour, every pixel of exactly that colour is under its mask,
boxes are tight around the masks and the padding is zero. Crowd boxes are checked against values
worked out by hand.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from maskrcnn.data import Compose, HorizontalFlip, LargeScaleJitter, ResizeShortestEdge
from maskrcnn.structures import Sample, Targets

BACKGROUND = (40, 160, 90)
# instance colours, far from each other and from the background in at least one channel
COLOURS = [(230, 30, 30), (30, 40, 230), (240, 230, 20), (150, 20, 250)]


def flat_shapes(h: int = 90, w: int = 120) -> Sample:
    """Two rectangles and two ellipses (convex, disjoint), instance k labelled k + 1."""
    ys, xs = np.mgrid[:h, :w]
    shapes = [
        (ys >= 10) & (ys < 40) & (xs >= 8) & (xs < 50),
        ((ys - 60) / 20.0) ** 2 + ((xs - 85) / 25.0) ** 2 <= 1.0,
        (ys >= 70) & (ys < 81) & (xs >= 10) & (xs < 26),
        ((ys - 18) / 9.0) ** 2 + ((xs - 95) / 14.0) ** 2 <= 1.0,
    ]
    image = np.empty((h, w, 3), np.uint8)
    image[:] = BACKGROUND
    for mask, colour in zip(shapes, COLOURS):
        image[mask] = colour
    masks = torch.from_numpy(np.stack(shapes).astype(np.uint8))
    boxes = torch.tensor([_tight_box(m) for m in shapes], dtype=torch.float32)
    targets = Targets(boxes=boxes, labels=torch.arange(1, len(shapes) + 1), masks=masks)
    tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255.0
    return Sample(image=tensor, targets=targets, image_id=1, file_name="shapes.png")


def _tight_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def _erode(mask: np.ndarray, rim: int) -> np.ndarray:
    """Erosion by a (2 rim + 1) square; pixels outside the array count as background."""
    padded = np.pad(mask, rim)
    h, w = mask.shape
    out = np.ones_like(mask)
    for dy in range(2 * rim + 1):
        for dx in range(2 * rim + 1):
            out &= padded[dy : dy + h, dx : dx + w]
    return out


def check_flat_colours(out: Sample, *, rim: int = 1) -> int:
    """The checks of the module docstring on a transformed `flat_shapes()` sample, the colour under
    each mask checked `rim` pixels in from its edge (one resampling blends one pixel). Returns the
    number of interior mask pixels checked, to show that the check is not vacuous."""
    size = out.image.shape[-1]
    ch, cw = out.extra["valid_size"]
    pixels = (out.image * 255).round().to(torch.int64).permute(1, 2, 0).numpy()  # (H, W, 3)
    masks = out.targets.masks.numpy().astype(bool)
    # padding is zero in the image and the masks; the valid region has no black pixel
    assert not pixels[ch:].any() and not pixels[:, cw:].any()
    assert not masks[:, ch:].any() and not masks[:, :, cw:].any()
    assert pixels[:ch, :cw].any(axis=2).all()
    labels = out.targets.labels.tolist()
    assert len(set(labels)) == len(labels) and len(out.targets) == len(masks) == len(out.targets.boxes)
    checked = 0
    for label in range(1, len(COLOURS) + 1):
        exact = (pixels == COLOURS[label - 1]).all(axis=2)
        if label not in labels:  # an instance is dropped only when it is out of the picture
            assert not exact.any(), f"instance {label} was dropped but its colour is visible"
            continue
        k = labels.index(label)
        mask = masks[k]
        assert mask.any(), f"instance {label} kept with an empty mask"
        assert out.targets.boxes[k].tolist() == _tight_box(mask), f"instance {label}: box not tight"
        interior = _erode(mask, rim)
        wrong = interior & ~exact
        assert not wrong.any(), f"instance {label}: {wrong.sum()} interior mask pixels of another colour"
        outside = exact & ~mask
        assert not outside.any(), f"instance {label}: {outside.sum()} pixels of its colour outside its mask"
        checked += int(interior.sum())
    assert out.image.shape == (3, size, size)
    return checked


def test_flat_shapes_are_consistent_before_any_transform():
    sample = flat_shapes()
    sample.extra["valid_size"] = (90, 120)
    # the check on a square canvas: pad the sample by hand
    image = torch.zeros(3, 120, 120)
    image[:, :90] = sample.image
    masks = torch.zeros(4, 120, 120, dtype=torch.uint8)
    masks[:, :90] = sample.targets.masks
    padded = Sample(image, Targets(sample.targets.boxes, sample.targets.labels, masks), 1, "x")
    padded.extra["valid_size"] = (90, 120)
    assert check_flat_colours(padded) > 2500


@pytest.mark.parametrize("scale", [0.3, 0.55, 0.8])
def test_large_scale_jitter_pad_keeps_colours_under_masks(scale):
    sample = flat_shapes()
    out = LargeScaleJitter(96, scale_range=(scale, scale))(sample, torch.Generator().manual_seed(0))
    h, w = round(90 * 96 * scale / 120), round(120 * 96 * scale / 120)
    assert out.extra["valid_size"] == (h, w) and h < 96 and w < 96
    assert check_flat_colours(out) > (100 if scale > 0.5 else 10)
    assert out.targets.labels.tolist() == [1, 2, 3, 4]  # all shapes survive shrinking


@pytest.mark.parametrize("scale", [1.3, 1.7, 2.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_large_scale_jitter_crop_keeps_colours_under_masks(scale, seed):
    sample = flat_shapes()
    out = LargeScaleJitter(96, scale_range=(scale, scale))(sample, torch.Generator().manual_seed(seed))
    assert out.extra["valid_size"] == (min(96, round(90 * 96 * scale / 120)), 96)
    assert check_flat_colours(out) > 500


def test_pipeline_with_flip_keeps_colours_under_masks():
    pipeline = Compose([ResizeShortestEdge((70, 110), 200), HorizontalFlip(0.5), LargeScaleJitter(96)])
    flipped = 0
    for seed in range(6):
        out = pipeline(flat_shapes(), torch.Generator().manual_seed(seed))
        check_flat_colours(out, rim=2)  # resampled twice: a two-pixel rim may be blended
        # the flip: the blue ellipse starts right of the red rectangle unless mirrored
        labels = out.targets.labels.tolist()
        if 1 in labels and 2 in labels:
            red, blue = (out.targets.boxes[labels.index(k)] for k in (1, 2))
            flipped += bool(blue[0] < red[0])
    assert flipped > 0


# ---- crowd boxes, by hand ------------------------------------------------------------------------


def _crowd_sample(h: int, w: int, crowd: list[list[float]], image: torch.Tensor | None = None) -> Sample:
    empty = Targets(
        torch.zeros((0, 4)), torch.zeros((0,), dtype=torch.int64), torch.zeros((0, h, w), dtype=torch.uint8)
    )
    image = torch.full((3, h, w), 0.5) if image is None else image
    return Sample(image, empty, 1, "crowd.png", crowd_boxes=torch.tensor(crowd, dtype=torch.float32))


def test_crowd_boxes_through_resize_flip_and_lsj_pad():
    sample = _crowd_sample(100, 200, [[10, 20, 50, 60], [150, 0, 200, 100]])
    # shorter side 100 -> 50: everything halves
    resized = ResizeShortestEdge(50, 1000)(sample)
    assert resized.crowd_boxes.tolist() == [[5, 10, 25, 30], [75, 0, 100, 50]]
    # mirrored in a 100-pixel-wide image: x -> 100 - x, the two ends swapped
    flipped = HorizontalFlip(1.0)(resized)
    assert flipped.crowd_boxes.tolist() == [[75, 10, 95, 30], [0, 0, 25, 50]]
    # LSJ to 64 at scale 0.5: factor 64 * 0.5 / 100 = 0.32 -> 16 x 32 pixels, padded, nothing cut
    out = LargeScaleJitter(64, scale_range=(0.5, 0.5))(flipped, torch.Generator().manual_seed(0))
    assert out.extra["valid_size"] == (16, 32)
    expected = torch.tensor([[24.0, 3.2, 30.4, 9.6], [0.0, 0.0, 8.0, 16.0]])
    torch.testing.assert_close(out.crowd_boxes, expected)
    # all three in one pipeline give the same
    pipeline = Compose([ResizeShortestEdge(50, 1000), HorizontalFlip(1.0), LargeScaleJitter(64, (0.5, 0.5))])
    torch.testing.assert_close(pipeline(sample, torch.Generator().manual_seed(3)).crowd_boxes, expected)


def test_crowd_boxes_after_lsj_crop():
    # a 50 x 100 image whose red channel is x / 100: the crop offset can be read back from the pixels
    h, w = 50, 100
    ramp = torch.zeros(3, h, w)
    ramp[0] = torch.arange(w, dtype=torch.float32) / 100.0
    sample = _crowd_sample(h, w, [[75, 10, 95, 30], [0, 0, 25, 50]], image=ramp)
    lsj = LargeScaleJitter(64, scale_range=(2.0, 2.0))  # factor 64 * 2 / 100 = 1.28 -> 64 x 128: crop x
    offsets = set()
    for seed in range(8):
        out = lsj(sample, torch.Generator().manual_seed(seed))
        assert out.extra["valid_size"] == (64, 64)
        # output column j shows source x = (j + x0 + 0.5) / 1.28 - 0.5 (bilinear, half-pixel centres)
        j = 32
        x0 = round((float(out.image[0, 5, j]) * 100 + 0.5) * 1.28 - 0.5 - j)
        assert 0 <= x0 <= 64
        offsets.add(x0)
        # scaled by 1.28: [96, 12.8, 121.6, 38.4] and [0, 0, 32, 64]; shifted by -x0; cut to 64 x 64
        expected = []
        for x1, y1, x2, y2 in ([96 - x0, 12.8, 121.6 - x0, 38.4], [-x0, 0.0, 32 - x0, 64.0]):
            x1, x2 = min(max(x1, 0), 64), min(max(x2, 0), 64)
            if x2 > x1:
                expected.append([x1, y1, x2, y2])
        got = out.crowd_boxes
        assert got.shape == (len(expected), 4), (x0, got)
        if expected:
            torch.testing.assert_close(got, torch.tensor(expected), rtol=0, atol=1e-4)
    assert len(offsets) >= 4  # the seeds crop at different places
