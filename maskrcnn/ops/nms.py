"""Non-maximum suppression, per group (class or FPN level) in one call."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import batched_nms as _batched_nms
from torchvision.ops import nms as _nms


def nms(boxes: Tensor, scores: Tensor, iou_thresh: float) -> Tensor:
    """Indices of kept boxes, by decreasing score."""
    return _nms(boxes, scores, iou_thresh)


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_thresh: float) -> Tensor:
    """NMS applied independently within each group id; kept indices by decreasing score."""
    return _batched_nms(boxes, scores, groups, iou_thresh)


# torchvision's batched_nms runs NMS per group above this many box coordinates (CPU, other devices)
_PER_GROUP_ABOVE = {True: 4000, False: 20000}


def _per_image(boxes: Tensor, scores: Tensor, groups: Tensor, valid: Tensor, iou_thresh: float) -> Tensor:
    """batched_nms_over_images by one batched_nms call per image (flat indices, by decreasing score)."""
    width = boxes.shape[1]
    keeps = []
    for i in range(boxes.shape[0]):
        index = torch.where(valid[i])[0]
        kept = batched_nms(boxes[i][index], scores[i][index], groups[i][index], iou_thresh)
        keeps.append(index[kept] + i * width)
    keep = torch.cat(keeps)
    order = torch.sort(scores.flatten()[keep], descending=True, stable=True).indices
    return keep[order]


def batched_nms_over_images(
    boxes: Tensor, scores: Tensor, groups: Tensor, valid: Tensor, iou_thresh: float
) -> Tensor:
    """NMS within each (image, group) of a padded batch, in one `nms` call per 4 images: one wait
    for the host on a GPU, where a call per image waits once per image.

    boxes (N, T, 4) with coordinates >= 0 (clipped to their image), scores, groups (N, T) and valid
    (N, T) bool -> (K,) kept indices into the flattened N*T entries, by decreasing score. Invalid
    entries take part with score -inf, so they come after every valid one and suppress none; the
    caller drops them (valid.flatten()[keep]) together with its own per-image selection.

    Per image, the valid entries kept and their order are exactly those of `batched_nms` on that
    image's valid entries. Where torchvision takes its coordinate offsets (up to 5000 boxes on a
    GPU, 1000 on the CPU): the same offsets (group * (max coordinate + 1), in the boxes' dtype),
    and images apart by mirroring (x -> -x for odd images, y -> -y for images 2 and 3 of each 4),
    which changes no IoU's rounding since max(-a, -b) = -min(a, b) and negation is exact. Where an
    image has more (known on the host without a wait when T is under the limit), each image goes
    through `batched_nms` (its NMS per group), as a call per image would.
    """
    num_images, width = boxes.shape[:2]
    if num_images == 0 or width == 0:
        return torch.zeros((0,), dtype=torch.int64, device=boxes.device)
    limit = _PER_GROUP_ABOVE[boxes.device.type == "cpu"]
    if width * 4 > limit:  # some image may have more boxes than torchvision's offset path takes
        counts = valid.sum(1).tolist()  # a wait, only past the limit (on a GPU: > 5000 boxes)
        if max(counts) * 4 > limit:
            return _per_image(boxes, scores, groups, valid, iou_thresh)
    masked = torch.where(valid[..., None], boxes, float("-inf")).amax(dim=(1, 2))  # (N,)
    top = torch.where(torch.isfinite(masked), masked, torch.zeros_like(masked))
    shifted = boxes + (groups.to(boxes.dtype) * (top[:, None] + 1))[..., None]
    x1, y1, x2, y2 = shifted.unbind(-1)
    parts = []
    for i in range(num_images):
        mx, my = i % 2 == 1, (i // 2) % 2 == 1
        a1, a2 = (-x2[i], -x1[i]) if mx else (x1[i], x2[i])
        b1, b2 = (-y2[i], -y1[i]) if my else (y1[i], y2[i])
        parts.append(torch.stack((a1, b1, a2, b2), dim=-1))
    apart = torch.stack(parts)  # (N, T, 4)
    masked_scores = torch.where(valid, scores, float("-inf"))
    per_call = 4 * width
    keeps = []
    for start in range(0, num_images * width, per_call):
        end = start + per_call
        keep = _nms(apart.flatten(0, 1)[start:end], masked_scores.flatten()[start:end], iou_thresh)
        keeps.append(keep + start)
    if len(keeps) == 1:
        return keeps[0]
    keep = torch.cat(keeps)
    order = torch.sort(masked_scores.flatten()[keep], descending=True, stable=True).indices
    return keep[order]
