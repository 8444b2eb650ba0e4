"""Tiled (sliced) inference: cut a large image into overlapping tiles at native resolution, run the
model on batches of tiles, shift each tile's detections back into the image and join the pieces of
objects that the tile borders cut.

Shapes: T tiles, D detections, J keypoints; (H, W) the image. Windows and tiles are integer
(x0, y0, x1, y1) pixel rectangles, x1 / y1 exclusive.

The pure steps, each usable on its own:

- `tile_grid(height, width, size=, overlap=)`: the (T, 4) tiles. Along each side, n tiles of `size`
  px spread evenly from one edge to the other, n the fewest whose overlap is at least
  `overlap * size` (a side no longer than `size` is one tile).
- `shift_pieces(det, window=)`: one tile's Detections (tile pixels) -> `Pieces` in image pixels:
  boxes and keypoints shifted by the tile's origin, each mask kept as a crop (the mask branch's
  `MaskCrops`, cut to the rectangle of its own pixels) with its offset, never a full-image plane,
  and the tile as the piece's window.
- `merge_pieces(pieces, mode=, thresh=)`: two pieces of the same class from different windows
  match when, inside the part of the image both windows see (the overlap strip of two tiles; the
  tile, for a detection of the whole image run with `full_image`), their masks have IoU
  (`metric="iou"`, default) or intersection over the smaller of the two (`metric="ios"`) >=
  `thresh` (default 0.5); without masks, their boxes clipped to that part do. Matches join into
  groups, the best first, but a group never holds two pieces of one window (the model has already
  told those apart: a coarse mask that overlaps several objects cannot chain them into one).
  `mode="merge"` turns each group into one detection with the union mask, the union box, the
  highest score and the best piece's label and keypoints; `mode="nms"` keeps the best piece of each
  group as it is. Comparing inside the shared part only is what finds the halves of a cut object:
  each tile sees the object's part in the strip whole, whatever its part outside, while two
  neighbouring objects differ there. IoU rather than intersection over the smaller is the default
  because a whole-image detection that covers a small object would otherwise swallow it (measured
  in `benchmarks/large_images_tiling.py`).
- `assemble(pieces, image_size=)`: Pieces -> Detections, best first, masks as `MaskCrops`: memory
  grows with the objects' areas, not with D x H x W (a merged mask is the crop of its union).

`TileSettings` holds the options (`maskrcnn predict --tile SIZE --tile-overlap 0.2 --tile-merge
merge|nms --tile-full-image`); `Predictor.predict(..., tile=TileSettings(1024))` runs it all
(`predict_tiled` below).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .errors import UserError
from .structures import Detections, MaskCrops

__all__ = [
    "MERGE_MODES",
    "Pieces",
    "TileSettings",
    "assemble",
    "merge_pieces",
    "predict_tiled",
    "shift_pieces",
    "tile_grid",
    "tile_settings",
]

MERGE_MODES = ("merge", "nms")
MATCH_METRICS = ("ios", "iou")


@dataclass(frozen=True)
class TileSettings:
    """How to tile. size: the tile side in image pixels (>= 32); overlap: the least overlap of two
    neighbouring tiles, a fraction of `size` in [0, 0.9]; merge: "merge" (join the pieces of cut
    objects) or "nms" (keep the best piece); full_image: also run the whole image, resized as usual,
    so that objects larger than a tile survive; thresh / metric: when two pieces match (module
    docstring)."""

    size: int
    overlap: float = 0.2
    merge: str = "merge"
    full_image: bool = False
    thresh: float = 0.5
    metric: str = "iou"

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 32:
            raise UserError(f"tile size must be an integer of at least 32 px, got {self.size!r}")
        if not 0.0 <= self.overlap <= 0.9:
            raise UserError(f"tile overlap must be in [0, 0.9] (a fraction of the tile), got {self.overlap}")
        if self.merge not in MERGE_MODES:
            raise UserError(f"tile merge must be one of {', '.join(MERGE_MODES)}, got {self.merge!r}")
        if not 0.0 < self.thresh <= 1.0:
            raise UserError(f"tile match threshold must be in (0, 1], got {self.thresh}")
        if self.metric not in MATCH_METRICS:
            raise UserError(
                f"tile match metric must be one of {', '.join(MATCH_METRICS)}, got {self.metric!r}"
            )


def tile_settings(args: argparse.Namespace) -> TileSettings | None:
    """The TileSettings of `--tile ...` (`maskrcnn.engine.options.add_tile_arguments`), or None
    without --tile."""
    if args.tile is None:
        for flag, value, default in (
            ("--tile-overlap", args.tile_overlap, 0.2),
            ("--tile-merge", args.tile_merge, "merge"),
            ("--tile-full-image", args.tile_full_image, False),
        ):
            if value != default:
                raise UserError(f"{flag} needs --tile SIZE")
        return None
    return TileSettings(
        args.tile, overlap=args.tile_overlap, merge=args.tile_merge, full_image=args.tile_full_image
    )


def _starts(length: int, size: int, overlap: float) -> list[int]:
    if length <= size:
        return [0]
    stride = max(1, size - math.ceil(overlap * size))
    n = math.ceil((length - size) / stride) + 1
    return [round(i * (length - size) / (n - 1)) for i in range(n)]


def tile_grid(height: int, width: int, *, size: int, overlap: float) -> Tensor:
    """(T, 4) int64 tiles (x0, y0, x1, y1) covering an image of height x width, row by row."""
    ys, xs = _starts(height, size, overlap), _starts(width, size, overlap)
    tiles = [(x, y, min(x + size, width), min(y + size, height)) for y in ys for x in xs]
    return torch.tensor(tiles, dtype=torch.int64).reshape(-1, 4)


@dataclass
class Pieces:
    """Detections gathered from several windows of one image, in image pixels.

    crops[i] is detection i's mask over the rectangle rects[i] (its own pixels' bounding
    rectangle; an empty mask has an empty rectangle); windows[i] the part of the image it was
    detected in. crops / rects are None for a model without masks, keypoints without keypoints."""

    boxes: Tensor  # (D, 4) float xyxy
    scores: Tensor  # (D,)
    labels: Tensor  # (D,) int64
    windows: Tensor  # (D, 4) int64
    rects: Optional[Tensor] = None  # (D, 4) int64 x0, y0, x1, y1 of each crop
    crops: Optional[list[Tensor]] = None  # D bool tensors of (y1 - y0, x1 - x0)
    keypoints: Optional[Tensor] = None  # (D, J, 3)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @staticmethod
    def cat(parts: list[Pieces]) -> Pieces:
        first = parts[0]

        def joined(name: str):
            if getattr(first, name) is None:
                return None
            values = [getattr(p, name) for p in parts]
            return [c for v in values for c in v] if name == "crops" else torch.cat(values)

        names = ("boxes", "scores", "labels", "windows", "rects", "crops", "keypoints")
        return Pieces(**{n: joined(n) for n in names})

    def take(self, index: list[int]) -> Pieces:
        idx = torch.tensor(index, dtype=torch.int64, device=self.boxes.device)
        return Pieces(
            boxes=self.boxes[idx],
            scores=self.scores[idx],
            labels=self.labels[idx],
            windows=self.windows[idx],
            rects=None if self.rects is None else self.rects[idx],
            crops=None if self.crops is None else [self.crops[i] for i in index],
            keypoints=None if self.keypoints is None else self.keypoints[idx],
        )


def _tight(crop: Tensor, x0: int, y0: int) -> tuple[list[int], Tensor]:
    """A crop placed at (x0, y0) -> (the rectangle of its True pixels, the crop cut to it); an
    empty mask gives the empty rectangle (0, 0, 0, 0) and a 0 x 0 crop."""
    rows, cols = crop.any(dim=1), crop.any(dim=0)
    if not bool(rows.any()):
        return [0, 0, 0, 0], crop.new_zeros((0, 0))
    r = rows.nonzero().flatten()
    c = cols.nonzero().flatten()
    top, bottom, left, right = int(r[0]), int(r[-1]) + 1, int(c[0]), int(c[-1]) + 1
    return [x0 + left, y0 + top, x0 + right, y0 + bottom], crop[top:bottom, left:right]


def shift_pieces(det: Detections, *, window: tuple[int, int, int, int]) -> Pieces:
    """Detections of the tile `window` (x0, y0, x1, y1), in tile pixels -> Pieces in image pixels."""
    x0, y0 = int(window[0]), int(window[1])
    device = det.boxes.device
    offset = torch.tensor([x0, y0, x0, y0], dtype=det.boxes.dtype, device=device)
    d = len(det)
    windows = torch.tensor([list(window)], dtype=torch.int64, device=device).expand(d, 4).clone()
    keypoints = None
    if det.keypoints is not None:
        keypoints = det.keypoints.clone()
        keypoints[..., 0] += x0
        keypoints[..., 1] += y0
    rects = crops = None
    masks = det.mask_crops  # crops (the mask branch's own), or planes given as crops at (0, 0)
    if masks is not None:
        placed = [
            _tight(c.bool(), x0 + ox, y0 + oy) for c, (ox, oy) in zip(masks.crops, masks.offsets.tolist())
        ]
        rects = torch.tensor([r for r, _ in placed], dtype=torch.int64, device=device).reshape(-1, 4)
        crops = [c for _, c in placed]
    return Pieces(
        boxes=det.boxes + offset,
        scores=det.scores,
        labels=det.labels,
        windows=windows,
        rects=rects,
        crops=crops,
        keypoints=keypoints,
    )


def _intersect(a: list[int], b: list[int]) -> list[int]:
    return [max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])]


def _area(r: list[int]) -> int:
    return max(0, r[2] - r[0]) * max(0, r[3] - r[1])


def _mask_in(crop: Tensor, rect: list[int], region: list[int]) -> Tensor:
    """The part of a crop (placed at rect) inside region (clipped to rect), as a bool tensor."""
    r = _intersect(rect, region)
    if r[2] <= r[0] or r[3] <= r[1]:
        return crop.new_zeros((0, 0))
    return crop[r[1] - rect[1] : r[3] - rect[1], r[0] - rect[0] : r[2] - rect[0]]


def _overlap_score(p: Pieces, i: int, j: int, *, metric: str) -> float:
    """Mask (or box) overlap of pieces i and j inside the part of the image both windows see."""
    shared = _intersect(p.windows[i].tolist(), p.windows[j].tolist())
    if p.crops is not None and p.rects is not None:
        ri, rj = p.rects[i].tolist(), p.rects[j].tolist()
        a = int(_mask_in(p.crops[i], ri, shared).sum())
        b = int(_mask_in(p.crops[j], rj, shared).sum())
        both = _intersect(_intersect(ri, rj), shared)
        inter = 0
        if _area(both) > 0:
            inter = int((_mask_in(p.crops[i], ri, both) & _mask_in(p.crops[j], rj, both)).sum())
    else:
        bi = _intersect([int(math.floor(v)) for v in p.boxes[i].tolist()], shared)
        bj = _intersect([int(math.floor(v)) for v in p.boxes[j].tolist()], shared)
        a, b, inter = _area(bi), _area(bj), _area(_intersect(bi, bj))
    if min(a, b) == 0:
        return 0.0
    return inter / min(a, b) if metric == "ios" else inter / (a + b - inter)


def _candidate_pairs(p: Pieces, *, block: int = 512) -> list[tuple[int, int]]:
    """Pairs i < j of the same class, from different windows, whose crop rectangles (boxes, without
    masks) intersect; compared `block` rows at a time (memory: block x D)."""
    boxes = p.boxes if p.rects is None else p.rects.to(p.boxes.dtype)
    pairs: list[tuple[int, int]] = []
    for start in range(0, len(p), block):
        rows = slice(start, start + block)
        lo = torch.maximum(boxes[rows, None, :2], boxes[None, :, :2])
        hi = torch.minimum(boxes[rows, None, 2:], boxes[None, :, 2:])
        ok = (hi > lo).all(dim=2) & (p.labels[rows, None] == p.labels[None, :])
        ok &= (p.windows[rows, None, :] != p.windows[None, :, :]).any(dim=2)
        ok &= (
            torch.arange(len(p), device=boxes.device)[None, :]
            > torch.arange(start, start + ok.shape[0], device=boxes.device)[:, None]
        )
        pairs += [(start + i, j) for i, j in ok.nonzero().tolist()]
    return pairs


def _groups(p: Pieces, *, thresh: float, metric: str) -> list[list[int]]:
    """Matching pieces chained into groups (module docstring), the best matches first, never two
    pieces of one window in a group; each group's indices best first."""
    n = len(p)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    windows = [{tuple(w)} for w in p.windows.tolist()]  # the windows of each root's group
    if n > 1:
        scored = [(_overlap_score(p, i, j, metric=metric), i, j) for i, j in _candidate_pairs(p)]
        for _, i, j in sorted((m for m in scored if m[0] >= thresh), key=lambda m: -m[0]):
            a, b = root(i), root(j)
            if a != b and not windows[a] & windows[b]:  # a group holds one piece per window at most
                parent[a] = b
                windows[b] |= windows[a]
    order = torch.argsort(p.scores, descending=True, stable=True).tolist()
    groups: dict[int, list[int]] = {}
    for i in order:
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def _union(p: Pieces, group: list[int]) -> tuple[list[int], Tensor]:
    rects = [p.rects[i].tolist() for i in group if _area(p.rects[i].tolist()) > 0]  # type: ignore[index]
    if not rects:
        return [0, 0, 0, 0], torch.zeros((0, 0), dtype=torch.bool, device=p.boxes.device)
    r = [
        min(q[0] for q in rects),
        min(q[1] for q in rects),
        max(q[2] for q in rects),
        max(q[3] for q in rects),
    ]
    out = torch.zeros((r[3] - r[1], r[2] - r[0]), dtype=torch.bool, device=p.boxes.device)
    for i in group:
        q = p.rects[i].tolist()  # type: ignore[index]
        if _area(q) > 0:
            out[q[1] - r[1] : q[3] - r[1], q[0] - r[0] : q[2] - r[0]] |= p.crops[i]  # type: ignore[index]
    return r, out


