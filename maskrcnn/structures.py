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
- Masks are (G, H, W) tensors at image resolution (bool or uint8 0/1); detections keep theirs
  as `MaskCrops` (each mask inside its box, plus its offset) and give planes on demand.
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


class _MasksView:
    """`Detections.masks`: holds (D, H, W) planes or a `MaskCrops`, and always reads as planes.

    Assign either; reading builds the planes from crops on demand (a new tensor on each read, so
    keep it in a variable). `Detections.mask_crops` reads the crops without building planes.
    """

    def __get__(self, obj, objtype=None):
        if obj is None:
            return None  # the dataclass default
        stored = obj.__dict__.get("_masks")
        return stored.full() if isinstance(stored, MaskCrops) else stored

    def __set__(self, obj, value) -> None:
        if value is not None and not isinstance(value, (Tensor, MaskCrops)):
            raise TypeError(
                f"Detections.masks must be a tensor, MaskCrops or None, got {type(value).__name__}"
            )
        obj.__dict__["_masks"] = value


@dataclass
class Detections(_PerInstance):
    """Detections of one image: D instances, best first.

    What `MaskRCNN.predict` returns is in original-image pixels. Inside the model, between the RoI
    heads and the last step, boxes are in the resized input frame and masks are not pasted yet.
    Each RoI-head branch fills its own fields; a field stays None when its branch is absent.

    The mask branch stores its masks as `MaskCrops` (each mask inside its box): `mask_crops` gives
    them; `masks` gives the (D, H, W) planes, built on each read. Use `select`, `to` and
    `replace` (not `dataclasses.replace`, which reads `masks` and so builds the planes).
    """

    boxes: Tensor  # (D, 4) float xyxy
    scores: Tensor  # (D,)
    labels: Tensor  # (D,) int64 in 1..K
    masks: Optional[Tensor] = _MasksView()  # type: ignore[assignment]  # (D, H, W) bool, or MaskCrops
    mask_probs: Optional[Tensor] = None  # (D, M, M) probability of each detection's class mask
    keypoints: Optional[Tensor] = None  # (D, J, 3) float: x, y, score (keypoint branch)
    proposal_index: Optional[Tensor] = None  # (D,) int64: the proposal each detection was refined from

    def __repr__(self) -> str:  # the stored masks (crops stay crops: no planes built to print)
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "masks"}
        values["masks"] = self.__dict__.get("_masks")
        return f"Detections({', '.join(f'{f.name}={values[f.name]!r}' for f in fields(self))})"

    @property
    def mask_crops(self) -> Optional[MaskCrops]:
        """The masks as crops (without building planes); planes given by a caller come as crops at (0, 0)."""
        stored = self.__dict__.get("_masks")
        return MaskCrops.from_full(stored) if isinstance(stored, Tensor) else stored

    def tensor_fields(self) -> dict[str, Tensor]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "masks"}
        out["masks"] = self.__dict__.get("_masks")
        order = [f.name for f in fields(self)]
        return {k: out[k] for k in order if isinstance(out[k], Tensor)}

    def replace(self, **changes: Any) -> Detections:
        """`dataclasses.replace` that carries crops over as crops (no planes built)."""
        current = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "masks"}
        current["masks"] = self.__dict__.get("_masks")
        return Detections(**{**current, **changes})

    def _map_instances(self, fn: Callable[[Tensor], Tensor], on_crops: Callable[[MaskCrops], MaskCrops]):
        changes: dict[str, Any] = {k: fn(v) for k, v in self.tensor_fields().items()}
        stored = self.__dict__.get("_masks")
        if isinstance(stored, MaskCrops):
            changes["masks"] = on_crops(stored)
        return self.replace(**changes)

    def map(self, fn: Callable[[Tensor], Tensor]) -> Detections:
        """A copy with `fn` applied to every tensor field (crops: to their planes, then back to crops)."""
        return self._map_instances(fn, lambda c: MaskCrops.from_full(fn(c.full())))

    def select(self, keep: Tensor) -> Detections:
        return self._map_instances(lambda t: t[keep], lambda c: c.select(keep))

    def to(self, device: torch.device | str) -> Detections:
        return self._map_instances(lambda t: t.to(device), lambda c: c.to(device))

    def pin_memory(self) -> Detections:
        return self._map_instances(lambda t: t.pin_memory(), lambda c: c.pin_memory())


