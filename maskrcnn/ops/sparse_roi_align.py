"""RoIAlign as one sparse matrix product, over all FPN levels at once (a fast CPU path).

RoIAlign's output is linear in the features: every output cell (r, ph, pw) is the mean of s×s
bilinear samples, each a weighted sum of 4 feature pixels. So with the levels' features flattened to
one (M, C) matrix X (M = sum over levels of N·H_l·W_l pixels, channels last), the pooled output is
Y = S X with S a sparse (R·P·P, M) matrix of bilinear weights, and the gradient is dX = Sᵀ dY.

Bilinear weights are separable, w(y, x) = a(y)·b(x), so each row of S has (2s)² entries: the
products of 2s row weights and 2s column weights. The sample positions, the clamping at the border
and the "outside → 0" rule follow torchvision's CPU/CUDA kernels term by term, so the result equals
`torchvision.ops.roi_align` up to float summation order (about 1e-6 relative).

Why: torchvision's CPU kernels run one RoI after another on one core, and the backward scatters
one sample at a time; sparse-dense products (MKL) use every core, and the per-level Python loop
and index copies of the multi-level pooler disappear.

Shapes: P output size, s sampling ratio, R RoIs, C channels.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta", category=UserWarning)


def _axis_weights(
    start: Tensor, bin_size: Tensor, size: Tensor, *, output_size: int, sampling_ratio: int
) -> tuple[Tensor, Tensor]:
    """Sample positions along one axis -> (R, P, 2s) pixel indices and weights (already / s).

    start, bin_size, size: (R,) roi start, bin size and feature-map size along this axis.
    """
    dtype, device = start.dtype, start.device
    p = torch.arange(output_size, dtype=dtype, device=device)
    i = torch.arange(sampling_ratio, dtype=dtype, device=device) + 0.5
    bin_size = bin_size[:, None, None]
    # torchvision: y = roi_start + ph * bin + (iy + .5) * bin / grid, evaluated in that order
    y = (start[:, None, None] + p[None, :, None] * bin_size) + (i[None, None, :] * bin_size) / sampling_ratio
    size = size[:, None, None].to(dtype)
    inside = (y >= -1.0) & (y <= size)
    y = y.clamp(min=0.0)
    low = y.floor()
    at_edge = low >= size - 1
    low = torch.where(at_edge, size - 1, low)
    y = torch.where(at_edge, low, y)
    high = torch.where(at_edge, low, low + 1)
    frac = y - low
    scale = inside.to(dtype) / sampling_ratio
    index = torch.cat((low, high), dim=2).long()  # (R, P, 2s)
    weight = torch.cat(((1.0 - frac) * scale, frac * scale), dim=2)
    return index, weight


def _device_table(values: list, dtype: torch.dtype, device) -> Tensor:
    """(L,) tensor of a few host numbers made by fills on the device: torch.tensor(values, device=)
    would copy host memory there, which on a GPU waits for the work queued before it."""
    return torch.stack([torch.full((), v, dtype=dtype, device=device) for v in values])


def sampling_matrix(
    rois: Tensor,
    *,
    level: Tensor,
    level_shapes: list[tuple[int, int]],
    level_scales: list[float],
    num_images: int,
    output_size: int,
    sampling_ratio: int,
    aligned: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The CSR pieces (crow, col, val) of S (whose M columns are all the levels' pixels).

    rois: (R, 5) rows (batch_index, x1, y1, x2, y2); level: (R,) index into level_shapes.
    Columns enumerate level 0's N·H·W pixels (image, row, column), then level 1's, and so on.
    """
    device, dtype = rois.device, rois.dtype
    heights = _device_table([h for h, _ in level_shapes], torch.int64, device)
    widths = _device_table([w for _, w in level_shapes], torch.int64, device)
    pixels = heights * widths * num_images
    offsets = torch.cumsum(pixels, 0) - pixels
    scales = _device_table(level_scales, dtype, device)

    h, w, scale = heights[level], widths[level], scales[level]
    shift = 0.5 if aligned else 0.0
    x1, y1 = rois[:, 1] * scale - shift, rois[:, 2] * scale - shift
    roi_w, roi_h = rois[:, 3] * scale - shift - x1, rois[:, 4] * scale - shift - y1
    if not aligned:  # torchvision's legacy mode forces RoIs to be at least 1×1
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    P, s = output_size, sampling_ratio
    iy, wy = _axis_weights(y1, roi_h / P, h, output_size=P, sampling_ratio=s)
    ix, wx = _axis_weights(x1, roi_w / P, w, output_size=P, sampling_ratio=s)

    base = offsets[level] + rois[:, 0].long() * h * w  # (R,) first column of this RoI's image/level
    k = 2 * s
    # (R, P, 1, k, 1) and (R, 1, P, 1, k) -> (R, P, P, k, k): row (r, ph, pw), entry (a, b)
    col = (base[:, None, None, None, None] + iy[:, :, None, :, None] * w[:, None, None, None, None]) + ix[
        :, None, :, None, :
    ]
    val = wy[:, :, None, :, None] * wx[:, None, :, None, :]
    rows = len(rois) * P * P
    crow = torch.arange(0, rows * k * k + 1, k * k, device=device)
    return crow, col.reshape(-1), val.reshape(-1)


