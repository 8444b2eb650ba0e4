"""Drawing: instance overlays (detections or ground truth) with Pillow; precision-recall plots (matplotlib).

Overlays: every instance gets a distinct colour (golden-ratio hue steps, so instance i always has
the same colour), its mask is blended into the image with opacity `alpha` (all masks in one numpy
pass; where masks overlap the earlier instance, i.e. the higher score, is on top), its box is
outlined 2 px wide and a label "name score" is written on a filled box of the instance colour, in
black or white, whichever has the higher WCAG contrast ratio with it (so labels read the same on dark
and light images). Keypoints (of a model with the keypoint branch, or of ground truth) are drawn in
the instance colour: the skeleton's lines (`skeleton`: 1-based index pairs, COCO's convention, e.g.
from `maskrcnn.data.keypoint_meta.keypoint_skeleton`) 2 px wide between two shown keypoints, then
each shown keypoint as a disc of radius 3 px outlined in black or white (as the labels' text).
Shown: ground-truth keypoints that are labelled (v > 0); predicted ones scoring above
`keypoint_thresh` (all by default). Pixels outside every mask and away from the outlines, labels
and keypoints keep their exact original values.
"""

from __future__ import annotations

import colorsys
import os
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .inputs import as_rgb_uint8
from .structures import Detections, MaskCrops, Targets

__all__ = [
    "draw_detections",
    "draw_pr_curves",
    "draw_targets",
    "instance_colors",
    "relative_luminance",
    "text_color_for",
    "to_rgb_array",
]

ImageLike = Union[torch.Tensor, np.ndarray, Image.Image, str, os.PathLike]
BOX_WIDTH = 2
KEYPOINT_LINE_WIDTH = 2
KEYPOINT_RADIUS = 3
_LABEL_PAD = 2


def instance_colors(n: int) -> np.ndarray:
    """(n, 3) uint8 colours, distinct and deterministic: hue steps by the golden ratio."""
    colors = [colorsys.hsv_to_rgb((0.13 + i * 0.618033988749895) % 1.0, 0.75, 0.95) for i in range(n)]
    return np.round(np.array(colors, dtype=np.float64).reshape(n, 3) * 255).astype(np.uint8)


