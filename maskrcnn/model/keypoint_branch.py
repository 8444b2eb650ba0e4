"""The keypoint branch of the RoI heads (Mask R-CNN §5, human pose): for every RoI, J heatmaps of
S×S logits (S = 56), one per keypoint; its one-hot training targets, its loss and the decoding of
heatmaps into keypoints in image pixels.

Shapes: R+ positive RoIs, J keypoints, S heatmap side, D detections of an image.

    targets:   ground-truth keypoint (x, y) of a RoI's matched instance -> the heatmap cell
               floor((x - x1) * S / w) (a keypoint on the RoI's right/bottom edge -> cell S-1);
               valid when labelled (v > 0) and inside the RoI
    loss:      cross-entropy of the S² logits of each valid (RoI, keypoint) against its cell
    decoding:  each heatmap is resized (bicubic) to its box's size in pixels, ceil(w) × ceil(h);
               the arg-max cell c gives x = x1 + (c + 0.5) * w / ceil(w); its value is the score
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.keypoints import scale_keypoints
from ..structures import Detections, Targets
from .roi_pooler import MultiScaleRoIPooler
from .targets import PositiveRoIs

_CUBIC_A = -0.75  # the cubic convolution kernel of PyTorch's (and OpenCV's) bicubic resize


def keypoint_targets(keypoints: Tensor, rois: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """(R, J, 3) ground-truth keypoints of each RoI's instance and (R, 4) RoIs -> (R, J) index of
    the target cell in the S×S heatmap (y * S + x) and (R, J) bool: whether it counts."""
    x1, y1, x2, y2 = (rois[:, i, None] for i in range(4))
    x, y = keypoints[..., 0], keypoints[..., 1]
    col = ((x - x1) * (size / (x2 - x1))).floor().long()
    row = ((y - y1) * (size / (y2 - y1))).floor().long()
    col[x == x2] = size - 1  # on the right edge: the last cell, not outside
    row[y == y2] = size - 1
    inside = (col >= 0) & (row >= 0) & (col < size) & (row < size)
    valid = inside & (keypoints[..., 2] > 0)
    return (row * size + col) * valid, valid


def keypoint_loss(logits: Tensor, cells: Tensor, valid: Tensor) -> Tensor:
    """(R, J, S, S) heatmap logits, (R, J) target cells and validity -> mean cross-entropy over
    the valid (RoI, keypoint) pairs of the S² logits (zero, with a gradient path, when none)."""
    index = torch.where(valid.reshape(-1))[0]
    if index.numel() == 0:
        return logits.sum() * 0
    # (R, J, S, S) -> (R*J, S*S)
    flat = logits.reshape(-1, logits.shape[-2] * logits.shape[-1])
    return F.cross_entropy(flat[index], cells.reshape(-1)[index])


def _fma(a: Tensor, b, c) -> Tensor:
    """a * b + c rounded once to float32, as a fused multiply-add does (the product of two float32
    numbers is exact in float64)."""
    return (a.double() * b + c).float()


def _cubic_weights(out_sizes: Tensor, in_size: int, out_max: int) -> tuple[Tensor, Tensor]:
    """Bicubic resampling of an `in_size` signal onto `out_sizes[d]` pixels (align_corners=False,
    taps clamped at the border) -> (D, out_max, 4) tap indices and weights; positions past a row's
    own size get zero weights. The arithmetic follows torch's CPU bicubic kernel (float32 with
    fused multiply-adds), so that resized heatmaps agree with F.interpolate to a few ulps."""
    device = out_sizes.device
    out = torch.arange(out_max, device=device, dtype=torch.float32)
    scale = torch.full_like(out_sizes, in_size, dtype=torch.float32) / out_sizes.to(torch.float32)  # (D,)
    real = _fma(scale[:, None], (out[None, :] + 0.5).double(), -0.5)  # (D, out_max), not clamped
    index = real.floor().clamp(max=in_size - 1)
    t = (real - index).clamp(0.0, 1.0)
    a = _CUBIC_A

    def near(x: Tensor) -> Tensor:  # |x| <= 1: ((a + 2) x - (a + 3)) x x + 1
        return _fma(_fma(x, a + 2, -(a + 3)) * x, x.double(), 1.0)

    def far(x: Tensor) -> Tensor:  # 1 < |x| < 2: ((a x - 5a) x + 8a) x - 4a
        return _fma(_fma(_fma(x, a, -5 * a), x.double(), 8 * a), x.double(), -4 * a)

    weights = torch.stack((far(t + 1.0), near(t), near(1.0 - t), far((1.0 - t) + 1.0)), dim=-1)
    taps = index.long()[..., None] + torch.arange(-1, 3, device=device)
    inside = out[None, :] < out_sizes[:, None]
    return taps.clamp(0, in_size - 1), weights * inside[..., None]


def _resample_rows(maps: Tensor, taps: Tensor, weights: Tensor) -> Tensor:
    """(d, J, A, S) maps, (d, B, 4) taps/weights over the last axis -> (d, J, A, B)."""
    d, j, a, s = maps.shape
    out = None
    for k in range(4):
        index = taps[:, None, None, :, k].expand(d, j, a, taps.shape[1])
        term = maps.gather(3, index) * weights[:, None, None, :, k]
        out = term if out is None else out + term
    return out


KEYPOINT_SCORES = ("logit", "softmax")


def decode_keypoints(
    heatmaps: Tensor, boxes: Tensor, *, max_chunk_bytes: int = 1 << 28, score: str = "logit"
) -> Tensor:
    """(D, J, S, S) heatmap logits and (D, 4) boxes -> (D, J, 3) keypoints (x, y, score) in the
    boxes' pixels: every heatmap resized (bicubic) to ceil(w) × ceil(h) at once, chunked to bound
    memory, then the arg-max of each. score "logit": the resized map's peak; "softmax": the peak's
    exp over the sum of exp of the S×S logits (detectron2's keypoint score)."""
    if score not in KEYPOINT_SCORES:
        raise ValueError(f"unknown keypoint score {score!r}; choose one of {KEYPOINT_SCORES}")
    d, j, s = heatmaps.shape[0], heatmaps.shape[1], heatmaps.shape[-1]
    out = heatmaps.new_zeros((d, j, 3), dtype=torch.float32)
    if d == 0:
        return out
    widths = (boxes[:, 2] - boxes[:, 0]).clamp(min=1)
    heights = (boxes[:, 3] - boxes[:, 1]).clamp(min=1)
    out_w, out_h = widths.ceil(), heights.ceil()
    # every detection's output size read at once (one wait for the host), the chunking on ints
    sizes = [(int(h), int(w)) for h, w in torch.stack((out_h, out_w), dim=1).tolist()]
    start = 0
    while start < d:
        # as many detections as fit the memory bound at this chunk's largest size (at least one)
        (hm, wm), end = sizes[start], start + 1
        while end < d:
            grown_h, grown_w = max(hm, sizes[end][0]), max(wm, sizes[end][1])
            if (end + 1 - start) * j * grown_h * grown_w * 4 > max_chunk_bytes:
                break
            hm, wm, end = grown_h, grown_w, end + 1
        col_taps, col_w = _cubic_weights(out_w[start:end], s, wm)
        row_taps, row_w = _cubic_weights(out_h[start:end], s, hm)
        maps = heatmaps[start:end].float()
        # x first, then y: (d, J, S, S) -> (d, J, S, W) -> (d, J, W, S) -> (d, J, W, H) -> (d, J, H, W)
        resized = _resample_rows(maps, col_taps, col_w).transpose(2, 3)
        resized = _resample_rows(resized.contiguous(), row_taps, row_w).transpose(2, 3)
        rows = torch.arange(hm, device=maps.device)[:, None]
        cols = torch.arange(wm, device=maps.device)[None, :]
        inside = (rows < out_h[start:end, None, None]) & (cols < out_w[start:end, None, None])
        resized = resized.masked_fill(~inside[:, None], float("-inf"))
        best, pos = resized.flatten(2).max(dim=2)  # (d, J): first maximum in row-major order
        x_int, y_int = pos % wm, torch.div(pos, wm, rounding_mode="floor")
        x_scale = (widths[start:end] / out_w[start:end])[:, None]
        y_scale = (heights[start:end] / out_h[start:end])[:, None]
        out[start:end, :, 0] = (x_int.float() + 0.5) * x_scale + boxes[start:end, 0, None]
        out[start:end, :, 1] = (y_int.float() + 0.5) * y_scale + boxes[start:end, 1, None]
        if score == "softmax":  # exp(peak - peak) / sum(exp(logits - peak))
            best = 1.0 / (maps - best[..., None, None]).exp().sum(dim=(2, 3))
        out[start:end, :, 2] = best
        start = end
    return out


class KeypointBranch(nn.Module):
    """Pooler + keypoint head (its transposed conv is the predictor)."""

    name = "keypoint"

    def __init__(self, *, pooler: MultiScaleRoIPooler, head: nn.Module, score: str = "logit"):
        super().__init__()
        self.pooler = pooler
        self.head = head
        self.score = score  # logit | softmax: see decode_keypoints

    def forward(self, features: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """Per-image RoIs -> heatmap logits (R, J, S, S)."""
        return self.head(self.pooler(features, boxes))

    def loss(self, features: list[Tensor], rois: PositiveRoIs, targets: list[Targets]) -> dict[str, Tensor]:
        if any(t.keypoints is None for t in targets):
            raise ValueError(
                "the keypoint branch trains on ground-truth keypoints, but some targets have none"
            )
        logits = self(features, rois.boxes)
        size = logits.shape[-1]
        cells, valid = [], []
        for t, boxes, matched in zip(targets, rois.boxes, rois.matched_gt):
            c, v = keypoint_targets(t.keypoints[matched], boxes, size)
            cells.append(c)
            valid.append(v)
        return {"loss_keypoint": keypoint_loss(logits, torch.cat(cells), torch.cat(valid))}

    def predict(
        self, features: list[Tensor], detections: list[Detections], *, record=None
    ) -> list[Detections]:
        """Adds `keypoints` (D, J, 3): x, y (input frame) and score, to each image's detections;
        `record` (a `roi_heads.HeadsRecord`) gets the heatmaps."""
        boxes = [d.boxes for d in detections]
        if sum(len(b) for b in boxes):
            heatmaps = self(features, boxes)
        else:
            j = self.head.predictor.out_channels
            heatmaps = features[0].new_zeros((0, j, 1, 1))
        if record is not None:
            record.keypoint_heatmaps = heatmaps
        keypoints = decode_keypoints(heatmaps, torch.cat(boxes), score=self.score)
        return [
            dataclasses.replace(d, keypoints=k)
            for d, k in zip(detections, keypoints.split([len(b) for b in boxes]))
        ]

    def to_original(
        self, det: Detections, *, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> Detections:
        assert det.keypoints is not None, "predict() fills keypoints before to_original()"
        return det.replace(keypoints=scale_keypoints(det.keypoints, input_size, original_size))