@dataclass(frozen=True)
class MaskCrops:
    """D instance masks, each kept as the crop inside its integer box instead of a full (H, W) plane.

    crops:      D bool tensors (h_i, w_i): mask i inside its box (a box may be empty: 0 × w or h × 0).
    offsets:    (D, 2) int64: (x0, y0) of each crop's top-left pixel in the image.
    image_size: (H, W) of the image the crops sit in; every crop lies inside it.

    Outside its crop a mask is empty. `full()` builds the (D, H, W) planes on demand (each call
    allocates them: D × H × W bytes); `rle()` encodes COCO RLE from the crops alone, so a 12000 × 9000
    image with 100 detections never holds 100 image-sized planes.
    """

    crops: list[Tensor]
    offsets: Tensor
    image_size: tuple[int, int]

    def __post_init__(self) -> None:
        if self.offsets.shape != (len(self.crops), 2):
            raise ValueError(f"offsets must be ({len(self.crops)}, 2), got {tuple(self.offsets.shape)}")

    def __len__(self) -> int:
        return len(self.crops)

    def __repr__(self) -> str:
        height, width = self.image_size
        return f"MaskCrops({len(self)} crops in {height}x{width}, {int(self.area().sum())} pixels set)"

    @property
    def device(self) -> torch.device:
        return self.offsets.device

    @staticmethod
    def empty(image_size: tuple[int, int], device: torch.device | str = "cpu") -> MaskCrops:
        return MaskCrops([], torch.zeros((0, 2), dtype=torch.int64, device=device), tuple(image_size))

    @staticmethod
    def from_full(masks: Tensor) -> MaskCrops:
        """(D, H, W) planes -> crops that are the planes themselves (views, no copy) at offset (0, 0)."""
        offsets = torch.zeros((masks.shape[0], 2), dtype=torch.int64, device=masks.device)
        return MaskCrops(list(masks.bool().unbind(0)), offsets, (int(masks.shape[1]), int(masks.shape[2])))

    def boxes(self) -> Tensor:
        """(D, 4) int64 x0, y0, x1, y1 (exclusive) of each crop in the image."""
        sizes = torch.tensor([[c.shape[1], c.shape[0]] for c in self.crops], dtype=torch.int64)
        sizes = sizes.reshape(-1, 2).to(self.offsets.device)
        return torch.cat((self.offsets, self.offsets + sizes), dim=1)

    def full(self) -> Tensor:
        """(D, H, W) bool: the masks pasted into zero planes (allocated on each call)."""
        height, width = self.image_size
        out = torch.zeros((len(self), height, width), dtype=torch.bool, device=self.device)
        for i, (crop, (x0, y0)) in enumerate(zip(self.crops, self.offsets.tolist())):
            out[i, y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        return out

    def plane(self, i: int) -> Tensor:
        """(H, W) bool: mask i pasted into one zero plane."""
        return self.select([i]).full()[0]

    def select(self, keep: Tensor | list[int] | int | slice) -> MaskCrops:
        """The masks picked by `keep` (a bool mask, indices, an int or a slice), in that order."""
        if isinstance(keep, slice):
            index = list(range(len(self)))[keep]
        elif isinstance(keep, int):
            index = [keep]
        else:
            keep = torch.as_tensor(keep)
            if keep.dtype == torch.bool:
                keep = keep.nonzero().flatten()
            index = keep.flatten().tolist()
        picked = torch.as_tensor(index, dtype=torch.int64, device=self.device)
        return MaskCrops([self.crops[i] for i in index], self.offsets[picked].reshape(-1, 2), self.image_size)

    __getitem__ = select

    def to(self, device: torch.device | str) -> MaskCrops:
        return MaskCrops([c.to(device) for c in self.crops], self.offsets.to(device), self.image_size)

    def pin_memory(self) -> MaskCrops:
        return MaskCrops([c.pin_memory() for c in self.crops], self.offsets.pin_memory(), self.image_size)

    def area(self) -> Tensor:
        """(D,) int64: the number of pixels of each mask."""
        if not self.crops:
            return torch.zeros(0, dtype=torch.int64, device=self.device)
        return torch.stack([c.sum(dtype=torch.int64) for c in self.crops])

    def rle(self) -> list[dict]:
        """COCO RLE of each mask, {"size": [H, W], "counts": str}: the bytes pycocotools'
        `mask.encode` gives for the full plane (column-major runs, LEB128-like string), computed
        from the crop and its offset only."""
        return [
            {"size": list(self.image_size), "counts": _rle_string(_crop_runs(c, o, self.image_size))}
            for c, o in zip(self.crops, self.offsets.tolist())
        ]


def _crop_runs(crop: Tensor, offset: list[int], image_size: tuple[int, int]) -> list[int]:
    """COCO's uncompressed run lengths (zeros first, then alternating) of a crop at `offset` in an
    (H, W) image, read column by column (Fortran order), without building the image."""
    height, width = image_size
    x0, y0 = offset
    total = height * width
    if crop.numel() == 0 or not bool(crop.any()):
        return [total]
    columns = torch.nn.functional.pad(crop.t().to(torch.int8), (1, 1))  # (w, h + 2): zero above and below
    step = columns.diff(dim=1)  # (w, h + 1): +1 where a run starts, -1 one past where it ends
    base = (torch.arange(crop.shape[1], device=crop.device) + x0) * height + y0  # each column's first pixel
    col_s, row_s = (step == 1).nonzero(as_tuple=True)
    col_e, row_e = (step == -1).nonzero(as_tuple=True)
    starts, ends = base[col_s] + row_s, base[col_e] + row_e  # both sorted: row-major over (column, row)
    # a run that reaches the bottom of the image continues at the top of the next column
    joined = ends[:-1] == starts[1:]
    starts = starts[torch.cat((joined.new_ones(1), ~joined))]
    ends = ends[torch.cat((~joined, joined.new_ones(1)))]
    bounds = torch.stack((starts, ends), dim=1).flatten()
    edges = torch.cat((bounds.new_zeros(1), bounds, bounds.new_full((1,), total)))
    counts = edges.diff().tolist()
    if counts[-1] == 0:  # the last run ends at the image's last pixel
        counts.pop()
    return counts


def _rle_string(counts: list[int]) -> str:
    """COCO's compressed counts string (pycocotools' rleToString): each count minus the one two
    before it (from the third on), in 5-bit groups with a continuation bit, offset by 48."""
    out = []
    for i, value in enumerate(counts):
        x = value - counts[i - 2] if i > 2 else value
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


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
