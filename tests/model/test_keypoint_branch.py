"""The keypoint branch's targets, loss and heatmap decoding on tiny hand-computed tensors (S = 56)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from maskrcnn.model.keypoint_branch import decode_keypoints, keypoint_loss, keypoint_targets

S = 56


def test_a_heatmap_peak_decodes_to_its_pixel_centre():
    # box 56 x 56 px: one heatmap cell per pixel; the peak at row 5, column 7 -> pixel (7, 5) of the
    # box, whose centre is (x1 + 7.5, y1 + 5.5); its score is the peak's logit
    heatmaps = torch.zeros(2, 3, S, S)
    heatmaps[0, 0, 5, 7] = 10.0
    heatmaps[0, 1, 50, 2] = 3.0
    # box 28 x 28 px: every pixel covers 2 x 2 cells; the peak at cell (row 10, column 20) lies in
    # pixel (10, 5) of the box (cell 2k sits at the centre of pixel k when resampled by half)
    heatmaps[1, 2, 10, 20] = 6.0
    boxes = torch.tensor([[10.0, 20.0, 66.0, 76.0], [100.0, 200.0, 128.0, 228.0]])
    keypoints = decode_keypoints(heatmaps, boxes)
    assert keypoints.shape == (2, 3, 3)
    assert keypoints[0, 0].tolist() == [17.5, 25.5, 10.0]
    assert keypoints[0, 1].tolist() == [12.5, 70.5, 3.0]
    x, y, score = keypoints[1, 2].tolist()
    assert (x, y) == (110.5, 205.5)
    # the resampled peak: the cubic kernel's weight at distance 1/2 (a = -0.75) times the peak
    a, t = -0.75, 0.5
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    assert math.isclose(score, 6.0 * near * near, rel_tol=1e-6)


def test_decoding_no_detections_gives_an_empty_result():
    assert decode_keypoints(torch.zeros(0, 17, S, S), torch.zeros(0, 4)).shape == (0, 17, 3)


def test_decoding_in_chunks_gives_the_whole_result():
    # the chunks are sized on the host from the boxes' output sizes (read once); any memory bound,
    # down to one detection a chunk, must give the same keypoints bit for bit, for both scores
    g = torch.Generator().manual_seed(0)
    heatmaps = torch.randn(9, 4, S, S, generator=g)
    xy = torch.rand(9, 2, generator=g) * 300
    wh = torch.tensor(
        [
            [3.0, 140.0],
            [90.5, 20.2],
            [0.4, 0.7],
            [200.0, 210.0],
            [55.0, 55.0],
            [13.3, 99.9],
            [150.0, 3.0],
            [77.7, 77.7],
            [12.0, 160.0],
        ]
    )
    boxes = torch.cat((xy, xy + wh), dim=1)
    for score in ("logit", "softmax"):
        whole = decode_keypoints(heatmaps, boxes, score=score)
        # 4 bytes x 4 joints x 210 x 200: a bound of 2 such maps, of about 3, of one byte
        for bound in (2 * 4 * 4 * 210 * 200, 4 * 4 * 160 * 210 * 3, 1):
            assert torch.equal(decode_keypoints(heatmaps, boxes, max_chunk_bytes=bound, score=score), whole)


def test_targets_of_border_invisible_and_outside_keypoints():
    rois = torch.tensor([[0.0, 0.0, 56.0, 56.0], [10.0, 10.0, 38.0, 38.0]])
    keypoints = torch.tensor(
        [
            # (x, y, v): inside; on the right/bottom edge; unlabelled (v = 0); left of the RoI
            [[3.2, 10.7, 2], [56.0, 56.0, 1], [20.0, 20.0, 0], [-1.0, 5.0, 2]],
            # RoI 28 px wide: 2 cells per pixel
            [[10.0, 10.0, 2], [24.0, 11.5, 1], [38.0, 20.0, 2], [39.0, 20.0, 2]],
        ]
    )
    cells, valid = keypoint_targets(keypoints, rois, S)
    assert valid.tolist() == [[True, True, False, False], [True, True, True, False]]
    assert cells[0, 0] == 10 * S + 3  # row floor(10.7), column floor(3.2)
    assert cells[0, 1] == 55 * S + 55  # on the edge: the last cell, not outside
    assert cells[1, 0] == 0
    assert cells[1, 1] == 3 * S + 28  # ((11.5 - 10) * 2, (24 - 10) * 2)
    assert cells[1, 2] == 20 * S + 55  # x on the right edge
    assert (cells[~valid] == 0).all()


def test_loss_counts_only_valid_keypoints():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, S, S, generator=gen, requires_grad=True)
    cells = torch.tensor([[10 * S + 3, 55 * S + 55, 0, 0], [0, 3 * S + 28, 0, 0]])
    valid = torch.tensor([[True, True, False, False], [False, True, False, False]])
    loss = keypoint_loss(logits, cells, valid)
    # by hand: the mean over the 3 valid pairs of -log softmax(heatmap)[target cell]
    flat = logits.detach().reshape(2, 4, S * S)
    pairs = [(0, 0), (0, 1), (1, 1)]
    expected = sum(-F.log_softmax(flat[r, j], dim=0)[cells[r, j]] for r, j in pairs) / 3
    assert math.isclose(loss.item(), expected.item(), rel_tol=1e-6)
    loss.backward()
    untouched = ~valid
    assert (logits.grad[untouched] == 0).all() and (logits.grad[valid] != 0).any()


def test_loss_without_valid_keypoints_is_zero_with_a_gradient_path():
    logits = torch.randn(3, 17, S, S, requires_grad=True)
    loss = keypoint_loss(logits, torch.zeros(3, 17, dtype=torch.long), torch.zeros(3, 17, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert logits.grad is not None and (logits.grad == 0).all()
