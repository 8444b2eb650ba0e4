"""Box utilities: clipping, filtering, tight boxes of masks, rescaling."""

from __future__ import annotations

import torch

from maskrcnn.ops.boxes import box_area, box_iou, clip_boxes, masks_to_boxes, nonempty_boxes, scale_boxes


def test_clip_boxes_to_image():
    # image (h=10, w=20): x in [0, 20], y in [0, 10]
    boxes = torch.tensor([[-5.0, -3.0, 25.0, 12.0], [2.0, 3.0, 4.0, 5.0], [30.0, 15.0, 40.0, 20.0]])
    out = clip_boxes(boxes, (10, 20))
    expected = torch.tensor([[0.0, 0.0, 20.0, 10.0], [2.0, 3.0, 4.0, 5.0], [20.0, 10.0, 20.0, 10.0]])
    assert torch.equal(out, expected)
    assert torch.equal(boxes[0], torch.tensor([-5.0, -3.0, 25.0, 12.0]))  # input unchanged


def test_clip_boxes_keeps_leading_dimensions():
    # (N, C, 4) per-class boxes, as decoded by the box head: every box is clipped the same way
    boxes = torch.tensor([[[-1.0, -1.0, 50.0, 50.0], [1.0, 2.0, 3.0, 4.0]]]).expand(3, 2, 4)
    out = clip_boxes(boxes, (30, 40))
    assert out.shape == (3, 2, 4)
    assert torch.equal(out[:, 0], torch.tensor([0.0, 0.0, 40.0, 30.0]).expand(3, 4))
    assert torch.equal(out[:, 1], torch.tensor([1.0, 2.0, 3.0, 4.0]).expand(3, 4))


def test_nonempty_boxes():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 1.0, 1.0],  # 1 x 1: kept at min_size 1 (>=)
            [0.0, 0.0, 0.5, 5.0],  # width 0.5: dropped
            [0.0, 0.0, 5.0, 0.99],  # height 0.99: dropped
            [2.0, 2.0, 2.0, 9.0],  # zero width: dropped
            [3.0, 3.0, 10.0, 10.0],  # kept
        ]
    )
    assert nonempty_boxes(boxes, 1.0).tolist() == [0, 4]
    assert nonempty_boxes(boxes, 0.0).tolist() == [0, 1, 2, 3, 4]
    assert nonempty_boxes(boxes, 1e-3).tolist() == [0, 1, 2, 4]


def test_masks_to_boxes_is_one_past_last_pixel():
    masks = torch.zeros((3, 6, 8), dtype=torch.uint8)
    masks[0, 2:5, 1:4] = 1  # rows 2..4, columns 1..3 -> (x1, y1, x2, y2) = (1, 2, 4, 5)
    masks[1, 0, 7] = 1  # one pixel at row 0, column 7 -> (7, 0, 8, 1)
    masks[1, 5, 0] = 1  # and one at row 5, column 0 -> union (0, 0, 8, 6)
    # masks[2] stays empty -> all zeros
    out = masks_to_boxes(masks)
    expected = torch.tensor([[1.0, 2.0, 4.0, 5.0], [0.0, 0.0, 8.0, 6.0], [0.0, 0.0, 0.0, 0.0]])
    assert out.dtype == torch.float32
    assert torch.equal(out, expected)
    assert torch.equal(masks_to_boxes(masks.bool()), expected)
    assert masks_to_boxes(torch.zeros((0, 6, 8))).shape == (0, 4)


def test_scale_boxes():
    # from (h=100, w=200) to (h=50, w=400): y * 0.5, x * 2
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 200.0, 100.0]])
    out = scale_boxes(boxes, (100, 200), (50, 400))
    assert torch.equal(out, torch.tensor([[20.0, 10.0, 60.0, 20.0], [0.0, 0.0, 400.0, 50.0]]))
    # identity and inverse
    assert torch.equal(scale_boxes(boxes, (100, 200), (100, 200)), boxes)
    torch.testing.assert_close(scale_boxes(out, (50, 400), (100, 200)), boxes)


def test_box_area_and_iou():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [20.0, 20.0, 30.0, 30.0], [0.0, 0.0, 10.0, 10.0]])
    assert box_area(b).tolist() == [100.0, 100.0, 100.0]
    # overlap with the first: 5 x 10 = 50, union 150 -> 1/3; disjoint -> 0; identical -> 1
    torch.testing.assert_close(box_iou(a, b), torch.tensor([[1.0 / 3, 0.0, 1.0]]))
