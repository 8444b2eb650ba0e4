"""Anchors (Faster R-CNN §3.1): at every feature-map location of level l, A = |sizes_l| × |ratios| boxes.

An anchor of size s and aspect ratio r (height / width) has width s / sqrt(r) and height s * sqrt(r),
centred on the location's top-left image pixel (x = j * stride, y = i * stride), with corners
rounded to integers as in Detectron and torchvision (or exact, as detectron2: `round_corners=False`).

Output per level: (H_l * W_l * A, 4) in the order (row, column, anchor), the order in which the RPN
head's (N, A, H, W) outputs are flattened.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .traceable import tracing


def cell_anchors(
    sizes: tuple[float, ...], aspect_ratios: tuple[float, ...], *, rounded: bool = True
) -> Tensor:
    """(A, 4) anchors centred on (0, 0); ordered by aspect ratio, then size. `rounded=False`:
    detectron2's exact corners, w = sqrt(s^2 / r), h = r * w computed in float64 (its arithmetic)."""
    if not rounded:
        cells = []
        for ratio in aspect_ratios:
            for size in sizes:
                w = math.sqrt(size * size / ratio)
                h = ratio * w
                cells.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
        return torch.tensor(cells, dtype=torch.float32)
    scales = torch.as_tensor(sizes, dtype=torch.float32)
    ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
    h_ratios = torch.sqrt(ratios)
    w_ratios = 1 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).view(-1)
    hs = (h_ratios[:, None] * scales[None, :]).view(-1)
    return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()


class AnchorGenerator(nn.Module):
    """Anchors for every FPN level.

    `image_size_strides=True` reproduces torchvision, whose stride on a level is
    padded_image_size // feature_size: on P6 this is not 64 when the padded size is an odd
    multiple of 32 (e.g. 800 // 13 = 61). False uses the true strides given.
    """

    def __init__(
        self,
        *,
        sizes: tuple[tuple[float, ...], ...],
        aspect_ratios: tuple[float, ...],
        strides: tuple[int, ...],
        image_size_strides: bool = False,
        round_corners: bool = True,
    ):
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(f"{len(sizes)} anchor size groups for {len(strides)} feature levels")
        self.strides = tuple(strides)
        self.image_size_strides = image_size_strides
        self.cell_anchors = [cell_anchors(s, aspect_ratios, rounded=round_corners) for s in sizes]
        self._cache: dict = {}

    @property
    def num_anchors_per_location(self) -> int:
        return int(self.cell_anchors[0].shape[0])

    def level_strides(self, feature_sizes: list[tuple], padded_size: tuple) -> list[tuple]:
        """(y, x) stride of each level; sizes may be ints or 0-dim tensors (traced sizes)."""
        if self.image_size_strides:
            return [(padded_size[0] // h, padded_size[1] // w) for h, w in feature_sizes]
        return [(s, s) for s in self.strides]

    def grid_anchors(self, feature_sizes: list[tuple], padded_size: tuple, device) -> list[Tensor]:
        """(H_l * W_l * A, 4) anchors per level for the given (H_l, W_l) feature sizes and padded
        input size; the sizes may be ints or 0-dim int64 tensors (graph values while tracing)."""
        anchors = []
        strides = self.level_strides(feature_sizes, padded_size)
        for (h, w), (stride_y, stride_x), base in zip(feature_sizes, strides, self.cell_anchors):
            shifts_x = torch.arange(w, dtype=torch.int32, device=device) * stride_x
            shifts_y = torch.arange(h, dtype=torch.int32, device=device) * stride_y
            shift_x = shifts_x[None, :].expand(h, w).reshape(-1)
            shift_y = shifts_y[:, None].expand(h, w).reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1).to(torch.int32)
            # (H*W, 1, 4) + (1, A, 4) -> (H*W*A, 4)
            anchors.append((shifts.view(-1, 1, 4) + base.to(device).view(1, -1, 4)).reshape(-1, 4))
        return anchors

    def forward(self, feature_sizes: list[tuple], padded_size: tuple, device) -> list[Tensor]:
        """`grid_anchors`, cached by size in eager mode (not while tracing: sizes are graph values)."""
        if tracing():
            return self.grid_anchors(feature_sizes, padded_size, device)
        key = (tuple(feature_sizes), tuple(padded_size), str(device))
        if key in self._cache:
            return self._cache[key]
        anchors = self.grid_anchors(feature_sizes, padded_size, device)
        if len(self._cache) > 64:
            self._cache.clear()
        self._cache[key] = anchors
        return anchors
