"""Synthetic, deterministic "shapes" dataset: squares, circles and triangles on noisy backgrounds.

Item i is a pure function of (seed, i, image_size, max_instances, keypoints): it is regenerated on
demand in any process from `numpy.random.default_rng([seed, i])`, so nothing is stored. Shapes may
overlap; later shapes occlude earlier ones and the masks hold the visible pixels only. A new shape
is rejected when it would hide too much of an earlier one (fewer than `min_visible_area` pixels or
less than half of its area left visible), so every painted shape is a labelled instance.

Keypoint variant (`keypoints=True`, the keypoint demo's data): the corners of the polygons are
keypoints. One model has one keypoint count, so every instance has the same J = 4 named keypoints,
one per direction from the shape's centre: `top_corner`, `right_corner`, `bottom_corner`,
`left_corner`, the corner whose angle around the centre lies within 45° of straight up, right, down,
left. A square has one corner in each of the four sectors; a triangle's corners are 120° apart, so
it has three, and the fourth keypoint is unlabelled (x, y, v) = (0, 0, 0); a circle has none (all
unlabelled, so COCO keypoint AP ignores circles). Rotations are drawn so that every corner lies at
least `CORNER_MARGIN_DEG` from a sector boundary: which corner is which is never a coin toss. Only
corners one can see are labelled (v = 2): a corner covered by a shape painted later, or outside the
image, is unlabelled (v = 0), since an instance's box is that of its visible pixels and a hidden
corner often lies outside it (no COCO v = 1 here). A corner is where the polygon's vertex is,
moved into the instance's box (the box of the pixels whose centres are inside the polygon ends up
to a pixel short of a sharp vertex: median 0.27 px); a vertex more than `CORNER_SLACK_PX` outside
the box (a shape painted later cuts the corner off) is unlabelled. A horizontal flip maps the right
sector onto the left one and keeps top and bottom, so the flip map is the names' left_/right_
pair. `KEYPOINT_SKELETON` joins the corners around the outline and across (for a triangle, the
lines that reach its unlabelled keypoint are not drawn, and the remaining ones outline it).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from maskrcnn.errors import UserError
from maskrcnn.ops.boxes import masks_to_boxes
from maskrcnn.structures import Sample, Targets

__all__ = ["KEYPOINT_NAMES", "KEYPOINT_SKELETON", "ShapesDataset"]

CLASS_NAMES = ["square", "circle", "triangle"]
KEYPOINT_NAMES = ("top_corner", "right_corner", "bottom_corner", "left_corner")
# 1-based pairs (COCO's convention): the four sides of a square, then its two diagonals
KEYPOINT_SKELETON = ((1, 2), (2, 3), (3, 4), (4, 1), (1, 3), (2, 4))
CORNER_MARGIN_DEG = 10.0
CORNER_SLACK_PX = 1.5


def _convex_polygon_mask(vertices: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pixels whose centre lies inside a convex polygon given as (V, 2) xy vertices."""
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    area2 = 0.0
    for k in range(len(vertices)):
        (x0, y0), (x1, y1) = vertices[k], vertices[(k + 1) % len(vertices)]
        area2 += x0 * y1 - x1 * y0
    sign = 1.0 if area2 >= 0 else -1.0
    inside = np.ones((h, w), dtype=bool)
    for k in range(len(vertices)):
        (x0, y0), (x1, y1) = vertices[k], vertices[(k + 1) % len(vertices)]
        inside &= sign * ((x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0)) >= 0
    return inside


def _vertices(kind: int, cx: float, cy: float, size: float, angle: float) -> np.ndarray | None:
    """(V, 2) xy corners of a square (kind 0) or triangle (kind 2); None for a circle (kind 1)."""
    if kind == 1:
        return None
    n = 4 if kind == 0 else 3
    radius = size / 2 * (math.sqrt(2) if kind == 0 else 1.15)
    angles = angle + 2 * math.pi * np.arange(n) / n
    return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)


def _shape_mask(kind: int, cx: float, cy: float, size: float, angle: float, h: int, w: int) -> np.ndarray:
    vertices = _vertices(kind, cx, cy, size, angle)
    if vertices is None:  # circle of diameter `size`
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= (size / 2) ** 2
    return _convex_polygon_mask(vertices, h, w)


