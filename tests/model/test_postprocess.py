"""Inference post-processing: batched mask pasting against the one-at-a-time reference, and box
detection on hand-made head outputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from maskrcnn.model.box_branch import detect_boxes
from maskrcnn.model.mask_branch import class_masks
from maskrcnn.model.mask_paste import _expand_boxes, paste_masks
from maskrcnn.ops.box_coder import BoxCoder
from maskrcnn.ops.boxes import nonempty_boxes


def paste_masks_reference(
    mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int], padding: int = 1
) -> Tensor:
    """One mask at a time with F.interpolate (torchvision's way); returns probabilities."""
    height, width = image_size
    m = mask_probs.shape[-1]
    padded = F.pad(mask_probs.float(), (padding,) * 4)
    expanded = _expand_boxes(boxes.float(), float(m + 2 * padding) / m).to(torch.int64).tolist()
    out = torch.zeros((len(boxes), height, width))
    for i, (bx0, by0, bx1, by1) in enumerate(expanded):
        w, h = max(bx1 - bx0 + 1, 1), max(by1 - by0 + 1, 1)
        resized = F.interpolate(padded[i][None, None], size=(h, w), mode="bilinear", align_corners=False)[
            0, 0
        ]
        xa, xb = max(bx0, 0), min(bx1 + 1, width)
        ya, yb = max(by0, 0), min(by1 + 1, height)
        if xa < xb and ya < yb:
            out[i, ya:yb, xa:xb] = resized[ya - by0 : yb - by0, xa - bx0 : xb - bx0]
    return out


def random_case(seed: int, num: int, image_size: tuple[int, int]):
    """Random 28x28 probability maps and boxes of many kinds: inside, partly or entirely outside
    the image, tiny (under a pixel), thin, and larger than the image."""
    gen = torch.Generator().manual_seed(seed)
    h, w = image_size
    probs = torch.rand(num, 28, 28, generator=gen)
    x1 = torch.rand(num, generator=gen) * (w * 1.4) - 0.2 * w
    y1 = torch.rand(num, generator=gen) * (h * 1.4) - 0.2 * h
    bw = torch.rand(num, generator=gen) * w * 0.8 + 0.5
    bh = torch.rand(num, generator=gen) * h * 0.8 + 0.5
    boxes = torch.stack((x1, y1, x1 + bw, y1 + bh), dim=1)
    special = torch.tensor(
        [
            [10.2, 12.7, 10.6, 13.1],  # tiny, under a pixel
            [3.0, 4.0, 3.0, 4.0],  # empty (zero size)
            [-30.0, -20.0, 15.5, 9.5],  # sticking out at the top left
            [w - 10.5, h - 7.25, w + 40.0, h + 30.0],  # sticking out at the bottom right
            [-50.0, -50.0, w + 50.0, h + 50.0],  # larger than the image
            [w + 5.0, 2.0, w + 30.0, 20.0],  # entirely outside
            [0.0, 0.0, 1.0, float(h)],  # one pixel wide, full height
        ]
    )
    boxes = torch.cat((special, boxes))
    probs = torch.cat((torch.rand(len(special), 28, 28, generator=gen), probs))
    return probs, boxes


@pytest.mark.parametrize("seed, image_size", [(0, (97, 131)), (1, (64, 48)), (2, (120, 120))])
def test_paste_masks_equals_reference(seed, image_size):
    probs, boxes = random_case(seed, 40, image_size)
    expected = paste_masks_reference(probs, boxes, image_size) > 0.5
    out = paste_masks(probs, boxes, image_size)
    assert out.dtype == torch.bool and out.shape == (len(boxes), *image_size)
    # the separable matrix form sums the same 4 bilinear terms in another order: a pixel whose
    # probability is within float rounding of the threshold may flip; allow a handful at most
    reference_probs = paste_masks_reference(probs, boxes, image_size)
    differ = out != expected
    assert differ.sum() <= 3
    assert ((reference_probs[differ] - 0.5).abs() < 1e-5).all()
    # non-vacuous: most masks cover pixels (the rest lie outside the image or are under a pixel)
    assert expected.any(dim=(1, 2)).sum() >= 25 and expected.sum() > 5000
    assert not out[5].any()  # the box entirely outside the image pastes nothing


def test_paste_masks_chunking_gives_the_same_result():
    image_size = (50, 70)
    probs, boxes = random_case(3, 25, image_size)
    whole = paste_masks(probs, boxes, image_size)
    # one mask is 50 * 70 * 4 bytes = 14000 bytes: 30000 bytes -> chunks of 2; 1 byte -> chunks of 1
    for max_chunk_bytes in (30000, 1):
        assert torch.equal(paste_masks(probs, boxes, image_size, max_chunk_bytes=max_chunk_bytes), whole)


def test_paste_masks_threshold_and_full_box():
    # a constant mask of 0.8 pasted into box (10, 20, 38, 48): the box grows by (28 + 2) / 28 around its
    # centre (24, 34) -> half side 14 * 30/28 = 15 -> (9, 19, 39, 49), truncated to integers; the
    # padded 30x30 map (zero border) is resized to 31x31 pixels at (x=9, y=19). Interior pixels of the
    # resized map are 0.8; pixels whose bilinear sample mixes in the zero border fall below 0.8.
    probs = torch.full((1, 28, 28), 0.8)
    boxes = torch.tensor([[10.0, 20.0, 38.0, 48.0]])
    out = paste_masks(probs, boxes, (60, 60))[0]
    ref = paste_masks_reference(probs, boxes, (60, 60))[0]
    assert torch.equal(out, ref > 0.5)
    # everything outside the enlarged box is False; the original box's interior is True
    assert not out[:19].any() and not out[50:].any() and not out[:, :9].any() and not out[:, 40:].any()
    assert out[21:47, 11:37].all()
    # a higher threshold than the value everywhere gives nothing
    assert not paste_masks(probs, boxes, (60, 60), threshold=0.85).any()


def test_paste_masks_zero_detections():
    out = paste_masks(torch.zeros((0, 28, 28)), torch.zeros((0, 4)), (37, 53))
    assert out.shape == (0, 37, 53) and out.dtype == torch.bool


def test_class_masks_picks_the_label_channel():
    logits = torch.zeros(2, 3, 2, 2)
    logits[0, 1] = 2.0  # detection 0 has label 2 -> channel 1
    logits[1, 2] = -1.0  # detection 1 has label 3 -> channel 2
    out = class_masks(logits, torch.tensor([2, 3]), mask_loss="sigmoid")
    torch.testing.assert_close(out[0], torch.full((2, 2), 1 / (1 + math.exp(-2.0))))
    torch.testing.assert_close(out[1], torch.full((2, 2), 1 / (1 + math.exp(1.0))))
    # class-agnostic (one channel) uses channel 0 for every label
    out = class_masks(logits[:, :1], torch.tensor([2, 3]), mask_loss="sigmoid")
    torch.testing.assert_close(out, torch.full((2, 2, 2), 0.5))


def test_detect_boxes_hand_made_logits():
    # One image of size (h=100, w=100), K=3 classes, three proposals:
    #   A (10, 10, 50, 50): logits (0, 0, 10, 0) -> class 2 with p = e^10 / (e^10 + 3) = 0.999864;
    #      class 2 deltas (1, 0, 0, 0) with weights (10, 10, 5, 5): dx = 0.1 -> centre x 30 + 0.1 * 40
    #      = 34 -> box (14, 10, 54, 50); the other classes' deltas are garbage and must not be used.
    #      Classes 1 and 3 have p = 1 / (e^10 + 3) = 4.5e-5 < 0.05: not candidates.
    #   B (12, 10, 52, 50): logits (0, 0, 5, 0) -> class 2 with p = e^5 / (e^5 + 3) = 0.98016, deltas 0;
    #      IoU with A's decoded box (14..54 vs 12..52, same y): 38 * 40 / (42 * 40) = 0.905 > 0.5 ->
    #      suppressed by A in the per-class NMS.
    #   C (60, 60, 90, 90): logits (5, 0, 0, 0) -> background; fg p = 1 / (e^5 + 3) = 0.0066 < 0.05.
    logits = torch.tensor([[0.0, 0.0, 10.0, 0.0], [0.0, 0.0, 5.0, 0.0], [5.0, 0.0, 0.0, 0.0]])
    deltas = torch.zeros(3, 4 * 4)
    deltas[0, 8:12] = torch.tensor([1.0, 0.0, 0.0, 0.0])  # class 2 of A
    deltas[0, 4:8] = torch.tensor([50.0, -50.0, 9.0, 9.0])  # class 1 of A (unused)
    deltas[0, 12:16] = torch.tensor([-50.0, 50.0, -9.0, 9.0])  # class 3 of A (unused)
    proposals = [torch.tensor([[10.0, 10.0, 50.0, 50.0], [12.0, 10.0, 52.0, 50.0], [60.0, 60.0, 90.0, 90.0]])]

    def detect(nms_thresh: float):
        (result,) = detect_boxes(
            logits,
            deltas,
            proposals,
            [(100, 100)],
            box_coder=BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)),
            score_thresh=0.05,
            nms_thresh=nms_thresh,
            detections_per_image=100,
        )
        return result

    strict = detect(0.5)
    boxes, scores, labels = strict.boxes, strict.scores, strict.labels
    assert labels.tolist() == [2]
    assert strict.proposal_index.tolist() == [0]  # refined from proposal A
    torch.testing.assert_close(boxes, torch.tensor([[14.0, 10.0, 54.0, 50.0]]))
    torch.testing.assert_close(scores, torch.tensor([math.exp(10) / (math.exp(10) + 3)]))
    # a looser NMS keeps B too, after A (sorted by score)
    loose = detect(0.95)
    boxes, scores, labels = loose.boxes, loose.scores, loose.labels
    assert labels.tolist() == [2, 2]
    assert loose.proposal_index.tolist() == [0, 1]  # A, then B
    torch.testing.assert_close(scores[1], torch.tensor(math.exp(5) / (math.exp(5) + 3)))
    torch.testing.assert_close(boxes[1], proposals[0][1])


