"""Drawing primitives of `maskrcnn inspect`'s pictures, with Pillow: colour ramps, the faded
model-input image under the drawing, (dashed) box outlines, titled panels in grids and stacks,
legends, colour bars. Fonts, instance colours and labels come from maskrcnn.visualize.

Stage pictures show the model's input frame (the resized image, before padding), faded so that
coloured boxes stand out, at a display scale (`display_scale`) that enlarges small frames (up to
MAX_ENLARGE×) and shrinks big ones; every box and point is scaled with the image, and label fonts
are sized for the drawn size (`label_font`). Legends and colour bars are at least MIN_KEY_WIDTH
wide, whatever the picture's width. Every picture is a `Picture`: the image, a title, a caption
stating what is drawn and with which counts, and a part of `summary.json` holding the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

from ..visualize import _font

__all__ = [
    "BLACK",
    "GREY",
    "LOGIT_STOPS",
    "OBJECTNESS_STOPS",
    "WHITE",
    "Color",
    "Picture",
    "as_color",
    "boxes_list",
    "colorbar",
    "colormap",
    "display_scale",
    "faded",
    "frame_text",
    "grid",
    "label_font",
    "legend",
    "note",
    "number_format",
    "rect",
    "resized",
    "stack",
    "titled",
]

Color = tuple[int, int, int]
Picture = tuple[Image.Image, str, str, dict]  # image, title, caption, numbers for summary.json

# blue -> cyan -> green -> yellow -> red: readable on a faded photograph at every value
OBJECTNESS_STOPS = ((40, 90, 255), (0, 200, 230), (120, 230, 60), (255, 200, 0), (240, 30, 30))
# negative logits blue, 0 white (p = 0.5, the mask threshold), positive red
LOGIT_STOPS = ((33, 102, 172), (146, 197, 222), (247, 247, 247), (244, 165, 130), (178, 24, 43))
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (150, 150, 150)
MAX_ENLARGE = 4.0  # the most a small model input is enlarged for display
MIN_KEY_WIDTH = 360  # legends and colour bars are at least this wide (px)


def display_scale(width: int, target: int, *, shrink: bool = True) -> float:
    """The factor that draws a `width` px wide frame about `target` px wide: small frames enlarged
    (at most MAX_ENLARGE×), big ones shrunk, or kept 1:1 when not `shrink`."""
    scale = min(MAX_ENLARGE, target / max(1, width))
    return scale if shrink or scale >= 1.0 else 1.0


def frame_text(size: Sequence[int], scale: float) -> str:
    """The model input frame's size and the scale it is shown at, for captions."""
    return f"Model input frame ({size[0]}×{size[1]}, shown at {scale:.2f}×)"


def label_font(image: Image.Image) -> Any:
    """The font of box labels, sized for the drawn picture."""
    return _font(max(12, min(image.size) // 50))


def colormap(values: np.ndarray, stops: Sequence[Color] = OBJECTNESS_STOPS) -> np.ndarray:
    """Values in [0, 1] -> (N, 3) uint8 colours, linear between equally spaced stops."""
    t = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * (len(stops) - 1)
    low = np.minimum(np.floor(t).astype(int), len(stops) - 2)
    frac = (t - low)[..., None]
    table = np.asarray(stops, dtype=np.float64)
    return np.round(table[low] * (1 - frac) + table[low + 1] * frac).astype(np.uint8)


def as_color(color: Any) -> Color:
    """A colour (e.g. a row of `instance_colors`) as a tuple of Python ints, as Pillow takes it."""
    return tuple(int(v) for v in color)  # type: ignore[return-value]


def faded(pixels: np.ndarray, scale: float = 1.0) -> Image.Image:
    """(H, W, 3) uint8 pixels desaturated and darkened (so coloured boxes stand out), optionally
    rescaled."""
    x = pixels.astype(np.float32)
    gray = x.mean(axis=2, keepdims=True)
    return resized(Image.fromarray(np.round((0.35 * x + 0.65 * gray) * 0.55 + 20).astype(np.uint8)), scale)


def resized(image: Image.Image, scale: float) -> Image.Image:
    """`image` resized by `scale` (the same image when 1)."""
    if scale == 1.0:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))


def rect(
    draw: ImageDraw.ImageDraw, box: Sequence[float], color: Color, *, width: int = 1, dashed: bool = False
) -> None:
    """Outline of a (x1, y1, x2, y2) box; dashed: 6 px on, 4 px off. PIL clips what is outside."""
    x1, y1, x2, y2 = (float(v) for v in box)
    x2, y2 = max(x1, x2 - 1), max(y1, y2 - 1)
    if not dashed:
        draw.rectangle((x1, y1, x2, y2), outline=color, width=width)
        return
    for (ax, ay), (bx, by) in (
        ((x1, y1), (x2, y1)),
        ((x2, y1), (x2, y2)),
        ((x2, y2), (x1, y2)),
        ((x1, y2), (x1, y1)),
    ):
        length = max(abs(bx - ax), abs(by - ay))
        steps = np.arange(0.0, max(length, 1e-6), 10.0)
        for s in steps:
            e = min(s + 6.0, length)
            f0, f1 = s / max(length, 1e-6), e / max(length, 1e-6)
            draw.line(
                (ax + (bx - ax) * f0, ay + (by - ay) * f0, ax + (bx - ax) * f1, ay + (by - ay) * f1),
                fill=color,
                width=width,
            )


