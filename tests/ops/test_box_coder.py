"""BoxCoder: Fast R-CNN box parameterization, hand-computed and round trips."""

from __future__ import annotations

import math

import pytest
import torch

from maskrcnn.ops.box_coder import DEFAULT_SCALE_CLAMP, BoxCoder


def random_boxes(gen: torch.Generator, n: int) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * 500
    # widths/heights in [8, 300): ratios stay below the decode clamp exp(log(1000/16)) = 62.5
    wh = torch.rand(n, 2, generator=gen) * 292 + 8
    return torch.cat((xy, xy + wh), dim=1)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_encode_decode_round_trip(seed, weights):
    gen = torch.Generator().manual_seed(seed)
    reference = random_boxes(gen, 200)
    gt = random_boxes(gen, 200)
    coder = BoxCoder(weights=weights)
    deltas = coder.encode(gt, reference)
    assert deltas.shape == (200, 4)
    decoded = coder.decode(deltas, reference)
    assert decoded.shape == (200, 1, 4)
    torch.testing.assert_close(decoded[:, 0], gt, rtol=0, atol=1e-3)


def test_encode_hand_computed():
    # reference (0, 0, 10, 20): w=10, h=20, centre (5, 10)
    # gt (1, 2, 21, 12):        w=20, h=10, centre (11, 7)
    # dx = (11 - 5) / 10 = 0.6, dy = (7 - 10) / 20 = -0.15, dw = log(20/10) = log 2, dh = log(10/20) = -log 2
    reference = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    gt = torch.tensor([[1.0, 2.0, 21.0, 12.0]])
    log2 = math.log(2.0)
    deltas = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)).encode(gt, reference)
    torch.testing.assert_close(deltas, torch.tensor([[0.6, -0.15, log2, -log2]]))
    # the RoI-head weights (10, 10, 5, 5) multiply each coordinate: 6.0, -1.5, 5 log 2, -5 log 2
    deltas = BoxCoder(weights=(10.0, 10.0, 5.0, 5.0)).encode(gt, reference)
    torch.testing.assert_close(deltas, torch.tensor([[6.0, -1.5, 5 * log2, -5 * log2]]))


def test_decode_per_class_layout():
    # deltas (B, 4*C): class c uses columns 4c..4c+3; the output is (B, C, 4).
    # reference (0, 0, 10, 20), weights 1: class 0 zero deltas -> the reference itself;
    # class 1: dx = 0.5 -> centre x 5 + 0.5*10 = 10, dh = log 2 -> height 40 around y 10 -> (5, -10, 15, 30)
    reference = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    deltas = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.0, math.log(2.0)]])
    out = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)).decode(deltas, reference)
    assert out.shape == (1, 2, 4)
    torch.testing.assert_close(out[0, 0], reference[0])
    torch.testing.assert_close(out[0, 1], torch.tensor([5.0, -10.0, 15.0, 30.0]))


def test_decode_clamps_scale():
    # dw = dh = 100 would overflow exp(); decode clamps them at log(1000 / 16), so a 16x16 reference
    # becomes exp(log(1000/16)) * 16 = 1000 wide and high around its centre (8, 8):
    # (8 - 500, 8 - 500, 8 + 500, 8 + 500) = (-492, -492, 508, 508).
    assert math.isclose(DEFAULT_SCALE_CLAMP, math.log(1000.0 / 16))
    reference = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    for weights in [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]:
        deltas = torch.tensor([[0.0, 0.0, 100.0 * weights[2], 100.0 * weights[3]]])
        out = BoxCoder(weights=weights).decode(deltas, reference)[0, 0]
        torch.testing.assert_close(out, torch.tensor([-492.0, -492.0, 508.0, 508.0]), rtol=0, atol=1e-3)
        assert torch.isfinite(out).all()
    # negative scales are not clamped: dw = -log 2 halves the width
    deltas = torch.tensor([[0.0, 0.0, -math.log(2.0), 0.0]])
    out = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)).decode(deltas, reference)[0, 0]
    torch.testing.assert_close(out, torch.tensor([4.0, 0.0, 12.0, 16.0]))
