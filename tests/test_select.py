"""`Detections.select` and `Targets.select` on hand-built instances: a bool mask keeps the chosen
instances in their order, an index tensor gives them in its own order (repeats included), and every
per-instance field (boxes, scores, labels, masks and any other) moves with its instance."""

from __future__ import annotations

import dataclasses

import torch

from maskrcnn.structures import Detections, Targets


def _instances(n: int = 4, h: int = 6, w: int = 7) -> dict[str, torch.Tensor]:
    """Instance i has box (i, 2i, i + 1, 2i + 1), label i + 1, score 0.9 - 0.1 i and a mask with
    exactly pixel (i, i) set, so any mix-up between fields shows in the values."""
    i = torch.arange(n)
    masks = torch.zeros((n, h, w), dtype=torch.bool)
    masks[i, i, i] = True
    return {
        "boxes": torch.stack([i, 2 * i, i + 1, 2 * i + 1], dim=1).float(),
        "scores": 0.9 - 0.1 * i.float(),
        "labels": i + 1,
        "masks": masks,
    }


def _assert_instances(selected, order: list[int]) -> None:
    """`selected` holds instances `order` of `_instances()`, field by field."""
    full = _instances()
    for name in ("boxes", "scores", "labels", "masks"):
        if hasattr(selected, name):
            assert torch.equal(getattr(selected, name), full[name][order]), name
    assert len(selected) == len(order)
    assert selected.labels.tolist() == [i + 1 for i in order]
    assert [int(m.nonzero()[0, 0]) for m in selected.masks] == order  # mask i sits at pixel (i, i)


def _optional_tensors(cls) -> list[str]:
    """Per-instance fields beyond boxes/scores/labels/masks (e.g. the proposal index), if any."""
    return [f.name for f in dataclasses.fields(cls) if f.name not in _instances()]


def test_detections_select_bool_mask_and_indices():
    det = Detections(**_instances())
    _assert_instances(det.select(torch.tensor([True, False, True, True])), [0, 2, 3])
    _assert_instances(det.select(torch.tensor([3, 0, 2])), [3, 0, 2])  # index order, not sorted
    _assert_instances(det.select(torch.tensor([1, 1])), [1, 1])
    empty = det.select(torch.zeros(4, dtype=torch.bool))
    assert len(empty) == 0 and empty.masks.shape == (0, 6, 7) and empty.boxes.shape == (0, 4)
    # selecting does not modify the original
    _assert_instances(det, [0, 1, 2, 3])


def test_detections_select_moves_every_per_instance_field():
    extra = _optional_tensors(Detections)
    fields = _instances()
    values = {name: torch.arange(4) * 10 + k for k, name in enumerate(extra)}
    det = Detections(**fields, **values)
    picked = det.select(torch.tensor([2, 0]))
    _assert_instances(picked, [2, 0])
    for name, value in values.items():
        assert torch.equal(getattr(picked, name), value[[2, 0]]), name
    # a field left unset stays unset
    if extra:
        bare = Detections(**fields).select(torch.tensor([1]))
        assert all(getattr(bare, name) is None for name in extra)


def test_targets_select_bool_mask_and_indices():
    fields = {k: v for k, v in _instances().items() if k != "scores"}
    targets = Targets(**fields)
    _assert_instances(targets.select(torch.tensor([False, True, False, True])), [1, 3])
    _assert_instances(targets.select(torch.tensor([2, 1, 0])), [2, 1, 0])
    uint8 = Targets(**{**fields, "masks": fields["masks"].to(torch.uint8)})
    picked = uint8.select(torch.tensor([3, 1]))
    assert picked.masks.dtype == torch.uint8 and picked.masks.sum((1, 2)).tolist() == [1, 1]
    assert picked.masks[0, 3, 3] == 1 and picked.masks[1, 1, 1] == 1