def test_detect_boxes_per_image_split_clip_and_limit():
    # Two images; image 0 gets RoI 0, image 1 gets RoIs 1 and 2.
    #   RoI 0 (80, 80, 120, 110) in image 0 of size (h=90, w=100): class 1 -> clipped to (80, 80, 100, 90)
    #   RoIs 1 and 2 in image 1 (size 200 x 200): class 1 (p=0.88) and class 3 (p=0.95), far apart;
    #   detections_per_image=1 keeps only the higher-scoring one (class 3).
    e = math.exp
    logits = torch.tensor(
        [
            [0.0, 6.0, 0.0, 0.0],
            [0.0, math.log(0.88 * 3 / 0.12), 0.0, 0.0],
            [0.0, 0.0, 0.0, math.log(0.95 * 3 / 0.05)],
        ]
    )
    deltas = torch.zeros(3, 16)
    proposals = [
        torch.tensor([[80.0, 80.0, 120.0, 110.0]]),
        torch.tensor([[0.0, 0.0, 20.0, 20.0], [100.0, 100.0, 150.0, 150.0]]),
    ]
    out = detect_boxes(
        logits,
        deltas,
        proposals,
        [(90, 100), (200, 200)],
        box_coder=BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)),
        score_thresh=0.05,
        nms_thresh=0.5,
        detections_per_image=1,
    )
    (b0, s0, l0), (b1, s1, l1) = ((d.boxes, d.scores, d.labels) for d in out)
    assert out[0].proposal_index.tolist() == [0] and out[1].proposal_index.tolist() == [1]  # per image
    assert l0.tolist() == [1] and torch.equal(b0, torch.tensor([[80.0, 80.0, 100.0, 90.0]]))
    torch.testing.assert_close(s0, torch.tensor([e(6) / (e(6) + 3)]))
    assert l1.tolist() == [3] and torch.equal(b1, torch.tensor([[100.0, 100.0, 150.0, 150.0]]))
    torch.testing.assert_close(s1, torch.tensor([0.95]))


