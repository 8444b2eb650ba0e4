"""Pictures of the RoI-head stages: the FPN level each RoI is pooled from, box refinement
(proposal -> final box), the mask head's logits next to the pasted masks, and the final detections
on the original image."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..ops.boxes import box_iou
from ..structures import Detections
from ..visualize import (
    _blend_masks,
    _draw_label,
    _font,
    _name,
    draw_detections,
    instance_colors,
    text_color_for,
    to_rgb_array,
)
from . import canvas
from .canvas import Picture

if TYPE_CHECKING:
    from .stages import Inspection

__all__ = ["draw_final", "draw_masks", "draw_refinement", "draw_roi_levels"]

SHOW_PER_LEVEL = 40  # proposals drawn per panel of the level picture
SHOW_REFINED = 15  # detections in the refinement picture
SHOW_MASKS = 8  # detections in the mask picture
SHOW_DETECTIONS = 20  # detections in the final picture
MASK_CELL = 168  # pixels of a 28x28 logit map (6 px per cell)
PANEL_WIDTH = 620  # display width (px) of each level panel
PICTURE_WIDTH = 640  # display width (px) that small frames are enlarged to in the refinement picture


def draw_roi_levels(ins: Inspection) -> Picture:
    scale = canvas.display_scale(ins.input_size[1], PANEL_WIDTH)
    names = ins.pooled_level_names
    colors = instance_colors(len(names) + 2)[2:]
    counts = {name: int((ins.proposal_levels == i).sum()) for i, name in enumerate(names)}
    panels = []
    for i, name in enumerate(names):
        index = torch.where(ins.proposal_levels == i)[0]
        index = index[torch.argsort(ins.proposal_scores[index], descending=True)[:SHOW_PER_LEVEL]].flip(0)
        image = canvas.faded(ins.input_rgb, scale)
        draw = ImageDraw.Draw(image)
        for j in index.tolist():
            canvas.rect(draw, (ins.proposal_boxes[j] * scale).tolist(), canvas.as_color(colors[i]), width=2)
        lo, hi = ins.level_ranges[i]
        rule = (
            f"sqrt(area) < {hi:g}"
            if lo == 0
            else (f"sqrt(area) >= {lo:g}" if hi == float("inf") else f"{lo:g} <= sqrt(area) < {hi:g}")
        )
        panels.append(
            canvas.titled(image, f"{name}: {counts[name]:,} RoIs ({rule} px); {len(index)} drawn", size=14)
        )
    caption = (
        f"The box and mask heads pool each RoI from one FPN level chosen by its size (FPN eq. 1: "
        f"k = ⌊k0 + log2(√(wh)/s0)⌋, clamped to {names[0]}–{names[-1]}). "
        f"Of the {len(ins.proposal_boxes):,} proposals: "
        + ", ".join(f"{n} {c:,}" for n, c in counts.items())
        + f". Each panel draws up to {SHOW_PER_LEVEL} of its most confident RoIs. "
        f"{canvas.frame_text(ins.input_size, scale)}."
    )
    return (
        canvas.grid(panels, 2),
        "FPN level each RoI is pooled from",
        caption,
        {"counts": counts, "total": len(ins.proposal_boxes)},
    )


def _shown_detections(ins: Inspection, limit: int) -> tuple[Detections, int, np.ndarray]:
    """The detections, how many of them a picture shows (at most `limit`, the most confident
    first) and the detections' colours."""
    det = ins.detections
    return det, min(limit, len(det)), instance_colors(len(det))


def _no_detections(title: str) -> Picture:
    """The picture of a detection stage when the model detected nothing."""
    return (
        canvas.note("no detections above the score threshold"),
        title,
        "The model made no detections on this image.",
        {"shown": []},
    )


def draw_refinement(ins: Inspection) -> Picture:
    title = "Box refinement: proposal → final box"
    det, n, colors = _shown_detections(ins, SHOW_REFINED)
    if n == 0:
        return _no_detections(title)
    scale = canvas.display_scale(ins.input_size[1], PICTURE_WIDTH, shrink=False)
    image = canvas.faded(ins.input_rgb, scale)
    draw = ImageDraw.Draw(image)
    font = canvas.label_font(image)
    rows, shifts = [], []
    for j in reversed(range(n)):
        color = canvas.as_color(colors[j])
        proposal, box = ins.proposal_boxes[int(ins.det_sources[j])], ins.det_input_boxes[j]
        canvas.rect(draw, (proposal * scale).tolist(), color, width=2, dashed=True)
        canvas.rect(draw, (box * scale).tolist(), color, width=3)
        pc, bc = (proposal[:2] + proposal[2:]) / 2 * scale, (box[:2] + box[2:]) / 2 * scale
        draw.line((*pc.tolist(), *bc.tolist()), fill=color, width=2)
        draw.ellipse(
            (float(bc[0]) - 4, float(bc[1]) - 4, float(bc[0]) + 4, float(bc[1]) + 4),
            fill=color,
            outline=canvas.BLACK,
        )
        shifts.append(float((bc - pc).norm()) / scale)  # in model-input pixels
        rows.append(
            {
                "rank": j + 1,
                "label": _name(int(det.labels[j]), ins.class_names),
                "score": round(float(det.scores[j]), 4),
                "proposal_index": int(ins.det_sources[j]),
                "proposal": canvas.boxes_list(proposal[None])[0],
                "box": canvas.boxes_list(box[None])[0],
                "iou": round(float(box_iou(proposal[None], box[None])[0, 0]), 4),
            }
        )
    for j in reversed(range(n)):
        text = f"{_name(int(det.labels[j]), ins.class_names)} {float(det.scores[j]):.2f}"
        box = (ins.det_input_boxes[j] * scale).numpy()
        _draw_label(draw, text, box, colors[j], font, image.width, image.height)
    color0 = canvas.as_color(colors[0])
    key = canvas.legend(
        [(color0, "proposal (dashed)"), (color0, "final box (solid); line: centre shift")],
        image.width,
        outline_only=(True, True),
    )
    caption = (
        f"The {n} most confident of {len(det)} detections: the RPN proposal each came from (dashed) and "
        f"its final box (solid), after the box head's class-specific regression, clipping and per-class "
        f"NMS; the line joins the centres (mean shift {np.mean(shifts):.1f} px of the input). "
        f"{canvas.frame_text(ins.input_size, scale)}."
    )
    return canvas.stack([image, key]), title, caption, {"shown": rows[::-1]}


