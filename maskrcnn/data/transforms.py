"""Image loading and training-time transforms on `Sample`s.

Every transform takes a `Sample` (and optionally a `torch.Generator` for its randomness; the
global RNG is used when none is given) and returns a new `Sample` whose image, boxes, masks and
crowd boxes describe the same scene. After any geometric change the boxes are recomputed from
the masks, so they always stay tight around them, and instances whose mask became empty are
removed.

Resampling: images use bilinear interpolation (half-pixel centres, antialiased when shrinking);
masks use "nearest-exact" sampling of the same pixel-centre mapping, which keeps them binary and
aligned with the image.

Keypoints (`Targets.keypoints`, (G, J, 3): x, y, v) are continuous image coordinates, like boxes,
and follow every transform with them: a resize scales x and y; a horizontal flip maps x to w - x
and swaps the left/right keypoint pairs of its flip map; a crop shifts them, and the keypoints it
leaves outside the image ([0, w) x [0, h)) become unlabelled (v = 0) with their coordinates kept.
They are dropped with their instance when its mask becomes empty.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from maskrcnn.errors import UserError
from maskrcnn.files import STORED_PIXELS, read_image
from maskrcnn.ops.boxes import masks_to_boxes
from maskrcnn.ops.keypoints import scale_keypoints
from maskrcnn.structures import Sample, Targets

__all__ = [
    "Compose",
    "HorizontalFlip",
    "LargeScaleJitter",
    "ResizeShortestEdge",
    "Transform",
    "flip_keypoints",
    "load_image",
    "remove_empty",
]


def load_image(path: Union[str, Path]) -> Tensor:
    """Read a dataset image file as a float32 (3, H, W) RGB tensor in [0, 1], under the
    `STORED_PIXELS` policy of `maskrcnn.files`: annotations refer to the stored pixel grid (as in
    COCO), so EXIF orientation is ignored and alpha channels are dropped (not composited).
    Grayscale is replicated to 3 channels and 16-bit images are scaled by 1/65535. Raises
    `maskrcnn.files.ImageReadError` (a ValueError) naming the file when it cannot be read."""
    return read_image(path, policy=STORED_PIXELS)


def remove_empty(targets: Targets) -> Targets:
    """Drop instances whose mask has no pixel set."""
    if len(targets) == 0:
        return targets
    keep = targets.masks.flatten(1).any(dim=1).bool()
    if bool(keep.all()):
        return targets
    return targets.select(keep)


def _targets_from_masks(targets: Targets, masks: Tensor) -> Targets:
    """`targets` with `masks` and boxes recomputed from them, dropping the instances (all their
    fields) whose mask is empty."""
    out = dataclasses.replace(targets, boxes=masks_to_boxes(masks), masks=masks)
    keep = out.boxes[:, 2] > out.boxes[:, 0]
    return out if bool(keep.all()) else out.select(keep)


def _map_keypoints(targets: Targets, fn) -> Targets:
    """`targets` with `fn` applied to its keypoints (when it has any)."""
    if targets.keypoints is None:
        return targets
    return dataclasses.replace(targets, keypoints=fn(targets.keypoints))


def _uniform(generator: Optional[torch.Generator]) -> float:
    return float(torch.rand((), generator=generator))


def _resize_image(image: Tensor, out_h: int, out_w: int) -> Tensor:
    h, w = image.shape[-2:]
    if (out_h, out_w) == (h, w):
        return image
    shrink = out_h < h or out_w < w
    out = F.interpolate(
        image[None], size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=shrink
    )[0]
    return out.clamp_(0.0, 1.0)


def _nearest_index(start: int, length: int, in_size: int, out_size: int) -> Tensor:
    """Source indices of output pixels start..start+length-1 ("nearest-exact", pixel centres)."""
    dst = torch.arange(start, start + length, dtype=torch.float64)
    src = torch.floor((dst + 0.5) * (in_size / out_size)).to(torch.int64)
    return src.clamp_(0, in_size - 1)


def _resize_crop_masks(
    masks: Tensor, out_h: int, out_w: int, y0: int = 0, x0: int = 0, crop_h: int = -1, crop_w: int = -1
) -> Tensor:
    """Resize masks (G, H, W) to (out_h, out_w) and return the window [y0:y0+crop_h, x0:x0+crop_w].

    Only the window is materialised, so large upscales followed by a crop stay cheap.
    """
    h, w = masks.shape[-2:]
    crop_h = out_h - y0 if crop_h < 0 else crop_h
    crop_w = out_w - x0 if crop_w < 0 else crop_w
    ys = _nearest_index(y0, crop_h, h, out_h)
    xs = _nearest_index(x0, crop_w, w, out_w)
    return masks.index_select(1, ys).index_select(2, xs)


def _with(sample: Sample, image: Tensor, targets: Targets, crowd_boxes: Optional[Tensor]) -> Sample:
    return dataclasses.replace(
        sample, image=image, targets=targets, crowd_boxes=crowd_boxes, extra=dict(sample.extra)
    )


def _scale_boxes(boxes: Optional[Tensor], sx: float, sy: float) -> Optional[Tensor]:
    if boxes is None:
        return None
    return boxes * torch.tensor([sx, sy, sx, sy], dtype=boxes.dtype)


def _resize_sample(sample: Sample, out_h: int, out_w: int) -> Sample:
    h, w = sample.image.shape[-2:]
    if (out_h, out_w) == (h, w):
        return sample
    image = _resize_image(sample.image, out_h, out_w)
    t = _map_keypoints(sample.targets, lambda k: scale_keypoints(k, (h, w), (out_h, out_w)))
    masks = _resize_crop_masks(t.masks, out_h, out_w)
    targets = _targets_from_masks(t, masks)
    crowd = _scale_boxes(sample.crowd_boxes, out_w / w, out_h / h)
    return _with(sample, image, targets, crowd)


class Transform:
    """Base class: `transform(sample, generator=None) -> Sample`."""

    def __call__(self, sample: Sample, generator: Optional[torch.Generator] = None) -> Sample:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


class Compose(Transform):
    """Apply transforms in order, sharing one generator."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, generator: Optional[torch.Generator] = None) -> Sample:
        for t in self.transforms:
            sample = t(sample, generator)
        return sample


