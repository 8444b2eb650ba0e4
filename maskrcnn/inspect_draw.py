"""Pictures of `maskrcnn inspect` (see maskrcnn.inspect), drawn with Pillow.

Stage pictures show the model's input frame (the resized image, before padding), faded so that
coloured boxes stand out; boxes are drawn 1:1 in that frame, or scaled with the image in the
multi-panel pictures. Every picture comes with a title, a caption stating what is drawn and with
which counts, and a part of `summary.json` holding the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from .ops.boxes import box_iou
from .structures import Detections
from .visualize import _draw_label, _font, draw_detections, instance_colors, text_color_for, to_rgb_array

if TYPE_CHECKING:
    from .inspect import Inspection

__all__ = ["colormap", "draw_all"]

Color = tuple[int, int, int]
SHOW_PROPOSALS = 150  # boxes drawn in the RPN pictures
SHOW_PER_LEVEL = 40  # proposals drawn per panel of the level picture
SHOW_NEGATIVES = 150  # negative anchors drawn (a random sample)
SHOW_REFINED = 15  # detections in the refinement picture
SHOW_MASKS = 8  # detections in the mask picture
SHOW_DETECTIONS = 20  # detections in the final picture
ANCHOR_LOCATIONS = 5  # sample locations per level in the anchor picture
MASK_CELL = 168  # pixels of a 28x28 logit map (6 px per cell)

# blue -> cyan -> green -> yellow -> red: readable on a faded photograph at every value
OBJECTNESS_STOPS = ((40, 90, 255), (0, 200, 230), (120, 230, 60), (255, 200, 0), (240, 30, 30))
# negative logits blue, 0 white (p = 0.5, the mask threshold), positive red
LOGIT_STOPS = ((33, 102, 172), (146, 197, 222), (247, 247, 247), (244, 165, 130), (178, 24, 43))
WHITE, BLACK, GREY = (255, 255, 255), (0, 0, 0), (150, 150, 150)


def colormap(values: np.ndarray, stops: Sequence[Color] = OBJECTNESS_STOPS) -> np.ndarray:
    """Values in [0, 1] -> (N, 3) uint8 colours, linear between equally spaced stops."""
    t = np.clip(np.asarray(values, dtype=np.float64), 0.0, 1.0) * (len(stops) - 1)
    low = np.minimum(np.floor(t).astype(int), len(stops) - 2)
    frac = (t - low)[..., None]
    table = np.asarray(stops, dtype=np.float64)
    return np.round(table[low] * (1 - frac) + table[low + 1] * frac).astype(np.uint8)


def _rgb(color: Any) -> Color:
    return tuple(int(v) for v in color)  # type: ignore[return-value]


def _faded(rgb: np.ndarray, scale: float = 1.0) -> Image.Image:
    """The image desaturated and darkened (so coloured boxes stand out), optionally rescaled."""
    x = rgb.astype(np.float32)
    gray = x.mean(axis=2, keepdims=True)
    image = Image.fromarray(np.round((0.35 * x + 0.65 * gray) * 0.55 + 20).astype(np.uint8))
    if scale != 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
    return image


def _rect(
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


def _titled(image: Image.Image, title: str, *, size: int = 15) -> Image.Image:
    """`image` under a white strip holding `title`."""
    font = _font(size)
    strip = size + 12
    out = Image.new("RGB", (image.width, image.height + strip), WHITE)
    ImageDraw.Draw(out).text((4, 5), title, fill=BLACK, font=font)
    out.paste(image, (0, strip))
    return out


def _grid(panels: list[Image.Image], columns: int, *, gap: int = 10) -> Image.Image:
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


def _stack(images: list[Image.Image], *, gap: int = 6) -> Image.Image:
    """Images one under the other, left-aligned, on white."""
    out = Image.new(
        "RGB", (max(i.width for i in images), sum(i.height for i in images) + gap * (len(images) - 1)), WHITE
    )
    y = 0
    for image in images:
        out.paste(image, (0, y))
        y += image.height + gap
    return out


def _legend(
    entries: list[tuple[Color, str]], width: int, *, outline_only: Sequence[bool] = ()
) -> Image.Image:
    """A row of colour swatches with their texts (wrapping onto more rows when needed)."""
    font = _font(14)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items = []
    for i, (color, text) in enumerate(entries):
        w = int(probe.textlength(text, font=font)) + 30
        items.append((color, text, w, i < len(outline_only) and outline_only[i]))
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


def _colorbar(
    width: int, lo: float, hi: float, label: str, stops: Sequence[Color], *, fmt: str = "{:.3f}"
) -> Image.Image:
    font = _font(14)
    out = Image.new("RGB", (width, 46), WHITE)
    draw = ImageDraw.Draw(out)
    left = int(draw.textlength(label, font=font)) + 16
    bar_w = max(40, width - left - 16)
    ramp = colormap(np.linspace(0, 1, bar_w), stops)
    out.paste(Image.fromarray(np.repeat(ramp[None], 14, axis=0)), (left, 6))
    draw.rectangle((left - 1, 5, left + bar_w, 20), outline=BLACK)
    draw.text((6, 5), label, fill=BLACK, font=font)
    draw.text((left, 24), fmt.format(lo), fill=BLACK, font=font)
    draw.text((left + bar_w, 24), fmt.format(hi), fill=BLACK, font=font, anchor="ra")
    return out


def _note(text: str, width: int = 640) -> Image.Image:
    out = Image.new("RGB", (width, 60), (245, 245, 245))
    ImageDraw.Draw(out).text((16, 20), text, fill=BLACK, font=_font(16))
    return out


def _name(label: int, names: Optional[Sequence[str]]) -> str:
    if names and 1 <= label <= len(names):
        return str(names[label - 1])
    return f"class {label}"


def _boxes_list(boxes: Tensor) -> list[list[float]]:
    return [[round(float(v), 2) for v in b] for b in boxes.tolist()]


# ---------------------------------------------------------------------------------- pictures


def draw_anchors(ins: Inspection) -> tuple[Image.Image, str, str, dict]:
    h, w = ins.input_size
    scale = min(1.0, 420 / w)
    a = int(ins.cell_anchors[0].shape[0])
    colors = instance_colors(a)
    per_ratio = max(1, a // len(ins.aspect_ratios))  # cell anchors: by aspect ratio, then size
    rng = np.random.default_rng(0)
    panels, levels = [], []
    for name, anchors, (fh, fw), (sy, sx), sizes in zip(
        ins.level_names, ins.anchors, ins.feature_sizes, ins.strides, ins.anchor_sizes
    ):
        inside = [(i, j) for i in range(fh) for j in range(fw) if i * sy < h and j * sx < w]
        picks = [(min(fh - 1, int(h / 2 / sy)), min(fw - 1, int(w / 2 / sx)))]
        extra = rng.choice(len(inside), size=min(ANCHOR_LOCATIONS - 1, len(inside)), replace=False)
        picks += [inside[int(k)] for k in extra]
        image = _faded(ins.input_rgb, scale)
        draw = ImageDraw.Draw(image)
        for i, j in picks:
            base = (i * fw + j) * a
            for k in range(a):
                _rect(draw, (anchors[base + k] * scale).tolist(), _rgb(colors[k]), width=2)
            cx, cy = j * sx * scale, i * sy * scale
            draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill=WHITE, outline=BLACK)
        title = (
            f"{name}: stride {sx}, {fh}x{fw} locations x {a} = {len(anchors):,} anchors, "
            f"size {'/'.join(f'{v:g}' for v in sizes)}"
        )
        panels.append(_titled(image, title, size=13))
        levels.append(
            {
                "level": name,
                "stride": [sy, sx],
                "feature_size": [fh, fw],
                "anchors": len(anchors),
                "sizes": sizes,
                "locations_drawn": len(picks),
            }
        )
    legend = _legend(
        [(_rgb(colors[k]), f"h/w = {ins.aspect_ratios[k // per_ratio]:g}") for k in range(a)]
        + [(WHITE, "location (anchor centre)")],
        panels[0].width,
    )
    panels.append(_titled(legend, "anchors at each location"))
    total = sum(len(x) for x in ins.anchors)
    caption = (
        f"Every location of every FPN level carries {a} anchors (one per aspect ratio); "
        f"{total:,} anchors in all. Each panel draws all {a} anchors at {ANCHOR_LOCATIONS} locations of "
        f"that level: the image centre and {ANCHOR_LOCATIONS - 1} random ones. Drawn on the model input "
        f"({h}×{w}, shown at {scale:.2f}×; padding to {ins.padded_size[0]}×{ins.padded_size[1]} not shown)."
    )
    return _grid(panels, 3), "Anchors per FPN level (a sample)", caption, {"levels": levels, "total": total}


def _objectness_picture(
    ins: Inspection, boxes: Tensor, scores: Tensor, lo: float, hi: float
) -> tuple[Image.Image, int]:
    order = torch.argsort(scores, descending=True)[:SHOW_PROPOSALS].flip(0)  # most confident drawn last
    image = _faded(ins.input_rgb)
    draw = ImageDraw.Draw(image)
    colors = colormap(((scores[order] - lo) / max(hi - lo, 1e-12)).numpy())
    for rank, (i, color) in enumerate(zip(order.tolist(), colors)):
        _rect(draw, boxes[i].tolist(), _rgb(color), width=2 if rank >= len(order) - 10 else 1)
    bar = _colorbar(
        min(image.width, 640), lo, hi, "objectness probability", OBJECTNESS_STOPS, fmt=_fmt(lo, hi)
    )
    return _stack([image, bar]), len(order)


def _fmt(lo: float, hi: float) -> str:
    """A number format with enough decimals to tell `lo` from `hi`."""
    digits = 3 if hi - lo <= 0 else min(6, max(3, int(np.ceil(-np.log10(hi - lo))) + 1))
    return f"{{:.{digits}f}}"


def draw_rpn(ins: Inspection) -> list[tuple[Image.Image, str, str, dict]]:
    pre, post = ins.pre_scores, ins.proposal_scores
    # one colour scale for both pictures: the range of the scores drawn in either
    shown = torch.cat([torch.sort(x, descending=True).values[:SHOW_PROPOSALS] for x in (pre, post)])
    lo = float(shown.min()) if len(shown) else 0.0
    hi = float(shown.max()) if len(shown) else 1.0
    h, w = ins.input_size
    pre_img, n_pre = _objectness_picture(ins, ins.pre_boxes, pre, lo, hi)
    post_img, n_post = _objectness_picture(ins, ins.proposal_boxes, post, lo, hi)
    per_level = {name: int((ins.pre_levels == i).sum()) for i, name in enumerate(ins.level_names)}
    pre_caption = (
        f"{len(pre):,} candidates enter NMS: on each level the {ins.pre_nms_topk} anchors with the highest "
        f"objectness, moved by their predicted deltas, clipped to the image, tiny and low-score boxes "
        f"dropped ({', '.join(f'{k} {v}' for k, v in per_level.items())}). The {n_pre} most confident are "
        f"drawn, coloured by objectness ({_fmt(lo, hi).format(lo)} blue to {_fmt(lo, hi).format(hi)} red), "
        f"the top 10 thicker. "
        f"Model input frame ({h}×{w})."
    )
    post_caption = (
        f"NMS at IoU {ins.nms_thresh:g} within each level, then the best {ins.post_nms_topk} per image: "
        f"{len(post):,} proposals remain of {len(pre):,}; they are what the box head sees. The {n_post} most "
        f"confident are drawn with the same colours as before NMS: overlapping near-duplicates are gone. "
        f"Model input frame ({h}×{w})."
    )
    stats = {
        "pre_nms": len(pre),
        "pre_nms_per_level": per_level,
        "post_nms": len(post),
        "drawn_pre": n_pre,
        "drawn_post": n_post,
        "color_range": [lo, hi],
    }
    return [
        (pre_img, "RPN proposals before NMS, by objectness", pre_caption, stats),
        (post_img, "RPN proposals after NMS, by objectness", post_caption, stats),
    ]


def draw_anchor_targets(ins: Inspection) -> tuple[Image.Image, str, str, dict]:
    t = ins.targets
    labels, matches = ins.anchor_labels, ins.anchor_matches
    anchors = ins.all_anchors
    g = len(t)
    colors = instance_colors(g)
    rgb = np.array(_faded(ins.input_rgb))
    masks = t.masks.numpy().astype(bool)
    for k in range(g):  # ground-truth masks, resized with the image, tinted
        rgb[masks[k]] = np.round(0.6 * rgb[masks[k]] + 0.4 * colors[k]).astype(np.uint8)
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    positive = torch.where(labels == 1)[0]
    negative = torch.where(labels == 0)[0]
    ignored = int((labels == -1).sum())
    rng = np.random.default_rng(0)
    shown_neg = rng.choice(len(negative), size=min(SHOW_NEGATIVES, len(negative)), replace=False)
    for i in negative[torch.as_tensor(shown_neg, dtype=torch.int64)].tolist():
        _rect(draw, anchors[i].tolist(), GREY)
    for i in positive.tolist():
        _rect(draw, anchors[i].tolist(), _rgb(colors[int(matches[i])]), width=2)
    font = _font(max(12, min(ins.input_size) // 50))
    for k in range(g):
        _rect(draw, t.boxes[k].tolist(), WHITE, width=3, dashed=True)
    for k in range(g):
        _draw_label(
            draw,
            _name(int(t.labels[k]), ins.gt_class_names),
            t.boxes[k].numpy(),
            colors[k],
            font,
            image.width,
            image.height,
        )
    per_gt = [int((matches[positive] == k).sum()) for k in range(g)]
    fg, bg = ins.rpn_thresholds
    legend = _legend(
        [
            (WHITE, "ground truth (dashed)"),
            (_rgb(colors[0]) if g else WHITE, "positive anchor, in its box's colour"),
            (GREY, f"negative anchor (random {len(shown_neg)})"),
        ],
        image.width,
    )
    # the ground-truth swatch: a white outline on dark grey, as on the faded picture
    ImageDraw.Draw(legend).rectangle((6, 7, 23, 21), fill=(60, 60, 60), outline=WHITE, width=2)
    caption = (
        f"Ground truth mapped through the model's resize onto its input "
        f"({ins.input_size[0]}×{ins.input_size[1]}), then matched to all {len(anchors):,} anchors by IoU: "
        f"{len(positive)} positive (IoU ≥ {fg:g}, or an anchor with a box's highest IoU; all drawn, "
        f"in the colour of their box), {len(negative):,} negative "
        f"(IoU < {bg:g}; a random {len(shown_neg)} drawn in grey), {ignored:,} ignored (between; not drawn). "
        f"Positives per box: {', '.join(map(str, per_gt)) or 'none'}."
    )
    stats = {
        "ground_truth": g,
        "positive": len(positive),
        "negative": len(negative),
        "ignored": ignored,
        "positive_drawn": len(positive),
        "negative_drawn": len(shown_neg),
        "positive_per_box": per_gt,
        "gt_boxes": _boxes_list(t.boxes),
    }
    return _stack([image, legend]), "Anchor targets (positives and negatives)", caption, stats


def draw_roi_levels(ins: Inspection) -> tuple[Image.Image, str, str, dict]:
    h, w = ins.input_size
    scale = min(1.0, 620 / w)
    names = ins.pooled_level_names
    colors = instance_colors(len(names) + 2)[2:]
    counts = {name: int((ins.proposal_levels == i).sum()) for i, name in enumerate(names)}
    panels = []
    for i, name in enumerate(names):
        index = torch.where(ins.proposal_levels == i)[0]
        index = index[torch.argsort(ins.proposal_scores[index], descending=True)[:SHOW_PER_LEVEL]].flip(0)
        image = _faded(ins.input_rgb, scale)
        draw = ImageDraw.Draw(image)
        for j in index.tolist():
            _rect(draw, (ins.proposal_boxes[j] * scale).tolist(), _rgb(colors[i]), width=2)
        lo, hi = ins.level_ranges[i]
        rule = (
            f"sqrt(area) < {hi:g}"
            if lo == 0
            else (f"sqrt(area) >= {lo:g}" if hi == float("inf") else f"{lo:g} <= sqrt(area) < {hi:g}")
        )
        panels.append(
            _titled(image, f"{name}: {counts[name]:,} RoIs ({rule} px); {len(index)} drawn", size=14)
        )
    caption = (
        f"The box and mask heads pool each RoI from one FPN level chosen by its size (FPN eq. 1: "
        f"k = ⌊k0 + log2(√(wh)/s0)⌋, clamped to {names[0]}–{names[-1]}). "
        f"Of the {len(ins.proposal_boxes):,} proposals: "
        + ", ".join(f"{n} {c:,}" for n, c in counts.items())
        + f". Each panel draws up to {SHOW_PER_LEVEL} of its most confident RoIs. "
        f"Model input frame ({h}×{w}, shown at {scale:.2f}×)."
    )
    return (
        _grid(panels, 2),
        "FPN level each RoI is pooled from",
        caption,
        {"counts": counts, "total": len(ins.proposal_boxes)},
    )


def draw_refinement(ins: Inspection) -> tuple[Image.Image, str, str, dict]:
    det = ins.detections
    n = min(SHOW_REFINED, len(det))
    title = "Box refinement: proposal → final box"
    if n == 0:
        return (
            _note("no detections above the score threshold"),
            title,
            "The model made no detections on this image.",
            {"shown": []},
        )
    colors = instance_colors(len(det))
    image = _faded(ins.input_rgb)
    draw = ImageDraw.Draw(image)
    font = _font(max(12, min(ins.input_size) // 50))
    rows, shifts = [], []
    for j in reversed(range(n)):
        color = _rgb(colors[j])
        proposal, box = ins.proposal_boxes[int(ins.det_sources[j])], ins.det_input_boxes[j]
        _rect(draw, proposal.tolist(), color, width=2, dashed=True)
        _rect(draw, box.tolist(), color, width=3)
        pc, bc = (proposal[:2] + proposal[2:]) / 2, (box[:2] + box[2:]) / 2
        draw.line((*pc.tolist(), *bc.tolist()), fill=color, width=2)
        draw.ellipse(
            (float(bc[0]) - 4, float(bc[1]) - 4, float(bc[0]) + 4, float(bc[1]) + 4),
            fill=color,
            outline=BLACK,
        )
        shifts.append(float((bc - pc).norm()))
        rows.append(
            {
                "rank": j + 1,
                "label": _name(int(det.labels[j]), ins.class_names),
                "score": round(float(det.scores[j]), 4),
                "proposal_index": int(ins.det_sources[j]),
                "proposal": _boxes_list(proposal[None])[0],
                "box": _boxes_list(box[None])[0],
                "iou": round(float(box_iou(proposal[None], box[None])[0, 0]), 4),
            }
        )
    for j in reversed(range(n)):
        text = f"{_name(int(det.labels[j]), ins.class_names)} {float(det.scores[j]):.2f}"
        _draw_label(draw, text, ins.det_input_boxes[j].numpy(), colors[j], font, image.width, image.height)
    legend = _legend(
        [(_rgb(colors[0]), "proposal (dashed)"), (_rgb(colors[0]), "final box (solid); line: centre shift")],
        image.width,
        outline_only=(True, True),
    )
    caption = (
        f"The {n} most confident of {len(det)} detections: the RPN proposal each came from (dashed) and "
        f"its final box (solid), after the box head's class-specific regression, clipping and per-class "
        f"NMS; the line joins the centres (mean shift {np.mean(shifts):.1f} px). Model input frame "
        f"({ins.input_size[0]}×{ins.input_size[1]})."
    )
    return _stack([image, legend]), title, caption, {"shown": rows[::-1]}


def _mask_row(ins: Inspection, j: int, color: np.ndarray, vmax: float, original: np.ndarray) -> Image.Image:
    """One detection: its logit map, the crop of the original image with the pasted mask, text."""
    det: Detections = ins.detections
    logits = ins.mask_logits[j].numpy()
    heat = colormap((logits / vmax + 1) / 2, LOGIT_STOPS)
    m = logits.shape[0]
    cell = max(1, MASK_CELL // m)
    heat_img = Image.fromarray(heat).resize((m * cell, m * cell), Image.NEAREST)
    # crop of the original image around the box, with the pasted mask tinted
    rgb = original.copy()
    mask = det.masks[j].numpy().astype(bool)
    rgb[mask] = np.round(0.45 * rgb[mask] + 0.55 * color).astype(np.uint8)
    x1, y1, x2, y2 = det.boxes[j].tolist()
    pad_x, pad_y = 0.15 * (x2 - x1) + 4, 0.15 * (y2 - y1) + 4
    H, W = ins.original_size
    cx1, cy1 = max(0, int(x1 - pad_x)), max(0, int(y1 - pad_y))
    cx2, cy2 = min(W, int(np.ceil(x2 + pad_x))), min(H, int(np.ceil(y2 + pad_y)))
    crop = Image.fromarray(rgb[cy1 : max(cy2, cy1 + 1), cx1 : max(cx2, cx1 + 1)])
    s = min(240 / crop.width, heat_img.height / crop.height)
    crop = crop.resize((max(1, round(crop.width * s)), max(1, round(crop.height * s))), Image.BILINEAR)
    ImageDraw.Draw(crop).rectangle(
        ((x1 - cx1) * s, (y1 - cy1) * s, (x2 - cx1) * s - 1, (y2 - cy1) * s - 1), outline=_rgb(color), width=2
    )
    row = Image.new("RGB", (heat_img.width + 250 + 230, heat_img.height + 4), WHITE)
    row.paste(heat_img, (0, 2))
    row.paste(crop, (heat_img.width + 10, 2))
    draw = ImageDraw.Draw(row)
    font = _font(14)
    x = heat_img.width + 260
    label = f"#{j + 1} {_name(int(det.labels[j]), ins.class_names)} {float(det.scores[j]):.2f}"
    tw = draw.textlength(label, font=font)
    draw.rectangle((x - 2, 2, x + tw + 4, 22), fill=_rgb(color))
    draw.text((x + 1, 4), label, fill=text_color_for(color), font=font)
    lines = [
        f"RoI pooled from {ins.pooled_level_names[int(ins.det_levels[j])]}",
        f"logits {logits.min():.2f} … {logits.max():.2f}",
        f"{int((logits > 0).sum())} of {m * m} cells > 0",
        f"pasted mask: {int(mask.sum()):,} px",
    ]
    for k, line in enumerate(lines):
        draw.text((x, 32 + 20 * k), line, fill=BLACK, font=font)
    return row


def draw_masks(ins: Inspection) -> tuple[Image.Image, str, str, dict]:
    det = ins.detections
    n = min(SHOW_MASKS, len(det))
    title = "Mask logits (28×28) and pasted masks"
    if n == 0:
        return (
            _note("no detections above the score threshold"),
            title,
            "The model made no detections on this image.",
            {"shown": []},
        )
    colors = instance_colors(len(det))
    vmax = max(1.0, float(ins.mask_logits[:n].abs().max()))
    original = to_rgb_array(ins.image)
    rows = [_mask_row(ins, j, colors[j], vmax, original) for j in range(n)]
    body = _grid(rows, 2 if n > 3 else 1, gap=14)
    bar = _colorbar(min(body.width, 640), -vmax, vmax, "mask logit (0 = p 0.5)", LOGIT_STOPS, fmt="{:+.1f}")
    m = ins.mask_logits.shape[-1]
    caption = (
        f"For the {n} most confident detections: left, the {m}×{m} mask logits of the detected class "
        f"(the grid covers the detection box; blue < 0 < red, white = probability 0.5, the threshold); "
        f"right, the crop of the original image around the box with the mask as the model pastes it "
        f"(probabilities resized into the box at image resolution, thresholded at 0.5), box outlined. "
        f"Text: the FPN level the mask RoI was pooled from."
    )
    stats = {
        "shown": [
            {
                "rank": j + 1,
                "label": _name(int(det.labels[j]), ins.class_names),
                "level": ins.pooled_level_names[int(ins.det_levels[j])],
                "logit_min": round(float(ins.mask_logits[j].min()), 4),
                "logit_max": round(float(ins.mask_logits[j].max()), 4),
                "mask_pixels": int(det.masks[j].sum()),
            }
            for j in range(n)
        ]
    }
    return _stack([bar, body], gap=10), title, caption, stats


def draw_final(ins: Inspection) -> tuple[Image.Image, str, str, dict]:
    det = ins.detections
    n = min(SHOW_DETECTIONS, len(det))
    top = Detections(det.boxes[:n], det.scores[:n], det.labels[:n], det.masks[:n])
    image = draw_detections(ins.image, top, class_names=ins.class_names)
    h, w = ins.original_size
    caption = (
        f"The model's output on the original image ({h}×{w}): {len(det)} detections with score > "
        f"{ins.det_score_thresh:g}; the {n} most confident drawn (masks, boxes, class and score)."
    )
    stats = {
        "count": len(det),
        "drawn": n,
        "boxes": _boxes_list(det.boxes[:n]),
        "scores": [round(float(s), 4) for s in det.scores[:n]],
        "labels": [int(v) for v in det.labels[:n]],
    }
    return image, "Final detections (original image)", caption, stats


# ---------------------------------------------------------------------------------- all


def draw_all(ins: Inspection, out: Path) -> tuple[list[dict], dict]:
    """Draw every picture of `ins` (an Inspection) into `out` as PNG files.

    Returns the pictures in page order (id, file, title, caption) and the summary dict."""
    stages: list[tuple[str, tuple[Image.Image, str, str, dict]]] = [("anchors", draw_anchors(ins))]
    if ins.targets is not None:
        stages.append(("anchor_targets", draw_anchor_targets(ins)))
    pre, post = draw_rpn(ins)
    stages += [("rpn_pre_nms", pre), ("rpn_post_nms", post)]
    stages += [("roi_levels", draw_roi_levels(ins)), ("box_refinement", draw_refinement(ins))]
    stages += [("mask_logits", draw_masks(ins)), ("detections", draw_final(ins))]
    pictures = []
    summary: dict = {
        "image": {
            "original_size": list(ins.original_size),
            "input_size": list(ins.input_size),
            "padded_size": list(ins.padded_size),
        }
    }
    for key, (image, title, caption, stats) in stages:
        file = f"{key}.png"
        image.save(out / file)
        pictures.append({"id": key, "file": file, "title": title, "caption": caption})
        summary[key] = stats
    summary["rpn"] = summary.pop("rpn_pre_nms")
    summary.pop("rpn_post_nms")
    return pictures, summary