def titled(image: Image.Image, title: str, *, size: int = 15) -> Image.Image:
    """`image` under a white strip holding `title`."""
    font = _font(size)
    strip = size + 12
    out = Image.new("RGB", (image.width, image.height + strip), WHITE)
    ImageDraw.Draw(out).text((4, 5), title, fill=BLACK, font=font)
    out.paste(image, (0, strip))
    return out


def grid(panels: list[Image.Image], columns: int, *, gap: int = 10) -> Image.Image:
    """Panels in rows of `columns`, each in a cell as wide as the widest panel, on white."""
    columns = max(1, min(columns, len(panels)))
    rows = [panels[i : i + columns] for i in range(0, len(panels), columns)]
    cell_w = max(p.width for p in panels)
    heights = [max(p.height for p in row) for row in rows]
    out = Image.new(
        "RGB", (columns * cell_w + (columns - 1) * gap, sum(heights) + gap * (len(rows) - 1)), WHITE
    )
    y = 0
    for row, h in zip(rows, heights):
        for c, panel in enumerate(row):
            out.paste(panel, (c * (cell_w + gap), y))
        y += h + gap
    return out


def stack(images: list[Image.Image], *, gap: int = 6) -> Image.Image:
    """Images one under the other, left-aligned, on white."""
    out = Image.new(
        "RGB", (max(i.width for i in images), sum(i.height for i in images) + gap * (len(images) - 1)), WHITE
    )
    y = 0
    for image in images:
        out.paste(image, (0, y))
        y += image.height + gap
    return out


def legend(entries: list[tuple[Color, str]], width: int, *, outline_only: Sequence[bool] = ()) -> Image.Image:
    """A row of colour swatches with their texts (wrapping onto more rows when needed), at least
    MIN_KEY_WIDTH wide and as wide as its longest entry."""
    font = _font(14)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items = []
    for i, (color, text) in enumerate(entries):
        w = int(probe.textlength(text, font=font)) + 30
        items.append((color, text, w, i < len(outline_only) and outline_only[i]))
    width = max(width, MIN_KEY_WIDTH, *(item[2] + 16 for item in items))
    lines, line, used = [], [], 0
    for item in items:
        if line and used + item[2] > width - 8:
            lines.append(line)
            line, used = [], 0
        line.append(item)
        used += item[2] + 14
    lines.append(line)
    out = Image.new("RGB", (width, 24 * len(lines) + 6), WHITE)
    draw = ImageDraw.Draw(out)
    for r, items_in_line in enumerate(lines):
        x, y = 6, 6 + 24 * r
        for color, text, w, outline in items_in_line:
            if outline:
                draw.rectangle((x, y + 1, x + 17, y + 15), outline=color, width=3)
            else:
                draw.rectangle((x, y + 1, x + 17, y + 15), fill=color, outline=BLACK)
            draw.text((x + 24, y), text, fill=BLACK, font=font)
            x += w + 14
    return out


def colorbar(
    width: int, lo: float, hi: float, label: str, stops: Sequence[Color], *, fmt: str = "{:.3f}"
) -> Image.Image:
    """A labelled colour ramp from `lo` to `hi` (numbers written with `fmt`), at least
    MIN_KEY_WIDTH wide and wide enough for its label."""
    font = _font(14)
    left = int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(label, font=font)) + 16
    width = max(width, MIN_KEY_WIDTH, left + 200)
    out = Image.new("RGB", (width, 46), WHITE)
    draw = ImageDraw.Draw(out)
    bar_w = max(40, width - left - 16)
    ramp = colormap(np.linspace(0, 1, bar_w), stops)
    out.paste(Image.fromarray(np.repeat(ramp[None], 14, axis=0)), (left, 6))
    draw.rectangle((left - 1, 5, left + bar_w, 20), outline=BLACK)
    draw.text((6, 5), label, fill=BLACK, font=font)
    draw.text((left, 24), fmt.format(lo), fill=BLACK, font=font)
    draw.text((left + bar_w, 24), fmt.format(hi), fill=BLACK, font=font, anchor="ra")
    return out


def note(text: str, width: int = 640) -> Image.Image:
    """A grey box holding one line of text (a picture that has nothing to show)."""
    out = Image.new("RGB", (width, 60), (245, 245, 245))
    ImageDraw.Draw(out).text((16, 20), text, fill=BLACK, font=_font(16))
    return out


def number_format(lo: float, hi: float) -> str:
    """A number format with enough decimals to tell `lo` from `hi`."""
    digits = 3 if hi - lo <= 0 else min(6, max(3, int(np.ceil(-np.log10(hi - lo))) + 1))
    return f"{{:.{digits}f}}"


def boxes_list(boxes: Tensor) -> list[list[float]]:
    """(N, 4) boxes -> lists of numbers rounded to 0.01 px, for summary.json."""
    return [[round(float(v), 2) for v in b] for b in boxes.tolist()]
