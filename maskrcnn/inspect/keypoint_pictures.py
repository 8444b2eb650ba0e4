"""The keypoint branch's picture: the S×S heatmaps (56×56 in the paper) of the most confident
detections, one tile per keypoint, next to the detection with its decoded keypoints and skeleton.

Each tile shows the heatmap as the branch is trained to read it: the spatial softmax of its S²
logits (the keypoint's probability of lying in each cell), scaled to its own maximum; the cross
marks the decoded keypoint (the arg-max of the heatmap resized to the box, see
`maskrcnn.model.keypoint_branch`), its score is the logit there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..visualize import _name, draw_detections, instance_colors
from . import canvas
from .canvas import Picture

if TYPE_CHECKING:
    from .stages import Inspection

__all__ = ["draw_keypoint_heatmaps"]

SHOW_KEYPOINT_DETECTIONS = 4  # detections in the heatmap picture
TILE = 112  # pixels of a heatmap tile (2 px per cell of a 56×56 map)
TILE_COLUMNS = 6  # tiles per row
CROP_HEIGHT = 240  # pixels of the detection crop


def heatmap_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(..., S, S) logits -> their spatial softmax (each map sums to 1)."""
    flat = logits.flatten(-2).float().softmax(dim=-1)
    return flat.reshape(logits.shape)


def _tile(probs: np.ndarray, marker: tuple[float, float], title: str) -> Image.Image:
    """One heatmap, scaled to its maximum, with a cross at `marker` (cell coordinates)."""
    s = probs.shape[0]
    heat = canvas.colormap(probs / max(float(probs.max()), 1e-12), canvas.OBJECTNESS_STOPS)
    image = Image.fromarray(heat).resize((TILE, TILE), Image.NEAREST)
    x, y = (v * TILE / s for v in marker)
    draw = ImageDraw.Draw(image)
    draw.line((x - 6, y, x + 6, y), fill=canvas.WHITE, width=3)
    draw.line((x, y - 6, x, y + 6), fill=canvas.WHITE, width=3)
    draw.line((x - 5, y, x + 5, y), fill=canvas.BLACK, width=1)
    draw.line((x, y - 5, x, y + 5), fill=canvas.BLACK, width=1)
    return canvas.titled(image, title, size=11)


def _crop(ins: Inspection, j: int) -> Image.Image:
    """The original image around detection j, drawn with its keypoints and skeleton."""
    det = ins.detections
    one = det.select(torch.tensor([j]))
    drawn = draw_detections(ins.image, one, class_names=ins.class_names, skeleton=ins.skeleton)
    x1, y1, x2, y2 = det.boxes[j].tolist()
    pad_x, pad_y = 0.15 * (x2 - x1) + 4, 0.15 * (y2 - y1) + 4
    h, w = ins.original_size
    box = (
        max(0, int(x1 - pad_x)),
        max(0, int(y1 - pad_y)),
        min(w, int(x2 + pad_x) + 1),
        min(h, int(y2 + pad_y) + 1),
    )
    crop = drawn.crop(box)
    scale = min(CROP_HEIGHT / max(1, crop.height), 2 * CROP_HEIGHT / max(1, crop.width))
    return crop.resize(
        (max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.BILINEAR
    )


def _row(ins: Inspection, j: int, color: np.ndarray) -> tuple[Image.Image, dict]:
    """Detection j: its crop, then one tile per keypoint."""
    det = ins.detections
    probs = heatmap_probabilities(ins.keypoint_heatmaps[j]).numpy()
    logits = ins.keypoint_heatmaps[j]
    s = probs.shape[-1]
    x1, y1, x2, y2 = det.boxes[j].tolist()
    keypoints = det.keypoints[j]
    names = ins.keypoint_names or [f"keypoint {k + 1}" for k in range(len(keypoints))]
    tiles = []
    for k, (x, y, score) in enumerate(keypoints.tolist()):
        marker = ((x - x1) / max(x2 - x1, 1e-6) * s, (y - y1) / max(y2 - y1, 1e-6) * s)
        tiles.append(_tile(probs[k], marker, f"{names[k]} {score:.1f}"))
    label = f"#{j + 1} {_name(int(det.labels[j]), ins.class_names)} {float(det.scores[j]):.2f}"
    crop = canvas.titled(_crop(ins, j), label, size=14)
    maps = canvas.grid(tiles, TILE_COLUMNS, gap=4)
    row = Image.new("RGB", (crop.width + 12 + maps.width, max(crop.height, maps.height)), canvas.WHITE)
    row.paste(crop, (0, 0))
    row.paste(maps, (crop.width + 12, 0))
    ImageDraw.Draw(row).rectangle((0, 0, 3, crop.height - 1), fill=canvas.as_color(color))
    stats = {
        "rank": j + 1,
        "label": _name(int(det.labels[j]), ins.class_names),
        "keypoints": [[round(v, 2) for v in p] for p in keypoints.tolist()],
        "logit_max": [round(float(v), 3) for v in logits.flatten(1).max(dim=1).values],
        "peak_probability": [round(float(v), 4) for v in probs.reshape(len(probs), -1).max(axis=1)],
    }
    return row, stats


def draw_keypoint_heatmaps(ins: Inspection) -> Picture:
    title = "Keypoint heatmaps and decoded keypoints"
    det = ins.detections
    n = min(SHOW_KEYPOINT_DETECTIONS, len(det))
    if n == 0 or ins.keypoint_heatmaps is None:
        return (
            canvas.note("no detections above the score threshold"),
            title,
            "The model made no detections on this image.",
            {"shown": []},
        )
    colors = instance_colors(len(det))
    rows, stats = zip(*(_row(ins, j, colors[j]) for j in range(n)))
    s, count = ins.keypoint_heatmaps.shape[-1], ins.keypoint_heatmaps.shape[1]
    bar = canvas.colorbar(
        640, 0.0, 1.0, "probability / the map's maximum", canvas.OBJECTNESS_STOPS, fmt="{:.1f}"
    )
    caption = (
        f"For the {n} most confident detections: left, the detection on the original image with its "
        f"{count} decoded keypoints joined by the skeleton; right, one {s}×{s} heatmap per keypoint "
        f"(the grid covers the detection box): the spatial softmax of its logits, the keypoint's "
        f"probability of lying in each cell, scaled to the map's maximum. The cross is the decoded "
        f"keypoint (the arg-max of the heatmap resized to the box); the number after its name is its "
        f"score, the logit there."
    )
    return canvas.stack([bar, *rows], gap=14), title, caption, {"shown": list(stats)}