def shortest_edge_size(h: int, w: int, min_size: int, max_size: int) -> tuple[int, int]:
    """Output (h, w) with the shorter side min_size, unless that makes the longer side exceed
    max_size, in which case the longer side becomes max_size. Sizes are rounded to nearest."""
    scale = min_size / min(h, w)
    if max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


class ResizeShortestEdge(Transform):
    """Resize so the shorter side equals a size drawn uniformly from `min_sizes`, capping the
    longer side at `max_size`."""

    def __init__(self, min_sizes: Union[int, Sequence[int]], max_size: int) -> None:
        self.min_sizes = (int(min_sizes),) if isinstance(min_sizes, int) else tuple(int(s) for s in min_sizes)
        if not self.min_sizes or min(self.min_sizes) <= 0 or max_size <= 0:
            raise UserError(f"ResizeShortestEdge needs positive sizes, got {min_sizes}, {max_size}")
        self.max_size = int(max_size)

    def __call__(self, sample: Sample, generator: Optional[torch.Generator] = None) -> Sample:
        if len(self.min_sizes) == 1:
            size = self.min_sizes[0]
        else:
            size = self.min_sizes[int(torch.randint(len(self.min_sizes), (), generator=generator))]
        h, w = sample.image.shape[-2:]
        return _resize_sample(sample, *shortest_edge_size(h, w, size, self.max_size))


def _flip_boxes(boxes: Tensor, width: int) -> Tensor:
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


def flip_keypoints(keypoints: Tensor, width: int, flip_map: Sequence[tuple[int, int]]) -> Tensor:
    """Mirror (..., J, 3) keypoints in an image `width` pixels wide: x -> width - x (continuous
    coordinates, as for boxes and as detectron2 does; torchvision's reference transforms apply the
    same formula), and the keypoints of each (a, b) pair of `flip_map` trade places (a left eye
    becomes a right eye). Visibility travels with its keypoint."""
    order = list(range(keypoints.shape[-2]))
    for a, b in flip_map:
        order[a], order[b] = b, a
    out = keypoints[..., order, :].clone()
    out[..., 0] = width - out[..., 0]
    return out


