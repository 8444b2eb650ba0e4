"""Box regression parameterization (Fast R-CNN, Girshick 2015, eq. 6-9).

    t_x = w_x (x - x_a) / w_a     t_w = w_w log(w / w_a)
    t_y = w_y (y - y_a) / h_a     t_h = w_h log(h / h_a)

(x, y) are box centres, (w_x, w_y, w_w, w_h) the per-coordinate weights. Decoding clamps t_w and
t_h at log(1000 / 16) so that exp() cannot overflow. The arithmetic follows torchvision's order
operation by operation so that converted models give the same numbers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DEFAULT_SCALE_CLAMP = math.log(1000.0 / 16)


class BoxCoder:
    def __init__(
        self, *, weights: tuple[float, float, float, float], scale_clamp: float = DEFAULT_SCALE_CLAMP
    ):
        self.weights = weights
        self.scale_clamp = scale_clamp

    def encode(self, gt_boxes: Tensor, reference_boxes: Tensor) -> Tensor:
        """(B, 4) ground-truth boxes, (B, 4) reference boxes -> (B, 4) deltas."""
        wx, wy, ww, wh = self.weights
        ref_w = reference_boxes[:, 2:3] - reference_boxes[:, 0:1]
        ref_h = reference_boxes[:, 3:4] - reference_boxes[:, 1:2]
        ref_x = reference_boxes[:, 0:1] + 0.5 * ref_w
        ref_y = reference_boxes[:, 1:2] + 0.5 * ref_h
        gt_w = gt_boxes[:, 2:3] - gt_boxes[:, 0:1]
        gt_h = gt_boxes[:, 3:4] - gt_boxes[:, 1:2]
        gt_x = gt_boxes[:, 0:1] + 0.5 * gt_w
        gt_y = gt_boxes[:, 1:2] + 0.5 * gt_h
        dx = wx * (gt_x - ref_x) / ref_w
        dy = wy * (gt_y - ref_y) / ref_h
        dw = ww * torch.log(gt_w / ref_w)
        dh = wh * torch.log(gt_h / ref_h)
        return torch.cat((dx, dy, dw, dh), dim=1)

    def decode(self, deltas: Tensor, reference_boxes: Tensor) -> Tensor:
        """(B, 4*C) deltas for C classes, (B, 4) reference boxes -> (B, C, 4) boxes."""
        reference_boxes = reference_boxes.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        widths = reference_boxes[:, 2] - reference_boxes[:, 0]
        heights = reference_boxes[:, 3] - reference_boxes[:, 1]
        ctr_x = reference_boxes[:, 0] + 0.5 * widths
        ctr_y = reference_boxes[:, 1] + 0.5 * heights

        dx = deltas[:, 0::4] / wx
        dy = deltas[:, 1::4] / wy
        dw = (deltas[:, 2::4] / ww).clamp(max=self.scale_clamp)
        dh = (deltas[:, 3::4] / wh).clamp(max=self.scale_clamp)

        pred_ctr_x = dx * widths[:, None] + ctr_x[:, None]
        pred_ctr_y = dy * heights[:, None] + ctr_y[:, None]
        pred_w = torch.exp(dw) * widths[:, None]
        pred_h = torch.exp(dh) * heights[:, None]
        # a Python 0.5, not a tensor made from host data (a copy that waits, on a GPU); halving is exact
        half_w = 0.5 * pred_w
        half_h = 0.5 * pred_h
        boxes = torch.stack(
            (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), dim=2
        )
        return boxes  # (B, C, 4)
