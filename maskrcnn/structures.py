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

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field, fields
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


class _PerInstance:
    """Behaviour shared by containers whose tensor fields each hold one row per instance.

    Optional fields (None) are skipped, so a branch adds a field here and nothing else changes:
    `select`, `to` and `map` apply to every tensor field there is.
    """

    def tensor_fields(self) -> dict[str, Tensor]:
        """The fields that hold a tensor (per-instance data), by name, in declaration order."""
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                out[f.name] = value
        return out

    def map(self, fn: Callable[[Tensor], Tensor]):
        """A copy with `fn` applied to every tensor field."""
        return dataclasses.replace(self, **{k: fn(v) for k, v in self.tensor_fields().items()})  # type: ignore[type-var]

    def select(self, keep: Tensor):
        """The instances picked by `keep` (a bool mask or indices), in that order."""
        return self.map(lambda t: t[keep])

    def to(self, device: torch.device | str):
        return self.map(lambda t: t.to(device))

    def pin_memory(self):
        return self.map(lambda t: t.pin_memory())

    def __len__(self) -> int:
        return int(self.boxes.shape[0])  # type: ignore[attr-defined]


@dataclass
class Targets(_PerInstance):
    """Ground truth of one image: G instances. Optional fields are None when a dataset has none."""

    boxes: Tensor  # (G, 4) float32 xyxy
    labels: Tensor  # (G,) int64 in 1..K
    masks: Optional[Tensor] = None  # (G, H, W) uint8 or bool
    keypoints: Optional[Tensor] = None  # (G, J, 3) float: x, y, v (0 unlabelled, 1 hidden, 2 visible)

    @staticmethod
    def from_any(obj: Any) -> Targets:
        """Accept a Targets or a torchvision-style dict with 'boxes', 'labels' and optional fields."""
        if isinstance(obj, Targets):
            return obj
        if isinstance(obj, dict):
            missing = [k for k in ("boxes", "labels") if k not in obj]
            if missing:
                raise ValueError(f"targets dict is missing keys {missing}; has {sorted(obj)}")
            names = {f.name for f in fields(Targets)}
            return Targets(**{k: v for k, v in obj.items() if k in names})
        raise TypeError(f"targets must be Targets or dict, got {type(obj).__name__}")


@dataclass
class Proposals:
    """RPN output for one image: P boxes (in resized-image pixels) and objectness probabilities."""

    boxes: Tensor  # (P, 4)
    scores: Tensor  # (P,)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@dataclass
class Detections(_PerInstance):
    """Detections of one image: D instances, best first.

    What `MaskRCNN.predict` returns is in original-image pixels. Inside the model, between the RoI
    heads and the last step, boxes are in the resized input frame and masks are not pasted yet.
    Each RoI-head branch fills its own fields; a field stays None when its branch is absent.
    """

    boxes: Tensor  # (D, 4) float xyxy
    scores: Tensor  # (D,)
    labels: Tensor  # (D,) int64 in 1..K
    masks: Optional[Tensor] = None  # (D, H, W) bool, pasted into the image (mask branch)
    mask_probs: Optional[Tensor] = None  # (D, M, M) probability of each detection's class mask
    keypoints: Optional[Tensor] = None  # (D, J, 3) float: x, y, score (keypoint branch)
    proposal_index: Optional[Tensor] = None  # (D,) int64: the proposal each detection was refined from


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