def corner_angle(kind: int, angle: float) -> float:
    """A rotation `angle` (radians, uniform over a turn) mapped into the rotations whose corners all
    lie at least CORNER_MARGIN_DEG from the sector boundaries (45° + k·90°), continuously and keeping
    its turn. Square corners are 90° apart, one per sector: the offset of the corners from the sector
    centres, in [-45°, 45°), is squeezed into [-(45 - margin), 45 - margin]. Triangle corners sit at
    offsets a, a + 30°, a + 60° (mod 90°) from the centres; the boundary must fall in the 30° gap
    between a + 60° and a + 90°, so a (mod 90°) is squeezed into [55°, 65°] for a 10° margin."""
    degrees, margin = math.degrees(angle), CORNER_MARGIN_DEG
    if kind == 0:
        offset = (degrees + 45.0) % 90.0 - 45.0
        return math.radians(degrees - offset + offset * (45.0 - margin) / 45.0)
    if kind == 2:
        phase = degrees % 90.0
        low, high = 45.0 + margin, 75.0 - margin
        return math.radians(degrees - phase + low + phase * (high - low) / 90.0)
    return angle


def corner_keypoints(vertices: np.ndarray | None, hidden_by: np.ndarray, h: int, w: int) -> np.ndarray:
    """(4, 3) keypoints (x, y, v) of a shape's corners by sector (see the module docstring).
    `hidden_by`: (h, w) bool, the pixels of the shapes painted over this one; a corner there or
    outside the image stays unlabelled (0, 0, 0)."""
    out = np.zeros((len(KEYPOINT_NAMES), 3), dtype=np.float32)
    if vertices is None:
        return out
    centre = vertices.mean(axis=0)
    for x, y in vertices:
        degrees = math.degrees(math.atan2(y - centre[1], x - centre[0]))  # image axes: 90° is down
        slot = (int(round(degrees / 90.0)) + 1) % 4  # right 0 -> 1, down 1 -> 2, left 2 -> 3, up -1 -> 0
        if 0 <= x < w and 0 <= y < h and not hidden_by[int(y), int(x)]:
            out[slot] = (x, y, 2.0)
    return out