def relative_luminance(color: Sequence[int]) -> float:
    """WCAG 2 relative luminance of an sRGB colour (0 black .. 1 white)."""
    lin = [v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4 for v in (int(c) / 255 for c in color)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def text_color_for(background: Sequence[int]) -> tuple[int, int, int]:
    """Black or white, whichever has the higher WCAG contrast ratio against `background`."""
    lum = relative_luminance(background)
    return (0, 0, 0) if (lum + 0.05) / 0.05 >= 1.05 / (lum + 0.05) else (255, 255, 255)


def to_rgb_array(image: ImageLike) -> np.ndarray:
    """An image -> (H, W, 3) uint8: a (3, H, W) or (1, H, W) tensor (float in [0, 1], or uint8), or
    anything `maskrcnn.inputs.as_image_tensor` reads (file path, PIL image, numpy array), decoded the
    same way, so an overlay shows the pixels the model saw."""
    if not isinstance(image, torch.Tensor):
        return as_rgb_uint8(image)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image tensor must be (3, H, W) or (1, H, W), got {tuple(image.shape)}")
    array = image.detach().cpu().permute(1, 2, 0).numpy()
    if array.dtype != np.uint8:
        array = np.round(np.clip(array.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.ascontiguousarray(np.broadcast_to(array, (*array.shape[:2], 3)))


@lru_cache(maxsize=8)
def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _blend_masks(
    rgb: np.ndarray, masks: MaskCrops | np.ndarray, colors: np.ndarray, alpha: float
) -> np.ndarray:
    """Tint every masked pixel toward the colour of the first instance covering it (crops, or
    (n, H, W) bool planes, painted last to first, each from the original pixels, so the first
    one's tint stays)."""
    if isinstance(masks, np.ndarray):
        masks = MaskCrops.from_full(torch.from_numpy(np.ascontiguousarray(masks, dtype=bool)))
    out = rgb.copy()
    for i in reversed(range(len(masks))):
        crop = masks.crops[i].numpy()
        x0, y0 = (int(v) for v in masks.offsets[i])
        window = (slice(y0, y0 + crop.shape[0]), slice(x0, x0 + crop.shape[1]))
        pixels = rgb[window][crop].astype(np.float32)
        tinted = np.round(pixels + alpha * (colors[i].astype(np.float32) - pixels)).astype(np.uint8)
        out[window][crop] = tinted
    return out


def _paint_masks(
    canvas: Image.Image, rgb: np.ndarray, masks: MaskCrops, colors: np.ndarray, alpha: float
) -> None:
    """`_blend_masks` drawn onto `canvas` (a copy of `rgb`) crop by crop, in bands of rows: the
    same pixels, with no image-sized array beyond the canvas."""
    for i in reversed(range(len(masks))):
        crop = masks.crops[i].numpy()
        x0, y0 = (int(v) for v in masks.offsets[i])
        color = colors[i].astype(np.float32)
        for top in range(0, crop.shape[0], _PAINT_BAND):
            band = crop[top : top + _PAINT_BAND]
            if not band.any():
                continue
            pixels = rgb[y0 + top : y0 + top + band.shape[0], x0 : x0 + band.shape[1]].astype(np.float32)
            tinted = np.round(pixels + alpha * (color - pixels)).astype(np.uint8)
            canvas.paste(Image.fromarray(tinted), (x0, y0 + top), Image.fromarray(band))


_PAINT_BAND = 256  # rows of a crop tinted at a time


class _Keypoints:
    """Keypoints to draw: (n, J, 2) xy, (n, J) bool shown, and the skeleton's 1-based pairs."""

    def __init__(self, xy: np.ndarray, shown: np.ndarray, skeleton: Sequence[Sequence[int]]):
        j = xy.shape[1]
        for pair in skeleton:
            if len(pair) != 2 or not all(1 <= int(k) <= j for k in pair):
                raise ValueError(f"skeleton pair {list(pair)} is not two 1-based indices of {j} keypoints")
        self.xy, self.shown = xy, shown
        self.pairs = [(int(a) - 1, int(b) - 1) for a, b in skeleton]

    def draw(self, draw: ImageDraw.ImageDraw, i: int, color: np.ndarray) -> None:
        """Instance i's skeleton lines, then its points."""
        fill = tuple(color.tolist())
        xy, shown = self.xy[i], self.shown[i]
        for a, b in self.pairs:
            if shown[a] and shown[b]:
                draw.line((*xy[a], *xy[b]), fill=fill, width=KEYPOINT_LINE_WIDTH)
        r = KEYPOINT_RADIUS
        for (x, y), on in zip(xy, shown):
            if on:
                draw.ellipse((x - r, y - r, x + r, y + r), fill=fill, outline=text_color_for(color), width=1)


def _draw_instances(
    image: ImageLike,
    boxes: np.ndarray,
    masks: Optional[MaskCrops],
    texts: list[str],
    alpha: float,
    keypoints: Optional[_Keypoints] = None,
) -> Image.Image:
    rgb = to_rgb_array(image)
    h, w = rgb.shape[:2]
    n = len(boxes)
    colors = instance_colors(n)
    canvas = Image.fromarray(rgb)
    if masks is not None and len(masks):
        if tuple(masks.image_size) != (h, w):
            height, width = masks.image_size
            raise ValueError(f"masks are {height}x{width} but the image is {h}x{w}")
        _paint_masks(canvas, rgb, masks, colors, alpha)
    del rgb
    draw = ImageDraw.Draw(canvas)
    font = _font(max(10, min(h, w) // 36))
    # Lowest-ranked first, so the best instance's outline and label end up on top.
    for i in reversed(range(n)):
        x1, y1, x2, y2 = (int(round(float(v))) for v in boxes[i])
        x1, y1 = max(0, min(x1, w - 1)), max(0, min(y1, h - 1))
        x2, y2 = max(x1, min(x2 - 1, w - 1)), max(y1, min(y2 - 1, h - 1))
        draw.rectangle((x1, y1, x2, y2), outline=tuple(colors[i].tolist()), width=BOX_WIDTH)
    if keypoints is not None:
        for i in reversed(range(n)):
            keypoints.draw(draw, i, colors[i])
    for i in reversed(range(n)):
        if texts[i]:
            _draw_label(draw, texts[i], boxes[i], colors[i], font, w, h)
    return canvas


def _draw_label(
    draw: ImageDraw.ImageDraw, text: str, box: np.ndarray, color: np.ndarray, font: Any, w: int, h: int
) -> None:
    """Label on a filled box just above the box (inside its top edge when there is no room)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    lw, lh = right - left + 2 * _LABEL_PAD, bottom - top + 2 * _LABEL_PAD
    x = max(0, min(int(round(float(box[0]))), w - lw))
    y = int(round(float(box[1]))) - lh
    if y < 0:
        y = max(0, min(int(round(float(box[1]))), h - lh))
    draw.rectangle((x, y, x + lw - 1, y + lh - 1), fill=tuple(color.tolist()))
    draw.text((x + _LABEL_PAD - left, y + _LABEL_PAD - top), text, fill=text_color_for(color), font=font)


def _name(label: int, class_names: Optional[Sequence[str]]) -> str:
    if class_names is not None and 1 <= label <= len(class_names):
        return str(class_names[label - 1])
    return f"class {label}"


def _crops_of(masks: Optional[torch.Tensor | MaskCrops]) -> Optional[MaskCrops]:
    """Masks to draw, as CPU crops: (n, H, W) planes (views of them) or crops; None when there are none."""
    if masks is None or len(masks) == 0:
        return None
    if isinstance(masks, MaskCrops):
        return masks.to("cpu")
    return MaskCrops.from_full(masks.detach().cpu())


def _keypoints_of(
    keypoints: Optional[torch.Tensor], skeleton: Sequence[Sequence[int]], threshold: Optional[float]
) -> Optional[_Keypoints]:
    """(n, J, 3) keypoints -> what to draw: those whose third value (v, or a score) is above
    `threshold`, all of them when it is None."""
    if keypoints is None:
        return None
    array = keypoints.detach().cpu().to(torch.float64).numpy()
    shown = np.ones(array.shape[:2], dtype=bool) if threshold is None else array[..., 2] > threshold
    return _Keypoints(array[..., :2], shown, skeleton)


def draw_detections(
    image: ImageLike,
    detections: Detections,
    *,
    class_names: Optional[Sequence[str]] = None,
    score_thresh: float = 0.0,
    alpha: float = 0.5,
    skeleton: Sequence[Sequence[int]] = (),
    keypoint_thresh: Optional[float] = None,
) -> Image.Image:
    """Overlay detections (masks, boxes, "name score" labels, keypoints and their `skeleton`) on
    `image`; returns a new RGB image. `keypoint_thresh`: draw only keypoints scoring above it."""
    shown = detections.select(detections.scores >= score_thresh).to("cpu")
    labels, scores = shown.labels.tolist(), shown.scores.detach().tolist()
    texts = [f"{_name(int(lab), class_names)} {s:.2f}" for lab, s in zip(labels, scores)]
    keypoints = _keypoints_of(shown.keypoints, skeleton, keypoint_thresh)
    boxes = shown.boxes.detach().numpy()
    return _draw_instances(image, boxes, _crops_of(shown.mask_crops), texts, alpha, keypoints)


def draw_targets(
    image: ImageLike,
    targets: Targets,
    class_names: Optional[Sequence[str]] = None,
    *,
    alpha: float = 0.5,
    skeleton: Sequence[Sequence[int]] = (),
) -> Image.Image:
    """Overlay ground truth (masks, boxes, class-name labels, labelled keypoints (v > 0) and their
    `skeleton`) on `image`; returns a new RGB image."""
    targets = Targets.from_any(targets)
    texts = [_name(int(lab), class_names) for lab in targets.labels.cpu().tolist()]
    boxes = targets.boxes.detach().cpu().numpy()
    keypoints = _keypoints_of(targets.keypoints, skeleton, 0.0)
    return _draw_instances(image, boxes, _crops_of(targets.masks), texts, alpha, keypoints)


# ---- precision-recall plot -------------------------------------------------------------------------


def draw_pr_curves(metrics: dict, *, panel_size: tuple[int, int] = (460, 380)) -> Image.Image:
    """The precision-recall figure of `maskrcnn.plots.pr_curves_figure` (matplotlib) as a PIL image,
    one `panel_size` (width, height pixels) panel per IoU type."""
    import io

    from .plots import pr_curves_figure, save_png

    buffer = io.BytesIO()
    save_png(pr_curves_figure(metrics, panel_size=panel_size), buffer)
    buffer.seek(0)
    with Image.open(buffer) as im:
        return im.convert("RGB")
