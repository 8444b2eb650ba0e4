"""RoIAlign and RoIPool against values derived by hand on an arange feature map.

The feature map is x[0, 0, i, j] = 5 * i + j on a 5x5 grid. torchvision's kernels (which ours wrap)
treat pixel (i, j) as sitting at continuous coordinate (y=i, x=j), so bilinear interpolation of this
map is the linear function v(x, y) = 5 * y + x wherever the sample point lies inside [0, 4]^2.
Per sample point (y, x) the CPU kernel does (roi_align_kernel.cpp, pre_calc_for_bilinear_interpolate):
  - y < -1 or y > H (or the same for x): the sample contributes 0;
  - y <= 0 -> y = 0;  y >= H - 1 -> y = H - 1  (the same for x);
and a bin's value is the sum of its grid_h * grid_w samples divided by grid_h * grid_w.
Sample points: y = y1 + ph * bin_h + (iy + 0.5) * bin_h / grid_h, with bin_h = roi_h / S and
(aligned=False) roi_h = max(y2 - y1, 1), or (aligned=True) roi coordinates shifted by -0.5 and no
minimum size.

Every RoIAlign test runs against both implementations: torchvision's kernels and our sparse-product
RoIAlign (maskrcnn/ops/sparse_roi_align.py), which must reproduce the same rules.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from maskrcnn.ops.roi_align import boxes_to_rois, roi_align, roi_pool
from maskrcnn.ops.sparse_roi_align import multilevel_roi_align

IMPLS = pytest.mark.parametrize("impl", ["torchvision", "sparse"])


def arange_map() -> torch.Tensor:
    return torch.arange(25, dtype=torch.float32).view(1, 1, 5, 5)


def rois(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def align(features, r, *, sampling_ratio, aligned, impl, scale=1.0, size=2):
    if impl == "sparse":
        level = torch.zeros(len(r), dtype=torch.int64)
        return multilevel_roi_align(
            [features],
            r,
            level,
            scales=[scale],
            output_size=size,
            sampling_ratio=sampling_ratio,
            aligned=aligned,
        )
    return roi_align(features, r, size, spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=aligned)


@IMPLS
def test_roi_align_not_aligned_inside_map(impl):
    # RoI (0, 0, 4, 4), S=2, grid 2x2: bin side 2, samples at offsets 0.5 and 1.5 inside each bin.
    # Bin (0, 0): y, x in {0.5, 1.5}; mean of a linear function = its value at the mean point (1, 1):
    #   5*1 + 1 = 6.  Bin (0, 1): mean point (x=3, y=1) -> 8.  Bin (1, 0): (x=1, y=3) -> 16.
    #   Bin (1, 1): (x=3, y=3) -> 18.
    out = align(arange_map(), rois([0, 0, 0, 4, 4]), sampling_ratio=2, aligned=False, impl=impl)
    expected = torch.tensor([[[[6.0, 8.0], [16.0, 18.0]]]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


@IMPLS
def test_roi_align_aligned_shifts_half_pixel(impl):
    # aligned=True: RoI (0, 0, 4, 4) becomes (-0.5, -0.5, 3.5, 3.5); bin side 2, samples at
    # -0.5 + 0.5 = 0 and -0.5 + 1.5 = 1 in the first bin, 2 and 3 in the second.
    # Bin (0, 0): mean point (0.5, 0.5) -> 5*0.5 + 0.5 = 3.  Bin (0, 1): (x=2.5, y=0.5) -> 5.
    # Bin (1, 0): (x=0.5, y=2.5) -> 13.  Bin (1, 1): (x=2.5, y=2.5) -> 15.
    out = align(arange_map(), rois([0, 0, 0, 4, 4]), sampling_ratio=2, aligned=True, impl=impl)
    expected = torch.tensor([[[[3.0, 5.0], [13.0, 15.0]]]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


@IMPLS
def test_roi_align_small_roi_minimum_size_only_when_not_aligned(impl):
    # RoI (1, 1, 1.5, 1.5), S=2, one sample per bin (sampling_ratio=1).
    # aligned=False: roi size max(0.5, 1) = 1, bin 0.5, samples at 1 + 0.25 = 1.25 and 1 + 0.75 = 1.75:
    #   (y=1.25, x=1.25) -> 6.25 + 1.25 = 7.5;  (1.25, 1.75) -> 8.0;
    #   (1.75, 1.25) -> 8.75 + 1.25 = 10.0;  (1.75, 1.75) -> 10.5
    out = align(arange_map(), rois([0, 1, 1, 1.5, 1.5]), sampling_ratio=1, aligned=False, impl=impl)
    torch.testing.assert_close(out, torch.tensor([[[[7.5, 8.0], [10.0, 10.5]]]]), rtol=0, atol=1e-5)
    # aligned=True: RoI (0.5, 0.5, 1.0, 1.0), size 0.5 (no minimum), bin 0.25, samples at 0.625, 0.875:
    #   (0.625, 0.625) -> 3.125 + 0.625 = 3.75;  (0.625, 0.875) -> 4.0;
    #   (0.875, 0.625) -> 4.375 + 0.625 = 5.0;  (0.875, 0.875) -> 5.25
    out = align(arange_map(), rois([0, 1, 1, 1.5, 1.5]), sampling_ratio=1, aligned=True, impl=impl)
    torch.testing.assert_close(out, torch.tensor([[[[3.75, 4.0], [5.0, 5.25]]]]), rtol=0, atol=1e-5)


@IMPLS
def test_roi_align_border_clamping_and_out_of_map_samples(impl):
    # RoI (2, 2, 6, 6) on the 5x5 map, aligned=False, grid 2x2: coordinates 2.5, 3.5 | 4.5, 5.5.
    # 4.5 lies in [H-1, H] = [4, 5] -> clamped to 4; 5.5 > H = 5 -> the sample contributes 0.
    # Bin (0, 0): y, x in {2.5, 3.5}: value at the mean point (3, 3) = 18.
    # Bin (0, 1): y in {2.5, 3.5}, x in {4 (clamped), out}: (5*2.5 + 4) + (5*3.5 + 4) = 16.5 + 21.5 = 38,
    #   / 4 samples = 9.5.
    # Bin (1, 0): y in {4 (clamped), out}, x in {2.5, 3.5}: (20 + 2.5) + (20 + 3.5) = 46, / 4 = 11.5.
    # Bin (1, 1): only (y=4, x=4) = 24 counts, / 4 = 6.
    out = align(arange_map(), rois([0, 2, 2, 6, 6]), sampling_ratio=2, aligned=False, impl=impl)
    expected = torch.tensor([[[[18.0, 9.5], [11.5, 6.0]]]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


@IMPLS
def test_roi_align_batch_index_and_spatial_scale(impl):
    # Two images: the second is the arange map + 100. RoIs given in image pixels at stride 2
    # (spatial_scale 0.5): (0, 0, 8, 8) maps to (0, 0, 4, 4) on the feature map, so the first RoI
    # gives the values of test_roi_align_not_aligned_inside_map and the second (batch index 1) the
    # same + 100.
    features = torch.cat([arange_map(), arange_map() + 100])
    r = rois([0, 0, 0, 8, 8], [1, 0, 0, 8, 8])
    out = align(features, r, sampling_ratio=2, aligned=False, scale=0.5, impl=impl)
    base = torch.tensor([[6.0, 8.0], [16.0, 18.0]])
    torch.testing.assert_close(out, torch.stack([base, base + 100])[:, None], rtol=0, atol=1e-4)


@IMPLS
def test_roi_align_output_size_3(impl):
    # RoI (0, 0, 3, 3), S=3, grid 1: one sample at each bin centre y, x in {0.5, 1.5, 2.5}:
    # v = 5*y + x -> rows 3.0, 4.0, 5.0 | 8.0, 9.0, 10.0 | 13.0, 14.0, 15.0.
    out = align(arange_map(), rois([0, 0, 0, 3, 3]), sampling_ratio=1, aligned=False, impl=impl, size=3)
    expected = torch.tensor([[3.0, 4.0, 5.0], [8.0, 9.0, 10.0], [13.0, 14.0, 15.0]])
    torch.testing.assert_close(out[0, 0], expected, rtol=0, atol=1e-5)


def test_roi_pool_hand_computed():
    # RoIPool quantizes: start = round(x1), end = round(x2), size = end - start + 1 (>= 1),
    # bin = size / S; bin p covers [start + floor(p * bin), start + ceil((p + 1) * bin)) and takes the
    # max, which for 5*y + x is at the bin's bottom-right pixel.
    # RoI (0, 0, 4, 4): size 5, bin 2.5: rows/cols [0, 3) and [2, 5):
    #   (0, 0): pixel (2, 2) -> 12;  (0, 1): (y=2, x=4) -> 14;  (1, 0): (4, 2) -> 22;  (1, 1): (4, 4) -> 24.
    out = roi_pool(arange_map(), rois([0, 0, 0, 4, 4]), 2, spatial_scale=1.0)
    torch.testing.assert_close(out, torch.tensor([[[[12.0, 14.0], [22.0, 24.0]]]]), rtol=0, atol=0)
    # RoI (1.4, 0.6, 2.6, 3.6) rounds to x 1..3, y 1..4: width 3 (bin 1.5), height 4 (bin 2).
    #   columns: [1 + 0, 1 + ceil(1.5)) = [1, 3) and [1 + floor(1.5), 1 + 3) = [2, 4)
    #   rows:    [1, 3) and [3, 5)
    #   (0, 0): max at (y=2, x=2) -> 12;  (0, 1): (2, 3) -> 13;  (1, 0): (4, 2) -> 22;  (1, 1): (4, 3) -> 23.
    out = roi_pool(arange_map(), rois([0, 1.4, 0.6, 2.6, 3.6]), 2, spatial_scale=1.0)
    torch.testing.assert_close(out, torch.tensor([[[[12.0, 13.0], [22.0, 23.0]]]]), rtol=0, atol=0)


def test_boxes_to_rois_prepends_image_index():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    b = torch.tensor([[5.0, 6.0, 7.0, 8.0], [9.0, 10.0, 11.0, 12.0]])
    out = boxes_to_rois([a, torch.zeros((0, 4)), b])
    expected = torch.tensor(
        [[0.0, 1.0, 2.0, 3.0, 4.0], [2.0, 5.0, 6.0, 7.0, 8.0], [2.0, 9.0, 10.0, 11.0, 12.0]]
    )
    assert torch.equal(out, expected)
    assert boxes_to_rois([]).shape == (0, 5)


def random_fpn_rois(seed: int, *, num_images: int = 2, count: int = 200):
    """FPN-like features for a 640x480 image and boxes of every size, some crossing the border."""
    g = torch.Generator().manual_seed(seed)
    strides = (4, 8, 16, 32)
    features = [torch.randn(num_images, 8, 480 // s, 640 // s, generator=g) for s in strides]
    xy = torch.rand(count, 2, generator=g) * torch.tensor([660.0, 500.0]) - 20
    wh = torch.rand(count, 2, generator=g) ** 2 * 400 + 0.3
    boxes = torch.cat([xy, xy + wh], dim=1)
    image = torch.randint(0, num_images, (count,), generator=g)
    return features, strides, [boxes[image == i] for i in range(num_images)]


@pytest.mark.parametrize("aligned,output_size,sampling_ratio", [(True, 7, 2), (False, 14, 2), (True, 14, 3)])
def test_sparse_pooler_equals_torchvision_forward_and_backward(aligned, output_size, sampling_ratio):
    from maskrcnn.model.roi_pooler import MultiScaleRoIPooler

    features, strides, boxes = random_fpn_rois(0)
    outputs, grads = [], []
    for impl in ("torchvision", "sparse"):
        leaves = [f.clone().requires_grad_(True) for f in features]
        pooler = MultiScaleRoIPooler(
            output_size=output_size,
            strides=strides,
            sampling_ratio=sampling_ratio,
            aligned=aligned,
            impl=impl,
        )
        out = pooler(leaves, boxes)
        weights = torch.linspace(-1, 1, out.numel()).view_as(out)
        (out * weights).sum().backward()
        outputs.append(out)
        grads.append([f.grad for f in leaves])
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    for sparse_grad, tv_grad in zip(grads[1], grads[0]):
        torch.testing.assert_close(sparse_grad, tv_grad, rtol=1e-5, atol=1e-5)
    assert outputs[0].abs().sum() > 0 and sum(bool(g.abs().sum() > 0) for g in grads[0]) >= 3  # levels used


def test_sparse_pooler_auto_choice_and_empty_input():
    from maskrcnn.model.roi_pooler import MultiScaleRoIPooler

    features, strides, _ = random_fpn_rois(1)
    auto = MultiScaleRoIPooler(output_size=7, strides=strides, sampling_ratio=2, aligned=True, impl="auto")
    adaptive = MultiScaleRoIPooler(
        output_size=7, strides=strides, sampling_ratio=0, aligned=True, impl="auto"
    )
    assert auto.uses_sparse(features[0]) and not auto.uses_sparse(features[0].to(torch.float64))
    assert not adaptive.uses_sparse(features[0])  # adaptive sampling varies per RoI: torchvision's kernel
    leaves = [f.requires_grad_(True) for f in features]
    out = auto(leaves, [torch.zeros((0, 4)), torch.zeros((0, 4))])
    assert out.shape == (0, 8, 7, 7)
    out.sum().backward()
    assert all(f.grad is not None and f.grad.abs().sum() == 0 for f in leaves)


def test_pooler_sorted_split_gives_each_box_its_level_and_the_traced_form():
    # eager: the boxes sorted by level and split by counts (one host wait); traced: a where per level.
    # Both must give each box exactly RoIAlign on its own level, in the boxes' order
    from maskrcnn.model.roi_pooler import MultiScaleRoIPooler

    features, strides, boxes = random_fpn_rois(2, num_images=1)
    boxes = [torch.cat((boxes[0], torch.tensor([[10.0, 5.0, 630.0, 470.0]])))]  # one box on P5
    pooler = MultiScaleRoIPooler(output_size=7, strides=strides, sampling_ratio=2, aligned=True)
    out = pooler(features, boxes)
    rois = boxes_to_rois(boxes)
    levels = pooler.levels(rois[:, 1:])
    assert set(levels.tolist()) == {0, 1, 2, 3}
    for i, level in enumerate(levels.tolist()):
        scale = 1 / strides[level]
        alone = roi_align(
            features[level], rois[i : i + 1], 7, spatial_scale=scale, sampling_ratio=2, aligned=True
        )
        assert torch.equal(out[i : i + 1], alone), i
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(lambda b, *f: pooler(list(f), [b]), (boxes[0], *features), check_trace=False)
    assert torch.equal(traced(boxes[0], *features), out)
    few = boxes[0][levels == 0][:3]  # another box count through the traced graph: one level only
    assert torch.equal(traced(few, *features), pooler(features, [few]))