class HorizontalFlip(Transform):
    """Mirror left-right with probability `prob` (one random draw per call).

    Samples with keypoints need `keypoint_flip_map`, the 0-based index pairs that trade places
    (`maskrcnn.data.keypoint_meta.keypoint_flip_map` resolves it from names or the config); `()`
    when no keypoint has a mirror partner.
    """

    def __init__(
        self, prob: float = 0.5, *, keypoint_flip_map: Optional[Sequence[tuple[int, int]]] = None
    ) -> None:
        if not 0.0 <= prob <= 1.0:
            raise UserError(f"flip probability must be in [0, 1], got {prob}")
        self.prob = float(prob)
        self.keypoint_flip_map = None if keypoint_flip_map is None else tuple(map(tuple, keypoint_flip_map))

    def __call__(self, sample: Sample, generator: Optional[torch.Generator] = None) -> Sample:
        if _uniform(generator) >= self.prob:
            return sample
        w = sample.image.shape[-1]
        t = sample.targets
        if t.keypoints is not None:
            if self.keypoint_flip_map is None:
                raise UserError(
                    f"{sample.file_name}: HorizontalFlip got keypoints but no keypoint_flip_map (which "
                    "keypoints swap left <-> right); see maskrcnn.data.keypoint_meta.keypoint_flip_map"
                )
            t = _map_keypoints(t, lambda k: flip_keypoints(k, w, self.keypoint_flip_map))
        targets = dataclasses.replace(t, boxes=_flip_boxes(t.boxes, w), masks=t.masks.flip(-1))
        crowd = None if sample.crowd_boxes is None else _flip_boxes(sample.crowd_boxes, w)
        return _with(sample, sample.image.flip(-1), targets, crowd)


def _crop_keypoints(keypoints: Tensor, x0: int, y0: int, width: int, height: int) -> Tensor:
    """Keypoints in the frame of the window [x0, x0 + width) x [y0, y0 + height); those outside it
    become unlabelled (v = 0), their coordinates kept."""
    out = keypoints.clone()
    out[..., 0] -= x0
    out[..., 1] -= y0
    x, y = out[..., 0], out[..., 1]
    outside = (x < 0) | (x >= width) | (y < 0) | (y >= height)
    out[..., 2] = out[..., 2].masked_fill(outside, 0)
    return out


class LargeScaleJitter(Transform):
    """Large-scale jitter (Ghiasi et al. 2021): resize the image by
    output_size * s / max(h, w) with s ~ U(scale_range), then take a random output_size square
    crop (when larger) and zero-pad bottom/right (when smaller). The valid image region is stored
    in `sample.extra["valid_size"]` as (h, w). Keypoints outside the crop become unlabelled (v = 0)."""

    def __init__(self, output_size: int, scale_range: tuple[float, float] = (0.1, 2.0)) -> None:
        lo, hi = scale_range
        if output_size <= 0 or not 0 < lo <= hi:
            raise UserError(f"bad LargeScaleJitter arguments: {output_size}, {scale_range}")
        self.output_size = int(output_size)
        self.scale_range = (float(lo), float(hi))

    def __call__(self, sample: Sample, generator: Optional[torch.Generator] = None) -> Sample:
        out = self.output_size
        h, w = sample.image.shape[-2:]
        lo, hi = self.scale_range
        s = lo + (hi - lo) * _uniform(generator)
        f = out * s / max(h, w)
        nh, nw = max(1, int(h * f + 0.5)), max(1, int(w * f + 0.5))
        # Offsets are always drawn so that the random stream does not depend on the image size.
        uy, ux = _uniform(generator), _uniform(generator)
        y0 = min(int(uy * (nh - out + 1)), nh - out) if nh > out else 0
        x0 = min(int(ux * (nw - out + 1)), nw - out) if nw > out else 0
        ch, cw = min(nh, out), min(nw, out)

        resized = _resize_image(sample.image, nh, nw)[:, y0 : y0 + ch, x0 : x0 + cw]
        image = resized.new_zeros((3, out, out))
        image[:, :ch, :cw] = resized

        t = _map_keypoints(
            sample.targets, lambda k: _crop_keypoints(scale_keypoints(k, (h, w), (nh, nw)), x0, y0, cw, ch)
        )
        crop = _resize_crop_masks(t.masks, nh, nw, y0, x0, ch, cw)
        masks = t.masks.new_zeros((len(t), out, out))
        masks[:, :ch, :cw] = crop
        targets = _targets_from_masks(t, masks)

        crowd = sample.crowd_boxes
        if crowd is not None:
            crowd = _scale_boxes(crowd, nw / w, nh / h) - torch.tensor([x0, y0, x0, y0], dtype=crowd.dtype)
            crowd[:, 0::2] = crowd[:, 0::2].clamp(0, cw)
            crowd[:, 1::2] = crowd[:, 1::2].clamp(0, ch)
            crowd = crowd[(crowd[:, 2] > crowd[:, 0]) & (crowd[:, 3] > crowd[:, 1])]
        result = _with(sample, image, targets, crowd)
        result.extra["valid_size"] = (ch, cw)
        return result