class _SparseProduct(torch.autograd.Function):
    """Y = S X for a CSR matrix S given by (crow, col, val); gradient only for X."""

    @staticmethod
    def forward(ctx, values: Tensor, crow: Tensor, col: Tensor, val: Tensor, entries_per_row: int) -> Tensor:
        rows = len(crow) - 1
        matrix = torch.sparse_csr_tensor(crow, col, val, (rows, values.shape[0]), check_invariants=False)
        ctx.save_for_backward(col, val)
        ctx.shape = (rows, values.shape[0], entries_per_row)
        return matrix @ values

    @staticmethod
    def backward(ctx, grad: Tensor):
        col, val = ctx.saved_tensors
        rows, num_pixels, per_row = ctx.shape
        # Sᵀ in CSR: entries sorted by column (a counting sort through argsort)
        order = torch.argsort(col)
        counts = torch.bincount(col, minlength=num_pixels)
        crow_t = torch.zeros(num_pixels + 1, dtype=torch.long, device=col.device)
        torch.cumsum(counts, 0, out=crow_t[1:])
        row_of = torch.div(order, per_row, rounding_mode="floor")
        transposed = torch.sparse_csr_tensor(
            crow_t, row_of, val[order], (num_pixels, rows), check_invariants=False
        )
        return transposed @ grad.contiguous(), None, None, None, None


def multilevel_roi_align(
    features: list[Tensor],
    rois: Tensor,
    level: Tensor,
    *,
    scales: list[float],
    output_size: int,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    """RoIAlign of each RoI on its own level: features [(N, C, H_l, W_l)], rois (R, 5), level (R,)
    -> (R, C, P, P) (in channels-last memory)."""
    if sampling_ratio <= 0:
        raise ValueError("the sparse RoIAlign needs a fixed sampling_ratio > 0")
    num_images, channels = features[0].shape[:2]
    # (N, C, H, W) -> (N*H*W, C) per level, then all levels stacked; free when already channels-last
    values = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, channels) for f in features], dim=0)
    crow, col, val = sampling_matrix(
        rois.to(values.dtype),
        level=level,
        level_shapes=[tuple(f.shape[-2:]) for f in features],
        level_scales=scales,
        num_images=num_images,
        output_size=output_size,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
    )
    pooled = _SparseProduct.apply(values, crow, col, val, (2 * sampling_ratio) ** 2)
    # (R*P*P, C) -> (R, P, P, C) -> (R, C, P, P)
    return pooled.reshape(len(rois), output_size, output_size, channels).permute(0, 3, 1, 2)