def _mask_row(ins: Inspection, j: int, color: np.ndarray, vmax: float, original: np.ndarray) -> Image.Image:
    """One detection: its logit map, the crop of the original image with the pasted mask, text."""
    det: Detections = ins.detections
    logits = ins.mask_logits[j].numpy()
    heat = canvas.colormap((logits / vmax + 1) / 2, canvas.LOGIT_STOPS)
    m = logits.shape[0]
    cell = max(1, MASK_CELL // m)
    heat_img = Image.fromarray(heat).resize((m * cell, m * cell), Image.NEAREST)
    # crop of the original image around the box, with the pasted mask tinted
    rgb = _blend_masks(original, det.mask_crops.select([j]).to("cpu"), color[None], 0.55)
    x1, y1, x2, y2 = det.boxes[j].tolist()
    pad_x, pad_y = 0.15 * (x2 - x1) + 4, 0.15 * (y2 - y1) + 4
    H, W = ins.original_size
    cx1, cy1 = max(0, int(x1 - pad_x)), max(0, int(y1 - pad_y))
    cx2, cy2 = min(W, int(np.ceil(x2 + pad_x))), min(H, int(np.ceil(y2 + pad_y)))
    crop = Image.fromarray(rgb[cy1 : max(cy2, cy1 + 1), cx1 : max(cx2, cx1 + 1)])
    s = min(240 / crop.width, heat_img.height / crop.height)
    crop = crop.resize((max(1, round(crop.width * s)), max(1, round(crop.height * s))), Image.BILINEAR)
    outline = ((x1 - cx1) * s, (y1 - cy1) * s, (x2 - cx1) * s - 1, (y2 - cy1) * s - 1)
    ImageDraw.Draw(crop).rectangle(outline, outline=canvas.as_color(color), width=2)
    row = Image.new("RGB", (heat_img.width + 250 + 230, heat_img.height + 4), canvas.WHITE)
    row.paste(heat_img, (0, 2))
    row.paste(crop, (heat_img.width + 10, 2))
    draw = ImageDraw.Draw(row)
    font = _font(14)
    x = heat_img.width + 260
    label = f"#{j + 1} {_name(int(det.labels[j]), ins.class_names)} {float(det.scores[j]):.2f}"
    tw = draw.textlength(label, font=font)
    draw.rectangle((x - 2, 2, x + tw + 4, 22), fill=canvas.as_color(color))
    draw.text((x + 1, 4), label, fill=text_color_for(color), font=font)
    lines = [
        f"RoI pooled from {ins.pooled_level_names[int(ins.det_levels[j])]}",
        f"logits {logits.min():.2f} … {logits.max():.2f}",
        f"{int((logits > 0).sum())} of {m * m} cells > 0",
        f"pasted mask: {int(det.mask_crops.crops[j].sum()):,} px",
    ]
    for k, line in enumerate(lines):
        draw.text((x, 32 + 20 * k), line, fill=canvas.BLACK, font=font)
    return row


def draw_masks(ins: Inspection) -> Picture:
    title = "Mask logits (28×28) and pasted masks"
    det, n, colors = _shown_detections(ins, SHOW_MASKS)
    if n == 0:
        return _no_detections(title)
    vmax = max(1.0, float(ins.mask_logits[:n].abs().max()))
    original = to_rgb_array(ins.image)
    rows = [_mask_row(ins, j, colors[j], vmax, original) for j in range(n)]
    body = canvas.grid(rows, 2 if n > 3 else 1, gap=14)
    bar = canvas.colorbar(
        min(body.width, 640), -vmax, vmax, "mask logit (0 = p 0.5)", canvas.LOGIT_STOPS, fmt="{:+.1f}"
    )
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
                "mask_pixels": int(pixels),
            }
            for j, pixels in zip(range(n), det.mask_crops.area().tolist())
        ]
    }
    return canvas.stack([bar, body], gap=10), title, caption, stats


def draw_final(ins: Inspection) -> Picture:
    det = ins.detections
    n = min(SHOW_DETECTIONS, len(det))
    top = det.select(torch.arange(n))
    image = draw_detections(ins.image, top, class_names=ins.class_names, skeleton=ins.skeleton)
    h, w = ins.original_size
    caption = (
        f"The model's output on the original image ({h}×{w}): {len(det)} detections with score > "
        f"{ins.det_score_thresh:g}; the {n} most confident drawn (masks, boxes, class and score"
        f"{', keypoints and skeleton' if ins.detections.keypoints is not None else ''})."
    )
    stats = {
        "count": len(det),
        "drawn": n,
        "boxes": canvas.boxes_list(det.boxes[:n]),
        "scores": [round(float(s), 4) for s in det.scores[:n]],
        "labels": [int(v) for v in det.labels[:n]],
    }
    return image, "Final detections (original image)", caption, stats
