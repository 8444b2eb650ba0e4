"""Overlays: pixel-level checks of masks, box outlines, labels and untouched pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.data import CocoDataset, ShapesDataset
from maskrcnn.structures import Detections, Sample
from maskrcnn.visualize import (
    draw_detections,
    draw_targets,
    instance_colors,
    relative_luminance,
    text_color_for,
    to_rgb_array,
)
from tests.helpers import LABEL_H, LABEL_W
from tests.helpers import drawing_zones as _zones

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def coco_sample(shared_data: Path) -> tuple[Sample, list[str]]:
    root = shared_data / "coco-mini"
    dataset = CocoDataset(root / "annotations" / "instances_val2017.json", root / "val2017")
    return dataset[0], dataset.class_names  # 000000000139.jpg: 640x426, 20 instances


def _detections_from_targets(sample: Sample) -> Detections:
    t = sample.targets
    return Detections(t.boxes, torch.linspace(0.99, 0.3, len(t)), t.labels, t.masks.bool())


def _contrast(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    la, lb = sorted((relative_luminance(a), relative_luminance(b)))
    return (lb + 0.05) / (la + 0.05)


def test_overlay_on_real_image(coco_sample: tuple[Sample, list[str]]) -> None:
    sample, names = coco_sample
    det = _detections_from_targets(sample)
    original = np.round(sample.image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    out = np.array(draw_detections(sample.image, det, class_names=names, alpha=0.5))
    assert out.shape == original.shape and out.dtype == np.uint8

    masks = det.masks.numpy()
    h, w = masks.shape[1:]
    outline, label = _zones(det.boxes.numpy(), h, w)
    free = ~masks.any(0) & ~outline & ~label
    assert free.sum() > 0.2 * h * w
    assert np.array_equal(out[free], original[free])  # untouched, bit for bit

    colors = instance_colors(len(det)).astype(int)
    single = (masks.sum(0) == 1) & ~outline & ~label
    owner = masks.argmax(0)[single]
    before, after, color = original[single].astype(int), out[single].astype(int), colors[owner]
    far = np.abs(color - before).max(axis=1) >= 8
    assert far.sum() > 10_000
    before, after, color = before[far], after[far], color[far]
    assert (np.abs(after - before).max(axis=1) > 0).all()  # tinted
    # Moved half way toward the instance colour (alpha 0.5), channel by channel.
    assert (np.abs(after - color) <= np.abs(before - color) // 2 + 1).all()
    assert (np.abs(after - before) <= np.abs(before - color) // 2 + 1).all()


def test_box_outline_has_the_instance_color(coco_sample: tuple[Sample, list[str]]) -> None:
    sample, names = coco_sample
    full = _detections_from_targets(sample)
    areas = (full.boxes[:, 2] - full.boxes[:, 0]) * (full.boxes[:, 3] - full.boxes[:, 1])
    k = int(areas.argmax())
    det = Detections(
        full.boxes[k : k + 1], full.scores[k : k + 1], full.labels[k : k + 1], full.masks[k : k + 1]
    )
    original = to_rgb_array(sample.image)
    out = np.array(draw_detections(sample.image, det, class_names=names))
    color = instance_colors(1)[0]
    x1, y1, x2, y2 = (int(round(v)) for v in det.boxes[0].tolist())
    xm, ym = (x1 + x2) // 2, (y1 + y2) // 2
    for y, x in [(y2 - 1, xm), (y2 - 2, xm), (ym, x1), (ym, x1 + 1), (ym, x2 - 1), (ym, x2 - 2)]:
        assert tuple(out[y, x]) == tuple(color), (y, x)
    if y2 < out.shape[0]:  # just below the 2 px outline: the box is the mask's tight box, so untouched
        assert np.array_equal(out[y2, x1:x2], original[y2, x1:x2])


def _label_pixels(out: np.ndarray, box: list[int], bg: tuple[int, ...]) -> np.ndarray:
    """(N, 3) pixels of the label drawn above `box`: the bounding box of its background colour."""
    x1, y1 = box[:2]
    region = out[y1 - LABEL_H : y1, x1 : x1 + LABEL_W]
    ys, xs = np.nonzero((region == bg).all(axis=2))
    assert len(ys) > 150, "label background colour missing"
    return region[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].reshape(-1, 3).astype(int)


def test_labels_readable_on_dark_and_light_images() -> None:
    h, w = 240, 360
    boxes = torch.tensor(
        [[x, y, x + 100, y + 70] for y in (40, 150) for x in (10, 130, 250)], dtype=torch.float32
    )
    masks = torch.zeros((6, h, w), dtype=torch.bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
        masks[i, y1 + 10 : y2 - 10, x1 + 10 : x2 - 10] = True
    det = Detections(boxes, torch.linspace(0.95, 0.5, 6), torch.arange(1, 7), masks)
    names = [f"thing{i}" for i in range(1, 7)]
    colors = instance_colors(6)
    labels = {}
    for value in (0.0, 1.0):  # a black and a white image
        out = np.array(draw_detections(torch.full((3, h, w), value), det, class_names=names))
        labels[value] = []
        for i, box in enumerate(boxes.int().tolist()):
            bg, fg = tuple(colors[i].tolist()), text_color_for(colors[i])
            pixels = _label_pixels(out, box, bg)
            # Text pixels: within 48 of the text colour per channel (the glyphs are anti-aliased).
            assert (np.abs(pixels - fg).max(axis=1) <= 48).sum() > 20, f"label {i}: no text colour"
            other = (255, 255, 255) if fg == (0, 0, 0) else (0, 0, 0)
            assert _contrast(fg, bg) >= _contrast(other, bg) and _contrast(fg, bg) >= 3.0
            labels[value].append(pixels)
    # Labels are opaque: the same pixels on the dark and on the light image.
    assert all(np.array_equal(a, b) for a, b in zip(labels[0.0], labels[1.0]))


def test_text_color_choice() -> None:
    assert text_color_for((0, 0, 0)) == (255, 255, 255) and text_color_for((255, 255, 255)) == (0, 0, 0)
    assert text_color_for((20, 20, 120)) == (255, 255, 255) and text_color_for((250, 230, 80)) == (0, 0, 0)
    colors = instance_colors(12)
    assert len({tuple(c) for c in colors.tolist()}) == 12 and np.array_equal(colors, instance_colors(12))


def test_input_types_and_threshold(coco_sample: tuple[Sample, list[str]]) -> None:
    sample, names = coco_sample
    det = _detections_from_targets(sample)
    rgb = to_rgb_array(sample.image)
    ref = np.array(draw_detections(sample.image, det, class_names=names))
    assert np.array_equal(np.array(draw_detections(rgb, det, class_names=names)), ref)
    assert np.array_equal(np.array(draw_detections(Image.fromarray(rgb), det, class_names=names)), ref)
    # At 0.94 only the first two detections are drawn; the other masks stay untouched.
    thresh = np.array(draw_detections(rgb, det, class_names=names, score_thresh=0.94))
    masks = det.masks.numpy()
    outline, label = _zones(det.boxes[:2].numpy(), *masks.shape[1:])
    others = masks[2:].any(0) & ~masks[:2].any(0) & ~outline & ~label
    assert others.sum() > 1000 and np.array_equal(thresh[others], rgb[others])
    with pytest.raises(ValueError, match="masks are 10x10 but the image is 426x640"):
        draw_detections(
            rgb, Detections(det.boxes[:1], det.scores[:1], det.labels[:1], det.masks[:1, :10, :10])
        )


def test_draw_targets_shapes() -> None:
    sample = ShapesDataset(2, seed=1)[1]
    out = np.array(draw_targets(sample.image, sample.targets, ["square", "circle", "triangle"]))
    original = to_rgb_array(sample.image)
    masks = sample.targets.masks.numpy().astype(bool)
    outline, label = _zones(sample.targets.boxes.numpy(), *masks.shape[1:])
    free = ~masks.any(0) & ~outline & ~label
    inside = masks.any(0) & ~outline & ~label
    assert free.any() and np.array_equal(out[free], original[free])
    assert inside.any() and (out[inside] != original[inside]).any(axis=1).mean() > 0.9


def test_every_image_kind_is_drawn_as_decoded(coco_sample: tuple[Sample, list[str]], tmp_path: Path) -> None:
    """Paths, grayscale arrays, RGBA and 16-bit PIL images: the overlay is the one drawn on the image
    as `maskrcnn.inputs` decodes it (what the model was given)."""
    sample, names = coco_sample
    det = _detections_from_targets(sample)
    rgb = to_rgb_array(sample.image)

    def drawn(image) -> np.ndarray:
        return np.array(draw_detections(image, det, class_names=names))

    Image.fromarray(rgb).save(tmp_path / "photo.png")
    assert np.array_equal(drawn(tmp_path / "photo.png"), drawn(rgb))
    assert np.array_equal(drawn(str(tmp_path / "photo.png")), drawn(rgb))
    gray = rgb[..., 1].copy()
    assert np.array_equal(drawn(gray), drawn(np.dstack([gray] * 3)))
    assert np.array_equal(drawn(Image.fromarray(gray.astype(np.uint16) * 257)), drawn(np.dstack([gray] * 3)))
    rgba = np.dstack([rgb, np.full(gray.shape, 255, np.uint8)])
    rgba[:100, :, 3] = 0  # a transparent band: drawn over white
    expected = rgb.copy()
    expected[:100] = 255
    assert np.array_equal(drawn(Image.fromarray(rgba, "RGBA")), drawn(expected))
