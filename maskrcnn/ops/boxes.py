"""Box utilities on (x1, y1, x2, y2) tensors. Shapes: (B, 4) unless stated."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import box_iou as _box_iou


def box_area(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """(A, 4), (B, 4) -> (A, B) intersection over union."""
    return _box_iou(boxes_a, boxes_b)


def clip_boxes(boxes: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Clip boxes (..., 4) to an image of size (h, w)."""
    height, width = image_size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def nonempty_mask(boxes: Tensor, min_size: float, *, exclusive: bool = False) -> Tensor:
    """(..., 4) boxes -> (...) bool: width and height both >= min_size (> min_size when exclusive)."""
    widths = boxes[..., 2] - boxes[..., 0]
    heights = boxes[..., 3] - boxes[..., 1]
    if exclusive:
        return (widths > min_size) & (heights > min_size)
    return (widths >= min_size) & (heights >= min_size)


def nonempty_boxes(boxes: Tensor, min_size: float, *, exclusive: bool = False) -> Tensor:
    """Indices of boxes whose width and height are both >= min_size (> min_size when exclusive)."""
    return torch.where(nonempty_mask(boxes, min_size, exclusive=exclusive))[0]


def scale_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Map boxes from an image of size `from_size` (h, w) to one of size `to_size`."""
    ratio_h, ratio_w = size_ratios(from_size, to_size)
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=1)


def size_ratios(from_size: tuple[int, int], to_size: tuple[int, int]) -> tuple[float, float]:
    """(to_h / from_h, to_w / from_w) divided in float32 (torchvision's arithmetic, on float32
    tensors), as Python floats: no tensor is made from host data, which on a GPU would wait for it."""
    ratio_h = np.float32(to_size[0]) / np.float32(from_size[0])
    ratio_w = np.float32(to_size[1]) / np.float32(from_size[1])
    return float(ratio_h), float(ratio_w)


def masks_to_boxes(masks: Tensor) -> Tensor:
    """(G, H, W) masks (bool, or any dtype: nonzero is set) -> (G, 4) float32 tight xyxy boxes.

    x1/y1 are the first set column/row and x2/y2 the last set column/row + 1, so the box width
    x2 - x1 counts the mask's columns. An empty mask gives the box (0, 0, 0, 0).
    """
    g, h, w = masks.shape
    if masks.numel() == 0:
        return torch.zeros((g, 4), dtype=torch.float32, device=masks.device)
    if masks.device.type == "cpu":
        # NumPy's reductions are fast and do not depend on torch's intra-op thread pool (data
        # loader workers run this on every sample).
        m = masks.detach()
        arr = (m.view(torch.uint8) if m.dtype == torch.bool else m).numpy()
        rows, cols = arr.any(axis=2), arr.any(axis=1)  # (G, H), (G, W)
        first = [cols.argmax(axis=1), rows.argmax(axis=1)]
        last = [w - cols[:, ::-1].argmax(axis=1), h - rows[:, ::-1].argmax(axis=1)]
        boxes = np.stack(first + last, axis=1).astype(np.float32)
        boxes[~rows.any(axis=1)] = 0.0
        return torch.from_numpy(boxes)
    return _masks_to_boxes_torch(masks)


def _masks_to_boxes_torch(masks: Tensor) -> Tensor:
    """`masks_to_boxes` in torch operations (accelerators); non-empty (G, H, W) masks."""
    h, w = masks.shape[-2:]
    nonzero = masks if masks.dtype == torch.bool else masks != 0
    rows, cols = nonzero.any(dim=2), nonzero.any(dim=1)
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ar_h, h).min(dim=1).values
    y2 = torch.where(rows, ar_h, -1).max(dim=1).values + 1
    x1 = torch.where(cols, ar_w, w).min(dim=1).values
    x2 = torch.where(cols, ar_w, -1).max(dim=1).values + 1
    boxes = torch.stack((x1, y1, x2, y2), dim=1).float()
    boxes[~rows.any(dim=1)] = 0.0
    return boxes
