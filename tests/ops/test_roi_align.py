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
"""

from __future__ import annotations

import torch

from maskrcnn.ops.roi_align import boxes_to_rois, roi_align, roi_pool


def arange_map() -> torch.Tensor:
    return torch.arange(25, dtype=torch.float32).view(1, 1, 5, 5)


def rois(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def align(features, r, *, sampling_ratio, aligned, scale=1.0, size=2):
    return roi_align(features, r, size, spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=aligned)


def test_roi_align_not_aligned_inside_map():
    # RoI (0, 0, 4, 4), S=2, grid 2x2: bin side 2, samples at offsets 0.5 and 1.5 inside each bin.
    # Bin (0, 0): y, x in {0.5, 1.5}; mean of a linear function = its value at the mean point (1, 1):
    #   5*1 + 1 = 6.  Bin (0, 1): mean point (x=3, y=1) -> 8.  Bin (1, 0): (x=1, y=3) -> 16.
    #   Bin (1, 1): (x=3, y=3) -> 18.
    out = align(arange_map(), rois([0, 0, 0, 4, 4]), sampling_ratio=2, aligned=False)
    expected = torch.tensor([[[[6.0, 8.0], [16.0, 18.0]]]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_roi_align_aligned_shifts_half_pixel():
    # aligned=True: RoI (0, 0, 4, 4) becomes (-0.5, -0.5, 3.5, 3.5); bin side 2, samples at
    # -0.5 + 0.5 = 0 and -0.5 + 1.5 = 1 in the first bin, 2 and 3 in the second.
    # Bin (0, 0): mean point (0.5, 0.5) -> 5*0.5 + 0.5 = 3.  Bin (0, 1): (x=2.5, y=0.5) -> 5.
    # Bin (1, 0): (x=0.5, y=2.5) -> 13.  Bin (1, 1): (x=2.5, y=2.5) -> 15.
    out = align(arange_map(), rois([0, 0, 0, 4, 4]), sampling_ratio=2, aligned=True)
    expected = torch.tensor([[[[3.0, 5.0], [13.0, 15.0]]]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_roi_align_small_roi_minimum_size_only_when_not_aligned():
    # RoI (1, 1, 1.5, 1.5), S=2, one sample per bin (sampling_ratio=1).
    # aligned=False: roi size max(0.5, 1) = 1, bin 0.5, samples at 1 + 0.25 = 1.25 and 1 + 0.75 = 1.75:
    #   (y=1.25, x=1.25) -> 6.25 + 1.25 = 7.5;  (1.25, 1.75) -> 8.0;
    #   (1.75, 1.25) -> 8.75 + 1.25 = 10.0;  (1.75, 1.75) -> 10.5
    out = align(arange_map(), rois([0, 1, 1, 1.5, 1.5]), sampling_ratio=1, aligned=False)
    torch.testing.assert_close(out, torch.tensor([[[[7.5, 8.0], [10.0, 10.5]]]]), rtol=0, atol=1e-5)
    # aligned=True: RoI (0.5, 0.5, 1.0, 1.0), size 0.5 (no minimum), bin 0.25, samples at 0.625, 0.875:
    #   (0.625, 0.625) -> 3.125 + 0.625 = 3.75;  (0.625, 0.875) -> 4.0;
    #   (0.875, 0.625) -> 4.375 + 0.625 = 5.0;  (0.875, 0.875) -> 5.25
    out = align(arange_map(), rois([0, 1, 1, 1.5, 1.5]), sampling_ratio=1, aligned=True)
    torch.testing.assert_close(out, torch.tensor([[[[3.75, 4.0], [5.0, 5.25]]]]), rtol=0, atol=1e-5)


def test_roi_align_border_clamping_and_out_of_map_samples():
    # RoI (2, 2, 6, 6) on the 5x5 map, aligned=False, grid 2x2: coordinates 2.5, 3.5 | 4.5, 5.5.
    # 4.5 lies in [H-1, H] = [4, 5] -> clamped to 4; 5.5 > H = 5 -> the sample contributes 0.
    # Bin (0, 0): y, x in {2.5, 3.5}: value at the mean point (3, 3) = 18.
    # Bin (0, 1): y in {2.5, 3.5}, x in {4 (clamped), out}: (5*2.5 + 4) + (5*3.5 + 4) = 16.5 + 21.5 = 38,
    #   / 4 samples = 9.5.
    # Bin (1, 0): y in {4 (clamped), out}, x in {2.5, 3.5}: (20 + 2.5) + (20 + 3.5) = 46, / 4 = 11.5.
    # Bin (1, 1): only (y=4, x=4) = 24 counts, / 4 = 6.
    out = align(arange_map(), rois([0, 2, 2, 6, 6]), sampling_ratio=2, aligned=False)
    expected = torch.tensor([[[[18.0, 9.5], [11.5, 6.0]]]])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def test_roi_align_batch_index_and_spatial_scale():
    # Two images: the second is the arange map + 100. RoIs given in image pixels at stride 2
    # (spatial_scale 0.5): (0, 0, 8, 8) maps to (0, 0, 4, 4) on the feature map, so the first RoI
    # gives the values of test_roi_align_not_aligned_inside_map and the second (batch index 1) the
    # same + 100.
    features = torch.cat([arange_map(), arange_map() + 100])
    r = rois([0, 0, 0, 8, 8], [1, 0, 0, 8, 8])
    out = align(features, r, sampling_ratio=2, aligned=False, scale=0.5)
    base = torch.tensor([[6.0, 8.0], [16.0, 18.0]])
    torch.testing.assert_close(out, torch.stack([base, base + 100])[:, None], rtol=0, atol=1e-4)


def test_roi_align_output_size_3():
    # RoI (0, 0, 3, 3), S=3, grid 1: one sample at each bin centre y, x in {0.5, 1.5, 2.5}:
    # v = 5*y + x -> rows 3.0, 4.0, 5.0 | 8.0, 9.0, 10.0 | 13.0, 14.0, 15.0.
    out = align(arange_map(), rois([0, 0, 0, 3, 3]), sampling_ratio=1, aligned=False, size=3)
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
