"""Mask pasting: the M×M mask probabilities of the detections into the image at their boxes.

Every mask is resampled into its box at image resolution in one batched operation (separable
bilinear interpolation as matrix products), chunked to bound memory. The result equals pasting one
mask at a time with F.interpolate (torchvision's paste_masks_in_image), including its one-pixel
zero border and integer box rounding; or, with `mode="detectron2"`, sampling the mask bilinearly
at every pixel centre relative to the exact (float) box, zero outside the mask, thresholded with
>= (detectron2's grid_sample-based paste_masks_in_image).

`paste_mask_crops` gives the same masks as `MaskCrops`: each mask only inside its box (the
pixels where its resampling weights are not zero), so memory follows the boxes, not D × H × W.

Shapes: D detections, M the mask side, (H, W) the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..structures import MaskCrops


def _expand_boxes(boxes: Tensor, scale: float) -> Tensor:
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5
    x_c = (boxes[:, 2] + boxes[:, 0]) * 0.5
    y_c = (boxes[:, 3] + boxes[:, 1]) * 0.5
    w_half = w_half * scale
    h_half = h_half * scale
    return torch.stack((x_c - w_half, y_c - h_half, x_c + w_half, y_c + h_half), dim=1)


def _interpolation_matrix(start: Tensor, length: Tensor, in_size: int, out_size: int) -> Tensor:
    """(D,) integer box starts and lengths -> (D, out_size, in_size) bilinear weights that resample
    an `in_size` signal onto pixels start..start+length-1 (align_corners=False); zero elsewhere."""
    pixel = torch.arange(out_size, device=start.device)
    offset = pixel[None, :] - start[:, None]  # (D, out) position inside the box
    inside = (offset >= 0) & (offset < length[:, None])
    scale = in_size / length.to(torch.float32)  # (D,)
    src = ((offset.to(torch.float32) + 0.5) * scale[:, None] - 0.5).clamp(min=0)
    i0 = src.floor().to(torch.int64).clamp(max=in_size - 1)
    i1 = (i0 + 1).clamp(max=in_size - 1)
    w1 = src - i0.to(torch.float32)
    w0 = 1 - w1
    weights = torch.zeros((*offset.shape, in_size), device=start.device)
    weights.scatter_add_(2, i0[..., None], w0[..., None])
    weights.scatter_add_(2, i1[..., None], w1[..., None])
    return weights * inside[..., None]


def _sampling_matrix(
    start: Tensor, end: Tensor, in_size: int, out_size: int, first: Tensor | None = None
) -> Tensor:
    """(D,) float box edges -> (D, out_size, in_size) bilinear weights that sample an `in_size`
    signal spread over [start, end) at the pixel centres 0.5 .. out_size - 0.5 (grid_sample with
    align_corners=False and zero padding: taps outside the signal weigh nothing); with `first`
    ((D,) int64), at the centres of pixels first .. first + out_size - 1 instead."""
    if first is None:
        centre = (torch.arange(out_size, device=start.device, dtype=torch.float32) + 0.5)[None, :]
    else:
        centre = (torch.arange(out_size, device=start.device)[None, :] + first[:, None]).float() + 0.5
    # grid_sample's normalised coordinate, then its unnormalisation ((g + 1) * size - 1) / 2
    grid = (centre - start[:, None]) / (end - start)[:, None] * 2 - 1
    src = ((grid + 1) * in_size - 1) / 2
    floor = src.floor()
    w1 = src - floor
    weights = torch.zeros((*src.shape, in_size + 2), device=start.device)
    # taps outside 0..in_size-1 land on the two extra columns (-1 and in_size), which are dropped
    i0 = floor.clamp(-1, in_size).to(torch.int64) + 1
    i1 = (floor + 1).clamp(-1, in_size).to(torch.int64) + 1
    weights.scatter_add_(2, i0[..., None], (1 - w1)[..., None])
    weights.scatter_add_(2, i1[..., None], w1[..., None])
    return weights[..., 1:-1]


PASTE_MODES = ("torchvision", "detectron2")


def paste_masks(
    mask_probs: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    *,
    threshold: float = 0.5,
    padding: int = 1,
    max_chunk_bytes: int = 1 << 28,
    mode: str = "torchvision",
) -> Tensor:
    """(D, M, M) probabilities and (D, 4) boxes in image pixels -> (D, H, W) boolean masks.

    torchvision: the mask gets a `padding`-pixel zero border and its box is enlarged to match (so
    the mask's edge fades out instead of being cut), box corners are truncated to integers, and the
    mask is resized to (y2 - y1 + 1, x2 - x1 + 1) pixels placed at (y1, x1), clipped to the image;
    pixels > threshold are set. detectron2: see the module docstring; pixels >= threshold are set.
    """
    if mode not in PASTE_MODES:
        raise ValueError(f"unknown mask paste mode {mode!r}; choose one of {PASTE_MODES}")
    height, width = image_size
    num = mask_probs.shape[0]
    if num == 0:
        return torch.zeros((0, height, width), dtype=torch.bool, device=mask_probs.device)
    if mode == "detectron2":
        return _paste_exact(mask_probs, boxes.float(), height, width, threshold, max_chunk_bytes)
    m = mask_probs.shape[-1]
    padded = F.pad(mask_probs.float(), (padding,) * 4)  # (D, M+2p, M+2p)
    expanded = _expand_boxes(boxes.float(), float(m + 2 * padding) / m).to(torch.int64)
    x0, y0, x1, y1 = expanded.unbind(1)
    w = (x1 - x0 + 1).clamp(min=1)
    h = (y1 - y0 + 1).clamp(min=1)
    size = m + 2 * padding

    def matrices(s: int, e: int) -> tuple[Tensor, Tensor]:  # (d, H, S), (d, W, S)
        return (
            _interpolation_matrix(y0[s:e], h[s:e], size, height),
            _interpolation_matrix(x0[s:e], w[s:e], size, width),
        )

    return _separable_paste(padded, matrices, height, width, max_chunk_bytes, lambda p: p > threshold)


def _paste_exact(
    mask_probs: Tensor, boxes: Tensor, height: int, width: int, threshold: float, max_chunk_bytes: int
) -> Tensor:
    """paste_masks(mode="detectron2"): separable bilinear sampling inside the exact boxes."""
    size = mask_probs.shape[-1]
    probs = mask_probs.float()
    x0, y0, x1, y1 = boxes.unbind(1)

    def matrices(s: int, e: int) -> tuple[Tensor, Tensor]:  # (d, H, M), (d, W, M)
        rows = _sampling_matrix(y0[s:e], y1[s:e], size, height)
        return rows, _sampling_matrix(x0[s:e], x1[s:e], size, width)

    return _separable_paste(probs, matrices, height, width, max_chunk_bytes, lambda p: p >= threshold)


def _separable_paste(probs: Tensor, matrices, height: int, width: int, max_chunk_bytes: int, keep) -> Tensor:
    """(D, S, S) masks -> (D, H, W) bool: `keep(rows @ mask @ cols^T)`, with `matrices(s, e)` giving the
    row (d, H, S) and column (d, W, S) resampling matrices of detections s..e, in chunks of at most
    `max_chunk_bytes` of output."""
    num = probs.shape[0]
    out = torch.empty((num, height, width), dtype=torch.bool, device=probs.device)
    chunk = max(1, int(max_chunk_bytes // max(1, height * width * 4)))
    for s in range(0, num, chunk):
        e = min(num, s + chunk)
        rows, cols = matrices(s, e)
        # (d, H, S) @ (d, S, S) @ (d, S, W) -> (d, H, W)
        out[s:e] = keep(torch.bmm(torch.bmm(rows, probs[s:e]), cols.transpose(1, 2)))
    return out


MIN_PADDED_SIDE = 8  # crops are resampled at least 8 × 8 (BLAS-sized products: same sums as the planes)


def paste_mask_crops(
    mask_probs: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    *,
    threshold: float = 0.5,
    padding: int = 1,
    max_chunk_bytes: int = 1 << 28,
    mode: str = "torchvision",
) -> MaskCrops:
    """`paste_masks` kept as crops: (D, M, M) probabilities and (D, 4) boxes in image pixels ->
    `MaskCrops` whose `full()` equals `paste_masks(...)` bit for bit (same weights, same products).

    Each crop is the window of the image where the mask's resampling weights can be non-zero (its
    integer box, clipped to the image; detectron2: the float box and one mask cell around it), so
    outside it the pasted value is 0 and the pixel is off (`threshold` >= 0; detectron2's >= with
    threshold <= 0 sets every pixel, so there the window is the image). Crops are resampled in
    batches of similar size (sorted by area, zero-padded to the largest of the batch), each batch
    and band of rows holding at most `max_chunk_bytes` of float output.
    """
    if mode not in PASTE_MODES:
        raise ValueError(f"unknown mask paste mode {mode!r}; choose one of {PASTE_MODES}")
    height, width = image_size
    device = mask_probs.device
    if mask_probs.shape[0] == 0:
        return MaskCrops.empty((height, width), device)
    if mode == "torchvision":
        m = mask_probs.shape[-1]
        probs = F.pad(mask_probs.float(), (padding,) * 4)
        size = m + 2 * padding
        expanded = _expand_boxes(boxes.float(), float(size) / m).to(torch.int64)
        x0, y0 = expanded[:, 0], expanded[:, 1]
        w = (expanded[:, 2] - x0 + 1).clamp(min=1)
        h = (expanded[:, 3] - y0 + 1).clamp(min=1)
        left, right, top, bottom = (
            x0.clamp(0, width),
            (x0 + w).clamp(0, width),
            y0.clamp(0, height),
            (y0 + h).clamp(0, height),
        )

        def rows(i: Tensor, first: Tensor, out: int) -> Tensor:
            return _interpolation_matrix(y0[i] - first, h[i], size, out)

        def cols(i: Tensor, first: Tensor, out: int) -> Tensor:
            return _interpolation_matrix(x0[i] - first, w[i], size, out)

        def keep(p: Tensor) -> Tensor:
            return p > threshold
    else:
        size = mask_probs.shape[-1]
        probs = mask_probs.float()
        b = boxes.float()
        left, right = _sampled_window(b[:, 0], b[:, 2], size, width, everywhere=threshold <= 0)
        top, bottom = _sampled_window(b[:, 1], b[:, 3], size, height, everywhere=threshold <= 0)

        def rows(i: Tensor, first: Tensor, out: int) -> Tensor:
            return _sampling_matrix(b[i, 1], b[i, 3], size, out, first)

        def cols(i: Tensor, first: Tensor, out: int) -> Tensor:
            return _sampling_matrix(b[i, 0], b[i, 2], size, out, first)

        def keep(p: Tensor) -> Tensor:
            return p >= threshold

    crop_h, crop_w = bottom - top, right - left
    order = torch.argsort(crop_h * crop_w, stable=True)
    # the crops' sizes, known on the host in one download (one wait on a GPU): (3, D) -> 3 lists
    heights, widths, index = torch.stack((crop_h[order], crop_w[order], order)).tolist()
    crops: list[Tensor] = [probs.new_zeros((0, 0), dtype=torch.bool)] * len(index)
    for s, e in _chunks(heights, widths, size, max_chunk_bytes):
        i = order[s:e]
        out_h, out_w = max(MIN_PADDED_SIDE, max(heights[s:e])), max(MIN_PADDED_SIDE, max(widths[s:e]))
        col_weights = cols(i, left[i], out_w).transpose(1, 2)  # (d, S, w)
        row_weights = rows(i, top[i], out_h)  # (d, h, S)
        band = max(1, max_chunk_bytes // max(1, (e - s) * out_w * 4))
        pasted = torch.empty((e - s, out_h, out_w), dtype=torch.bool, device=device)
        for r in range(0, out_h, band):
            pasted[:, r : r + band] = keep(
                torch.bmm(torch.bmm(row_weights[:, r : r + band], probs[i]), col_weights)
            )
        for j in range(e - s):
            crops[index[s + j]] = pasted[j, : heights[s + j], : widths[s + j]].clone()
    return MaskCrops(crops, torch.stack((left, top), dim=1), (height, width))


def _sampled_window(
    start: Tensor, end: Tensor, size: int, limit: int, *, everywhere: bool
) -> tuple[Tensor, Tensor]:
    """detectron2 paste: the pixels [first, last) whose centres sample a box's mask with a non-zero
    weight (the box and one mask cell beyond each edge, rounded out), clipped to 0..limit."""
    if everywhere:
        return torch.zeros_like(start, dtype=torch.int64), torch.full_like(start, limit, dtype=torch.int64)
    cell = ((end - start).abs() / size).nan_to_num(0.0)
    first = torch.floor(torch.minimum(start, end) - cell).nan_to_num(0.0) - 1
    last = torch.ceil(torch.maximum(start, end) + cell).nan_to_num(float(limit)) + 1
    first = first.clamp(0, limit).to(torch.int64)
    return first, last.clamp(0, limit).to(torch.int64).maximum(first)


def _chunks(heights: list[int], widths: list[int], size: int, max_bytes: int) -> list[tuple[int, int]]:
    """Consecutive runs s..e of the (area-sorted) crops whose padded float output, (e - s) × max
    height × max width × 4 bytes, and resampling matrices fit in `max_bytes` (at least one crop)."""
    out, s, top_h, top_w = [], 0, 0, 0
    for k, (h, w) in enumerate(zip(heights, widths)):
        nh, nw = max(top_h, h, MIN_PADDED_SIDE), max(top_w, w, MIN_PADDED_SIDE)
        if k > s and (k + 1 - s) * (nh * nw * 4 + (nh + nw) * size * 8) > max_bytes:
            out.append((s, k))
            s, nh, nw = k, max(h, MIN_PADDED_SIDE), max(w, MIN_PADDED_SIDE)
        top_h, top_w = nh, nw
    out.append((s, len(heights)))
    return out