def merge_pieces(pieces: Pieces, *, mode: str = "merge", thresh: float = 0.5, metric: str = "iou") -> Pieces:
    """Join (`merge`) or reduce to their best piece (`nms`) the groups of matching pieces (module
    docstring); the result is best first."""
    if mode not in MERGE_MODES:
        raise UserError(f"tile merge must be one of {', '.join(MERGE_MODES)}, got {mode!r}")
    groups = _groups(pieces, thresh=thresh, metric=metric)
    best = pieces.take([g[0] for g in groups]) if groups else pieces.take([])
    if mode == "nms":
        return best
    for k, group in enumerate(groups):
        if len(group) == 1:
            continue
        members = pieces.boxes[group]
        best.boxes[k] = torch.cat([members[:, :2].amin(dim=0), members[:, 2:].amax(dim=0)])
        if pieces.crops is not None and best.crops is not None and best.rects is not None:
            rect, crop = _union(pieces, group)
            best.rects[k] = torch.tensor(rect, dtype=torch.int64, device=best.rects.device)
            best.crops[k] = crop
    return best


def assemble(pieces: Pieces, *, image_size: tuple[int, int]) -> Detections:
    """Pieces -> Detections of the image (height, width), best first, masks kept as `MaskCrops`
    (no (D, H, W) planes unless `masks` is read). Tiled detections have no `mask_probs` and
    `proposal_index` (they belong to a tile's frame and proposals, and a merged one to several)."""
    order = torch.argsort(pieces.scores, descending=True, stable=True).tolist()
    p = pieces.take(order)
    masks = None
    if p.crops is not None and p.rects is not None:
        masks = MaskCrops(list(p.crops), p.rects[:, :2].clone(), (int(image_size[0]), int(image_size[1])))
    return Detections(boxes=p.boxes, scores=p.scores, labels=p.labels, masks=masks, keypoints=p.keypoints)


def predict_tiled(
    run: Callable[[list[Tensor]], list[Detections]],
    image: Tensor,
    settings: TileSettings,
    *,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> Detections:
    """Tiled inference on one (3, H, W) image: `run` (images -> Detections, e.g. the model's
    predict with the call's options) on batches of `batch_size` tiles, then on the whole image with
    `settings.full_image`; pieces shifted, matched and merged. `progress(n)` after each batch."""
    h, w = int(image.shape[-2]), int(image.shape[-1])
    tiles = tile_grid(h, w, size=settings.size, overlap=settings.overlap).tolist()
    parts: list[Pieces] = []
    for start in range(0, len(tiles), batch_size):
        chunk = tiles[start : start + batch_size]
        crops = [image[:, y0:y1, x0:x1] for x0, y0, x1, y1 in chunk]
        for window, det in zip(chunk, run(crops)):
            parts.append(shift_pieces(det, window=tuple(window)))
        if progress is not None:
            progress(len(chunk))
    if settings.full_image:
        parts.append(shift_pieces(run([image])[0], window=(0, 0, w, h)))
    merged = merge_pieces(
        Pieces.cat(parts), mode=settings.merge, thresh=settings.thresh, metric=settings.metric
    )
    return assemble(merged, image_size=(h, w))
