"""Pictures of the RPN stages: anchors per FPN level, anchor targets (with ground truth), and the
RPN's proposals before and after NMS coloured by objectness. All on the model's input frame."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from ..visualize import _blend_masks, _draw_label, _name, instance_colors
from . import canvas
from .canvas import Picture

if TYPE_CHECKING:
    from .stages import Inspection

__all__ = ["draw_anchor_targets", "draw_anchors", "draw_rpn"]

SHOW_PROPOSALS = 150  # boxes drawn in the RPN pictures
SHOW_NEGATIVES = 150  # negative anchors drawn (a random sample)
ANCHOR_LOCATIONS = 5  # sample locations per level in the anchor picture
PANEL_WIDTH = 420  # display width (px) of each anchor panel
PICTURE_WIDTH = 640  # display width (px) that small frames are enlarged to in the single pictures


def _single_scale(ins: Inspection) -> float:
    """Display scale of the single-frame pictures: small inputs enlarged, big ones kept 1:1."""
    return canvas.display_scale(ins.input_size[1], PICTURE_WIDTH, shrink=False)


def draw_anchors(ins: Inspection) -> Picture:
    h, w = ins.input_size
    scale = canvas.display_scale(w, PANEL_WIDTH)
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
        image = canvas.faded(ins.input_rgb, scale)
        draw = ImageDraw.Draw(image)
        for i, j in picks:
            base = (i * fw + j) * a
            for k in range(a):
                canvas.rect(draw, (anchors[base + k] * scale).tolist(), canvas.as_color(colors[k]), width=2)
            cx, cy = j * sx * scale, i * sy * scale
            draw.ellipse((cx - 3, cy - 3, cx + 3, cy + 3), fill=canvas.WHITE, outline=canvas.BLACK)
        title = (
            f"{name}: stride {sx}, {fh}x{fw} locations x {a} = {len(anchors):,} anchors, "
            f"size {'/'.join(f'{v:g}' for v in sizes)}"
        )
        panels.append(canvas.titled(image, title, size=13))
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
    key = canvas.legend(
        [(canvas.as_color(colors[k]), f"h/w = {ins.aspect_ratios[k // per_ratio]:g}") for k in range(a)]
        + [(canvas.WHITE, "location (anchor centre)")],
        panels[0].width,
    )
    panels.append(canvas.titled(key, "anchors at each location"))
    total = sum(len(x) for x in ins.anchors)
    caption = (
        f"Every location of every FPN level carries {a} anchors (one per aspect ratio); "
        f"{total:,} anchors in all. Each panel draws all {a} anchors at {ANCHOR_LOCATIONS} locations of "
        f"that level: the image centre and {ANCHOR_LOCATIONS - 1} random ones. "
        f"{canvas.frame_text(ins.input_size, scale)}; "
        f"padding to {ins.padded_size[0]}×{ins.padded_size[1]} not shown."
    )
    return (
        canvas.grid(panels, 3),
        "Anchors per FPN level (a sample)",
        caption,
        {"levels": levels, "total": total},
    )


def _objectness_picture(
    ins: Inspection, boxes: Tensor, scores: Tensor, lo: float, hi: float, scale: float
) -> tuple[Image.Image, int]:
    order = torch.argsort(scores, descending=True)[:SHOW_PROPOSALS].flip(0)  # most confident drawn last
    image = canvas.faded(ins.input_rgb, scale)
    draw = ImageDraw.Draw(image)
    colors = canvas.colormap(((scores[order] - lo) / max(hi - lo, 1e-12)).numpy())
    for rank, (i, color) in enumerate(zip(order.tolist(), colors)):
        canvas.rect(
            draw,
            (boxes[i] * scale).tolist(),
            canvas.as_color(color),
            width=2 if rank >= len(order) - 10 else 1,
        )
    bar = canvas.colorbar(
        min(image.width, 640),
        lo,
        hi,
        "objectness probability",
        canvas.OBJECTNESS_STOPS,
        fmt=canvas.number_format(lo, hi),
    )
    return canvas.stack([image, bar]), len(order)


def draw_rpn(ins: Inspection) -> list[Picture]:
    pre, post = ins.pre_scores, ins.proposal_scores
    # one colour scale for both pictures: the range of the scores drawn in either
    shown = torch.cat([torch.sort(x, descending=True).values[:SHOW_PROPOSALS] for x in (pre, post)])
    lo = float(shown.min()) if len(shown) else 0.0
    hi = float(shown.max()) if len(shown) else 1.0
    scale = _single_scale(ins)
    frame = canvas.frame_text(ins.input_size, scale)
    pre_img, n_pre = _objectness_picture(ins, ins.pre_boxes, pre, lo, hi, scale)
    post_img, n_post = _objectness_picture(ins, ins.proposal_boxes, post, lo, hi, scale)
    per_level = {name: int((ins.pre_levels == i).sum()) for i, name in enumerate(ins.level_names)}
    fmt = canvas.number_format(lo, hi)
    pre_caption = (
        f"{len(pre):,} candidates enter NMS: on each level the {ins.pre_nms_topk} anchors with the highest "
        f"objectness, moved by their predicted deltas, clipped to the image, tiny and low-score boxes "
        f"dropped ({', '.join(f'{k} {v}' for k, v in per_level.items())}). The {n_pre} most confident are "
        f"drawn, coloured by objectness ({fmt.format(lo)} blue to {fmt.format(hi)} red), "
        f"the top 10 thicker. "
        f"{frame}."
    )
    post_caption = (
        f"NMS at IoU {ins.nms_thresh:g} within each level, then the best {ins.post_nms_topk} per image: "
        f"{len(post):,} proposals remain of {len(pre):,}; they are what the box head sees. The {n_post} most "
        f"confident are drawn with the same colours as before NMS: overlapping near-duplicates are gone. "
        f"{frame}."
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


def draw_anchor_targets(ins: Inspection) -> Picture:
    t = ins.targets
    labels, matches = ins.anchor_labels, ins.anchor_matches
    anchors = ins.all_anchors
    g = len(t)
    colors = instance_colors(g)
    scale = _single_scale(ins)
    rgb = np.array(canvas.faded(ins.input_rgb))
    masks = t.masks.numpy().astype(bool)
    for k in range(g):  # ground-truth masks, resized with the image, tinted (later ones over earlier)
        rgb = _blend_masks(rgb, masks[k : k + 1], colors[k : k + 1], 0.4)
    image = canvas.resized(Image.fromarray(rgb), scale)
    draw = ImageDraw.Draw(image)
    positive = torch.where(labels == 1)[0]
    negative = torch.where(labels == 0)[0]
    ignored = int((labels == -1).sum())
    rng = np.random.default_rng(0)
    shown_neg = rng.choice(len(negative), size=min(SHOW_NEGATIVES, len(negative)), replace=False)
    for i in negative[torch.as_tensor(shown_neg, dtype=torch.int64)].tolist():
        canvas.rect(draw, (anchors[i] * scale).tolist(), canvas.GREY)
    for i in positive.tolist():
        canvas.rect(draw, (anchors[i] * scale).tolist(), canvas.as_color(colors[int(matches[i])]), width=2)
    font = canvas.label_font(image)
    for k in range(g):
        canvas.rect(draw, (t.boxes[k] * scale).tolist(), canvas.WHITE, width=3, dashed=True)
    for k in range(g):
        _draw_label(
            draw,
            _name(int(t.labels[k]), ins.gt_class_names),
            (t.boxes[k] * scale).numpy(),
            colors[k],
            font,
            image.width,
            image.height,
        )
    per_gt = [int((matches[positive] == k).sum()) for k in range(g)]
    fg, bg = ins.rpn_thresholds
    key = canvas.legend(
        [
            (canvas.WHITE, "ground truth (dashed)"),
            (canvas.as_color(colors[0]) if g else canvas.WHITE, "positive anchor, in its box's colour"),
            (canvas.GREY, f"negative anchor (random {len(shown_neg)})"),
        ],
        image.width,
    )
    # the ground-truth swatch: a white outline on dark grey, as on the canvas.faded picture
    ImageDraw.Draw(key).rectangle((6, 7, 23, 21), fill=(60, 60, 60), outline=canvas.WHITE, width=2)
    caption = (
        f"Ground truth mapped through the model's resize onto its input, then matched to all "
        f"{len(anchors):,} anchors by IoU: "
        f"{len(positive)} positive (IoU ≥ {fg:g}, or an anchor with a box's highest IoU; all drawn, "
        f"in the colour of their box), {len(negative):,} negative "
        f"(IoU < {bg:g}; a random {len(shown_neg)} drawn in grey), {ignored:,} ignored (between; not drawn). "
        f"Positives per box: {', '.join(map(str, per_gt)) or 'none'}. "
        f"{canvas.frame_text(ins.input_size, scale)}."
    )
    stats = {
        "ground_truth": g,
        "positive": len(positive),
        "negative": len(negative),
        "ignored": ignored,
        "positive_drawn": len(positive),
        "negative_drawn": len(shown_neg),
        "positive_per_box": per_gt,
        "gt_boxes": canvas.boxes_list(t.boxes),
    }
    return canvas.stack([image, key]), "Anchor targets (positives and negatives)", caption, stats
