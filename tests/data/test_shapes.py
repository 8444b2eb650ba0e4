"""The synthetic shapes dataset: determinism, exact masks and tight boxes."""

from __future__ import annotations

import torch

from maskrcnn.data import ShapesDataset, masks_to_boxes
from maskrcnn.structures import Sample


def _same(a: Sample, b: Sample) -> bool:
    return (
        torch.equal(a.image, b.image)
        and torch.equal(a.targets.masks, b.targets.masks)
        and torch.equal(a.targets.boxes, b.targets.boxes)
        and torch.equal(a.targets.labels, b.targets.labels)
    )


def test_same_seed_identical_and_item_is_pure() -> None:
    a, b = ShapesDataset(12, seed=3), ShapesDataset(500, seed=3)
    forward = [a[i] for i in range(12)]
    backward = [b[i] for i in reversed(range(12))][::-1]
    assert all(_same(x, y) for x, y in zip(forward, backward))
    assert _same(a[7], a[7])


def test_different_seed_or_index_differs() -> None:
    a, b = ShapesDataset(4, seed=0), ShapesDataset(4, seed=1)
    assert not any(torch.equal(a[i].image, b[i].image) for i in range(4))
    assert not torch.equal(a[0].image, a[1].image)


def test_samples_are_well_formed() -> None:
    ds = ShapesDataset(30, seed=5, image_size=(96, 128), max_instances=5)
    assert ds.class_names == ["square", "circle", "triangle"] and ds.num_classes == 3
    counts, labels_seen = [], set()
    for i in range(len(ds)):
        s = ds[i]
        t = s.targets
        assert s.image.shape == (3, 96, 128) and s.image.dtype == torch.float32
        assert float(s.image.min()) >= 0.0 and float(s.image.max()) <= 1.0
        assert 1 <= len(t) <= 5 and t.masks.shape == (len(t), 96, 128) and t.masks.dtype == torch.uint8
        assert t.labels.dtype == torch.int64 and set(t.labels.tolist()) <= {1, 2, 3}
        assert torch.equal(t.boxes, masks_to_boxes(t.masks))
        # Visible masks never overlap (occluded pixels belong to the shape on top) ...
        assert int(t.masks.sum(0).max()) <= 1
        # ... and every instance keeps enough visible pixels.
        assert int(t.masks.flatten(1).sum(1).min()) >= ds.min_visible_area
        counts.append(len(t))
        labels_seen |= set(t.labels.tolist())
    assert labels_seen == {1, 2, 3}
    assert max(counts) > 1  # overlapping / multi-instance scenes do occur


def test_shape_pixels_differ_from_background() -> None:
    # Inside an instance the colour is the shape's; outside all instances it is the background.
    s = ShapesDataset(1, seed=11, max_instances=1)[0]
    mask = s.targets.masks[0].bool()
    inside = s.image[:, mask].mean(1)
    outside = s.image[:, ~mask].mean(1)
    assert float((inside - outside).abs().sum()) > 0.3