def _background(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A colour gradient plus noise, and its mean colour."""
    base = rng.uniform(0.0, 1.0, size=3)
    direction = rng.uniform(0.0, 2 * math.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    ramp = (np.cos(direction) * xs / max(w, 1) + np.sin(direction) * ys / max(h, 1))[..., None]
    tint = rng.uniform(-0.25, 0.25, size=3)
    image = base + ramp * tint
    return image, base + 0.5 * tint


def _distinct_color(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    color = rng.uniform(0.0, 1.0, size=3)
    for _ in range(32):
        if np.abs(color - avoid).sum() >= 0.6:
            break
        color = rng.uniform(0.0, 1.0, size=3)
    return color


class ShapesDataset(Dataset):
    """`num_images` synthetic images of size `image_size` = (h, w) with 1..max_instances shapes."""

    def __init__(
        self,
        num_images: int,
        *,
        seed: int = 0,
        image_size: tuple[int, int] = (128, 128),
        max_instances: int = 4,
        min_visible_area: int = 40,
        noise: float = 0.04,
        keypoints: bool = False,
    ) -> None:
        if num_images < 0 or seed < 0 or max_instances < 1 or min(image_size) < 16:
            raise UserError(
                f"ShapesDataset needs num_images >= 0, seed >= 0, max_instances >= 1 and sides >= 16, "
                f"got {num_images}, {seed}, {max_instances}, {image_size}"
            )
        self.num_images = int(num_images)
        self.seed = int(seed)
        self.height, self.width = int(image_size[0]), int(image_size[1])
        self.max_instances = int(max_instances)
        self.min_visible_area = int(min_visible_area)
        self.noise = float(noise)
        self.keypoints = bool(keypoints)
        # keypoint metadata (maskrcnn.data.dataset.KeypointMetadata; 0 / empty without keypoints)
        self.num_keypoints = len(KEYPOINT_NAMES) if keypoints else 0
        self.keypoint_names: list[str] = list(KEYPOINT_NAMES) if keypoints else []
        self.skeleton: list[tuple[int, int]] = list(KEYPOINT_SKELETON) if keypoints else []
        self.class_names: list[str] = list(CLASS_NAMES)
        self.category_ids: list[int] = [1, 2, 3]
        self.image_ids: list[int] = list(range(self.num_images))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return self.num_images

    def image_size(self, index: int) -> tuple[int, int]:
        return self.height, self.width

    def file_name(self, index: int) -> str:
        return f"shapes_{self.seed}_{index:06d}.png"

    def _place(self, rng: np.random.Generator) -> list[tuple[int, np.ndarray, np.ndarray | None]]:
        """Choose shapes; returns (class index, full mask, corners or None) in painting order."""
        h, w = self.height, self.width
        wanted = int(rng.integers(1, self.max_instances + 1))
        placed: list[tuple[int, np.ndarray, np.ndarray | None]] = []
        visible: list[np.ndarray] = []
        for _ in range(10 * wanted):
            if len(placed) == wanted:
                break
            kind = int(rng.integers(0, 3))
            size = rng.uniform(0.15, 0.45) * min(h, w)
            cx = rng.uniform(size / 2, w - size / 2)
            cy = rng.uniform(size / 2, h - size / 2)
            angle = rng.uniform(0, 2 * math.pi)
            if self.keypoints:
                angle = corner_angle(kind, angle)
            mask = _shape_mask(kind, cx, cy, size, angle, h, w)
            if mask.sum() < self.min_visible_area:
                continue
            after = [v & ~mask for v in visible]
            if any(
                a.sum() < max(self.min_visible_area, 0.5 * full.sum())
                for a, (_, full, _) in zip(after, placed)
            ):
                continue
            visible = after + [mask]
            placed.append((kind, mask, _vertices(kind, cx, cy, size, angle)))
        return placed

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.num_images:
            raise IndexError(f"ShapesDataset index {index} out of range [0, {self.num_images})")
        h, w = self.height, self.width
        rng = np.random.default_rng([self.seed, index])
        image, bg_color = _background(rng, h, w)
        placed = self._place(rng)

        visible = np.zeros((len(placed), h, w), dtype=bool)
        covered = np.zeros((h, w), dtype=bool)
        for k in range(len(placed) - 1, -1, -1):  # last painted is on top
            visible[k] = placed[k][1] & ~covered
            covered |= placed[k][1]
        for _kind, mask, _ in placed:
            color = _distinct_color(rng, bg_color)
            shade = rng.uniform(-0.08, 0.08, size=(h, w, 1))
            image = np.where(mask[..., None], color + shade * 0.5, image)
        image = image + rng.normal(0.0, self.noise, size=image.shape)
        image = np.clip(image, 0.0, 1.0).astype(np.float32)

        masks = torch.from_numpy(visible.astype(np.uint8))
        labels = torch.tensor([kind + 1 for kind, _, _ in placed], dtype=torch.int64)
        boxes = masks_to_boxes(masks)
        keypoints = torch.from_numpy(self._keypoints(placed, boxes.numpy())) if self.keypoints else None
        targets = Targets(boxes, labels, masks, keypoints)
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return Sample(image_t, targets, index, self.file_name(index), crowd_boxes=torch.zeros((0, 4)))

    def _keypoints(
        self, placed: list[tuple[int, np.ndarray, np.ndarray | None]], boxes: np.ndarray
    ) -> np.ndarray:
        """(G, 4, 3) corner keypoints of the shapes with (G, 4) boxes (see the module docstring)."""
        h, w = self.height, self.width
        out = np.zeros((len(placed), len(KEYPOINT_NAMES), 3), dtype=np.float32)
        above = np.zeros((h, w), dtype=bool)  # the shapes painted after shape k
        for k in range(len(placed) - 1, -1, -1):
            out[k] = corner_keypoints(placed[k][2], above, h, w)
            above = above | placed[k][1]
        xy = out[..., :2]
        inside = np.clip(xy, boxes[:, None, :2], boxes[:, None, 2:])
        far = np.abs(xy - inside).max(axis=-1) > CORNER_SLACK_PX
        out[..., :2] = inside
        out[far | (out[..., 2] == 0)] = 0.0
        return out

    def load_targets(self, index: int) -> tuple[Targets, torch.Tensor]:
        sample = self[index]
        return sample.targets, sample.crowd_boxes

    def __repr__(self) -> str:
        kp = ", keypoints=True" if self.keypoints else ""
        size = f"({self.height}, {self.width})"
        return f"ShapesDataset({self.num_images}, seed={self.seed}, image_size={size}{kp})"
