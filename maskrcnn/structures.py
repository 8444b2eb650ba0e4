"""Typed containers that flow between the stages of Mask R-CNN.

Conventions used throughout the package
---------------------------------------
Shape shorthand: N images, C channels, H×W image or feature size, A anchors per
location, G ground-truth instances, P proposals, R sampled RoIs, K foreground
classes (labels 1..K, 0 is background), D detections, M mask resolution.

- Images are float tensors (3, H, W) with values in [0, 1], RGB (torchvision's convention).
- Boxes are (x1, y1, x2, y2) in absolute pixels, float32; a box covers the continuous
  interval [x1, x2), so its width is x2 - x1 (no "+1").
- Labels are int64; 0 is background, 1..K are the foreground classes.
- Masks are (G, H, W) tensors at image resolution (bool or uint8 0/1).
- Per-image results are Python lists of length N; batched tensors carry a leading N.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor


@dataclass
class ImageBatch:
    """Preprocessed images: normalized, resized and zero-padded into one tensor.

    tensor:         (N, 3, Hp, Wp) with Hp, Wp multiples of the size divisor.
    image_sizes:    (h, w) of each image after resizing, before padding.
    original_sizes: (h, w) of each image as given by the user.
    """

    tensor: Tensor
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]

    def __len__(self) -> int:
        return len(self.image_sizes)


@dataclass
class Targets:
    """Ground truth of one image: G instances."""

    boxes: Tensor  # (G, 4) float32 xyxy
    labels: Tensor  # (G,) int64 in 1..K
    masks: Tensor  # (G, H, W) uint8 or bool

    @staticmethod
    def from_any(obj: Any) -> Targets:
        """Accept a Targets or a torchvision-style dict with 'boxes', 'labels', 'masks'."""
        if isinstance(obj, Targets):
            return obj
        if isinstance(obj, dict):
            missing = [k for k in ("boxes", "labels", "masks") if k not in obj]
            if missing:
                raise ValueError(f"targets dict is missing keys {missing}; has {sorted(obj)}")
            return Targets(boxes=obj["boxes"], labels=obj["labels"], masks=obj["masks"])
        raise TypeError(f"targets must be Targets or dict, got {type(obj).__name__}")

    def select(self, keep: Tensor) -> Targets:
        """The instances picked by `keep` (a bool mask or indices)."""
        return Targets(self.boxes[keep], self.labels[keep], self.masks[keep])

    def to(self, device: torch.device | str) -> Targets:
        return Targets(self.boxes.to(device), self.labels.to(device), self.masks.to(device))

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@dataclass
class Proposals:
    """RPN output for one image: P boxes (in resized-image pixels) and objectness probabilities."""

    boxes: Tensor  # (P, 4)
    scores: Tensor  # (P,)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@dataclass
class Detections:
    """Final output for one image, in original-image pixels.

    boxes (D, 4) float, scores (D,), labels (D,) int64 in 1..K, masks (D, H, W) bool.
    """

    boxes: Tensor
    scores: Tensor
    labels: Tensor
    masks: Tensor

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def select(self, keep: Tensor) -> Detections:
        """The detections picked by `keep` (a bool mask or indices), in that order."""
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep], self.masks[keep])

    def to(self, device: torch.device | str) -> Detections:
        return Detections(*(t.to(device) for t in (self.boxes, self.scores, self.labels, self.masks)))


@dataclass
class Sample:
    """One dataset item: an image, its ground truth and where it came from.

    image: (3, H, W) float32 in [0, 1]; targets in the same pixel frame; crowd regions are
    kept apart in `crowd_masks` (never used as training targets).
    """

    image: Tensor
    targets: Targets
    image_id: int
    file_name: str
    crowd_boxes: Optional[Tensor] = None  # (Gc, 4)
    extra: dict = field(default_factory=dict)
