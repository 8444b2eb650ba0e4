"""Box utilities on (x1, y1, x2, y2) tensors. Shapes: (B, 4) unless stated."""

from __future__ import annotations

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


def nonempty_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of boxes whose width and height are both >= min_size."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return torch.where((widths >= min_size) & (heights >= min_size))[0]


def scale_boxes(boxes: Tensor, from_size: tuple[int, int], to_size: tuple[int, int]) -> Tensor:
    """Map boxes from an image of size `from_size` (h, w) to one of size `to_size`."""
    ratio_h = torch.tensor(to_size[0], dtype=torch.float32, device=boxes.device) / torch.tensor(
        from_size[0], dtype=torch.float32, device=boxes.device
    )
    ratio_w = torch.tensor(to_size[1], dtype=torch.float32, device=boxes.device) / torch.tensor(
        from_size[1], dtype=torch.float32, device=boxes.device
    )
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=1)


def masks_to_boxes(masks: Tensor) -> Tensor:
    """(G, H, W) binary masks -> (G, 4) tight boxes; x2/y2 are one past the last pixel."""
    if masks.numel() == 0:
        return torch.zeros((masks.shape[0], 4), dtype=torch.float32, device=masks.device)
    masks = masks.bool()
    rows = masks.any(dim=2)  # (G, H)
    cols = masks.any(dim=1)  # (G, W)
    h, w = masks.shape[-2:]
    ar_h = torch.arange(h, device=masks.device)
    ar_w = torch.arange(w, device=masks.device)
    y1 = torch.where(rows, ar_h, h).min(dim=1).values
    y2 = torch.where(rows, ar_h, -1).max(dim=1).values + 1
    x1 = torch.where(cols, ar_w, w).min(dim=1).values
    x2 = torch.where(cols, ar_w, -1).max(dim=1).values + 1
    boxes = torch.stack((x1, y1, x2, y2), dim=1).float()
    empty = ~rows.any(dim=1)
    boxes[empty] = 0
    return boxes