@pytest.mark.parametrize("exclusive", [False, True])
def test_rpn_candidates_filter_size_and_score_in_order_per_image(exclusive):
    # the size and score filters run as one mask over the batch: per image, the same boxes in the
    # same order as clipping, then dropping small boxes, then low scores, one after the other
    from maskrcnn.config import apply_overrides, get_preset
    from maskrcnn.model import build_model
    from tests.helpers import TINY

    torch.manual_seed(0)
    rpn = build_model(apply_overrides(get_preset("default"), TINY), class_names=["a", "b"]).eval().rpn
    sizes, counts = [(90, 120), (64, 50)], (300, 80, 20)
    objectness = [torch.randn(2, a) for a in counts]
    deltas = [torch.randn(2, a, 4) * 0.5 for a in counts]
    anchors = [torch.cat((xy := torch.rand(a, 2) * 130 - 10, xy + torch.rand(a, 2) * 40), 1) for a in counts]
    rpn.min_size, rpn.score_thresh, rpn.min_size_exclusive = 0.0, 0.0, False
    unfiltered = rpn.candidates(objectness, deltas, anchors, sizes)
    rpn.min_size, rpn.score_thresh, rpn.min_size_exclusive = 6.0, 0.5, exclusive
    for got, every in zip(rpn.candidates(objectness, deltas, anchors, sizes), unfiltered):
        assert len(every.boxes) == sum(min(rpn.pre_nms_topk[1], a) for a in counts)
        keep = nonempty_boxes(every.boxes, 6.0, exclusive=exclusive)
        assert 0 < len(keep) < len(every.boxes)
        boxes, scores, levels = every.boxes[keep], every.scores[keep], every.levels[keep]
        keep = torch.where(scores >= 0.5)[0]
        assert 0 < len(keep) < len(boxes)
        assert torch.equal(got.boxes, boxes[keep]) and torch.equal(got.scores, scores[keep])
        assert torch.equal(got.levels, levels[keep])
