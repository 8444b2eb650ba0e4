"""Trace-safe pieces that the model's stages share with the exported ONNX graph.

When the model is traced (`torch.onnx.export`, `maskrcnn.export.graph.InferenceGraph`) every size
that depends on the image (feature-map sizes, box counts, top-k counts) must be a tensor, or the
trace bakes in the example image's numbers. These helpers give Python ints in eager mode (so the
eager model runs exactly as before) and 0-dim int64 tensors while tracing, and pick torchvision's
NMS algorithm for grouped boxes (per group above 1000 boxes, else one NMS with coordinate offsets)
with a Python branch in eager mode and inside the graph when tracing.

Shapes: B boxes, (B, 4) xyxy.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..ops.boxes import clip_boxes as _clip_boxes
from ..ops.boxes import scale_boxes as _scale_boxes
from ..ops.nms import batched_nms, nms

# torchvision.ops.batched_nms on the CPU runs one NMS per group above this many boxes (4000 coordinates)
PER_GROUP_NMS_ABOVE = 1000


def tracing() -> bool:
    """True while torch.jit / torch.onnx traces the model."""
    return torch.jit.is_tracing()


def count(x: Tensor) -> Tensor | int:
    """The length of x's first dimension: an int, or a 0-dim int64 tensor while tracing."""
    return torch._shape_as_tensor(x)[0] if tracing() else int(x.shape[0])


def spatial_size(x: Tensor) -> tuple:
    """(h, w) of an (..., H, W) tensor: ints, or 0-dim int64 tensors while tracing."""
    if tracing():
        h, w = torch._shape_as_tensor(x)[-2:].unbind(0)
        return h, w
    return int(x.shape[-2]), int(x.shape[-1])


def capped(x: Tensor, cap: int, *, dim: int = 0) -> Tensor | int:
    """min(x.shape[dim], cap) for `topk`: an int, or a clamped 0-dim tensor while tracing."""
    if tracing():
        return torch.clamp(torch._shape_as_tensor(x)[dim], max=cap)
    return min(cap, int(x.shape[dim]))


def clip_boxes(boxes: Tensor, image_size: tuple) -> Tensor:
    """`ops.boxes.clip_boxes` for a (h, w) of ints, or of 0-dim tensors (traced sizes)."""
    height, width = image_size
    if not isinstance(height, Tensor) and not isinstance(width, Tensor):
        return _clip_boxes(boxes, (height, width))
    x = boxes[..., 0::2].clamp(min=0).minimum(torch.as_tensor(width).to(boxes.dtype))
    y = boxes[..., 1::2].clamp(min=0).minimum(torch.as_tensor(height).to(boxes.dtype))
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def scale_boxes(boxes: Tensor, from_size: tuple, to_size: tuple) -> Tensor:
    """`ops.boxes.scale_boxes` for sizes of ints, or of 0-dim tensors (traced sizes): the same
    float32 ratios to_size / from_size."""
    sizes = (*from_size, *to_size)
    if not any(isinstance(v, Tensor) for v in sizes):
        return _scale_boxes(boxes, from_size, to_size)
    from_h, from_w, to_h, to_w = (torch.as_tensor(v).to(torch.float32) for v in sizes)
    ratio_h, ratio_w = to_h / from_h, to_w / from_w
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=1)


def _pick(use_first: Tensor, first: Tensor, second: Tensor) -> Tensor:
    """`first` if the 0-dim bool `use_first` else `second`, for index vectors of any lengths."""
    n_first, n_second = torch._shape_as_tensor(first)[0], torch._shape_as_tensor(second)[0]
    return torch.cat((first[use_first.expand(n_first)], second[(~use_first).expand(n_second)]))


def _offset_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_thresh: float) -> Tensor:
    """torchvision's coordinate trick: boxes of each group shifted apart, one NMS. The boxes are
    clipped (>= 0), so a zero joined to them keeps their maximum and makes it defined for none."""
    max_coordinate = torch.cat((boxes.reshape(-1), boxes.new_zeros(1))).max()
    offsets = groups.to(boxes) * (max_coordinate + 1)
    return nms(boxes + offsets[:, None], scores, iou_thresh)


def _per_group_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_thresh: float, group_ids) -> Tensor:
    """One NMS per group id, kept indices sorted by decreasing score (torchvision's vanilla path)."""
    keep_mask = torch.zeros_like(scores, dtype=torch.bool)
    for group in group_ids:
        index = torch.where(groups == group)[0]
        keep_mask[index[nms(boxes[index], scores[index], iou_thresh)]] = True
    keep = torch.where(keep_mask)[0]
    return keep[scores[keep].sort(descending=True)[1]]


def grouped_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_thresh: float, *, group_ids) -> Tensor:
    """(B, 4) clipped boxes, (B,) scores, (B,) group ids (all in `group_ids`) -> kept indices by
    decreasing score: `torchvision.ops.batched_nms` in eager mode; while tracing both of its
    algorithms run in the graph and the box count picks one, as batched_nms does on the CPU."""
    if not tracing():
        return batched_nms(boxes, scores, groups, iou_thresh)
    per_group = _per_group_nms(boxes, scores, groups, iou_thresh, group_ids)
    offset = _offset_nms(boxes, scores, groups, iou_thresh)
    return _pick(torch._shape_as_tensor(boxes)[0] > PER_GROUP_NMS_ABOVE, per_group, offset)
