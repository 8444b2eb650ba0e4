"""Synthetic, deterministic "shapes" dataset: squares, circles and triangles on noisy backgrounds.

Item i is a pure function of (seed, i, image_size, max_instances): it is regenerated on demand in
any process from `numpy.random.default_rng([seed, i])`, so nothing is stored. Shapes may overlap;
later shapes occlude earlier ones and the masks hold the visible pixels only. A new shape is
rejected when it would hide too much of an earlier one (fewer than `min_visible_area` pixels or
less than half of its area left visible), so every painted shape is a labelled instance.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from maskrcnn.errors import UserError
from maskrcnn.ops.boxes import masks_to_boxes
from maskrcnn.structures import Sample, Targets

__all__ = ["ShapesDataset"]

CLASS_NAMES = ["square", "circle", "triangle"]


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


def _shape_mask(kind: int, cx: float, cy: float, size: float, angle: float, h: int, w: int) -> np.ndarray:
    if kind == 1:  # circle of diameter `size`
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= (size / 2) ** 2
    n = 4 if kind == 0 else 3
    radius = size / 2 * (math.sqrt(2) if kind == 0 else 1.15)
    angles = angle + 2 * math.pi * np.arange(n) / n
    vertices = np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)
    return _convex_polygon_mask(vertices, h, w)


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

    def _place(self, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
        """Choose shapes; returns (class index, full mask) in painting order."""
        h, w = self.height, self.width
        wanted = int(rng.integers(1, self.max_instances + 1))
        placed: list[tuple[int, np.ndarray]] = []
        visible: list[np.ndarray] = []
        for _ in range(10 * wanted):
            if len(placed) == wanted:
                break
            kind = int(rng.integers(0, 3))
            size = rng.uniform(0.15, 0.45) * min(h, w)
            cx = rng.uniform(size / 2, w - size / 2)
            cy = rng.uniform(size / 2, h - size / 2)
            mask = _shape_mask(kind, cx, cy, size, rng.uniform(0, 2 * math.pi), h, w)
            if mask.sum() < self.min_visible_area:
                continue
            after = [v & ~mask for v in visible]
            if any(
                a.sum() < max(self.min_visible_area, 0.5 * full.sum()) for a, (_, full) in zip(after, placed)
            ):
                continue
            visible = after + [mask]
            placed.append((kind, mask))
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
        for _kind, mask in placed:
            color = _distinct_color(rng, bg_color)
            shade = rng.uniform(-0.08, 0.08, size=(h, w, 1))
            image = np.where(mask[..., None], color + shade * 0.5, image)
        image = image + rng.normal(0.0, self.noise, size=image.shape)
        image = np.clip(image, 0.0, 1.0).astype(np.float32)

        masks = torch.from_numpy(visible.astype(np.uint8))
        labels = torch.tensor([kind + 1 for kind, _ in placed], dtype=torch.int64)
        targets = Targets(masks_to_boxes(masks), labels, masks)
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        return Sample(image_t, targets, index, self.file_name(index), crowd_boxes=torch.zeros((0, 4)))

    def load_targets(self, index: int) -> tuple[Targets, torch.Tensor]:
        sample = self[index]
        return sample.targets, sample.crowd_boxes

    def __repr__(self) -> str:
        return f"ShapesDataset({self.num_images}, seed={self.seed}, image_size=({self.height}, {self.width}))"
