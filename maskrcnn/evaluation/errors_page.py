"""The error analysis of an evaluation (`maskrcnn.evaluation.tide`) as a report: RUN/errors.html.

`error_report(gt, records, out_dir, image_of=...)` analyses the records (bbox and segm) and writes
errors.html, one self-contained page (pictures embedded as data URIs):
- a bar chart per IoU type (matplotlib, PNG): the dAP of each error type (Cls, Loc, Both, Dupe,
  Bkg, Miss) and of FalsePos / FalseNeg, in AP points at IoU .5;
- per IoU type and error type, a gallery of the worst examples (`GALLERY` of them): the most
  confident detections of that error (for Miss, the largest missed ground truth), each cropped
  from its image with the detection in red (box, and mask outline for segm) and the ground truth it
  is about in green;
and returns {iou type: summary} for metrics.json's "errors" (`TypeErrors.summary()`).
`image_of(image_id)` gives an image as (H, W, 3) uint8 or None (the gallery then draws on grey).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from PIL import Image, ImageDraw

from .tide import ERROR_TYPES, SPECIAL_TYPES, ErrorExample, TypeErrors, analyze_errors

__all__ = ["COLORS", "GALLERY", "error_chart_figure", "error_report", "render_errors_page"]

GALLERY = 6  # examples per error type and IoU type
# the bar colours of the chart (the test looks for them in a screenshot)
COLORS = {
    "Cls": "#d62728",
    "Loc": "#ff7f0e",
    "Both": "#9467bd",
    "Dupe": "#8c564b",
    "Bkg": "#1f77b4",
    "Miss": "#2ca02c",
    "FalsePos": "#17becf",
    "FalseNeg": "#e377c2",
}
NAMES = {
    "Cls": "right place, wrong class",
    "Loc": "right class, poorly located (.1 <= IoU <= .5)",
    "Both": "wrong class and poorly located",
    "Dupe": "duplicate of a detection that took the ground truth",
    "Bkg": "background detected as an object (IoU <= .1 with everything)",
    "Miss": "ground truth that nothing found",
}
_PRED, _GT = (220, 30, 30), (30, 200, 60)
ImageOf = Callable[[int], Optional[np.ndarray]]


def error_chart_figure(errors: dict[str, dict]) -> Any:
    """One panel per IoU type: horizontal bars of dAP per error type (main, then special)."""
    from ..plots import _figure

    fig, axes = _figure(max(1, len(errors)), (460, 330))
    types = [*ERROR_TYPES, *SPECIAL_TYPES]
    top = max([1.0] + [e[t] for e in errors.values() for t in types])
    for ax, (iou_type, e) in zip(axes, errors.items()):
        values = [e[t] for t in types]
        ax.barh(range(len(types))[::-1], values, color=[COLORS[t] for t in types], height=0.7)
        ax.set_yticks(range(len(types))[::-1], types)
        for y, v in zip(range(len(types))[::-1], values):
            ax.text(v + top * 0.01, y, f"{v:.2f}", va="center", fontsize=9)
        ax.axhline(1.5, color="#999", linewidth=0.8)  # main errors above, FalsePos / FalseNeg below
        ax.set_xlim(0.0, top * 1.15)
        ax.set_xlabel("dAP (AP points at IoU .5)")
        ax.set_title(f"{iou_type}: AP50 {e['AP50']:.1f}")
    return fig


def _png_uri(fig: Any) -> str:
    from ..plots import save_png

    buffer = io.BytesIO()
    save_png(fig, buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _xyxy(box: Sequence[float]) -> tuple[float, float, float, float]:
    x, y, w, h = (float(v) for v in box)
    return x, y, x + w, y + h


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def _draw(gt: Any, records: Sequence[dict], ex: ErrorExample, iou_type: str, image_of: ImageOf) -> str:
    """One gallery picture: the crop around the detection and its ground truth (drawn on the crop
    only), fitted to 260 x 200 pixels, as a JPEG data URI."""
    from pycocotools import mask as mask_utils

    info = gt.imgs[ex.image_id]
    height, width = int(info["height"]), int(info["width"])
    shapes = []  # (colour, box xyxy, mask or None)
    if ex.annotation is not None:
        ann = gt.anns[ex.annotation]
        shapes.append((_GT, _xyxy(ann["bbox"]), gt.annToMask(ann) if iou_type == "segm" else None))
    if ex.record is not None:
        rec = records[ex.record]
        seg = rec.get("segmentation") if iou_type == "segm" else None
        shapes.append((_PRED, _xyxy(rec["bbox"]), mask_utils.decode(seg) if seg else None))
    x1, y1 = min(s[1][0] for s in shapes), min(s[1][1] for s in shapes)
    x2, y2 = max(s[1][2] for s in shapes), max(s[1][3] for s in shapes)
    margin = max(16.0, 0.25 * max(x2 - x1, y2 - y1))
    left, top = max(0, int(x1 - margin)), max(0, int(y1 - margin))
    right = max(left + 1, min(width, int(x2 + margin) + 1))
    bottom = max(top + 1, min(height, int(y2 + margin) + 1))
    rgb = image_of(ex.image_id)
    if rgb is None or rgb.shape[:2] != (height, width):
        rgb = np.full((height, width, 3), 128, np.uint8)
    crop = rgb[top:bottom, left:right].copy()
    for color, _, mask in shapes:
        if mask is not None and mask.shape == (height, width):
            m = mask[top:bottom, left:right].astype(bool)
            crop[m] = (0.6 * crop[m] + 0.4 * np.array(color)).astype(np.uint8)
            crop[_outline(m)] = color
    scale = min(260 / crop.shape[1], 200 / crop.shape[0])
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    picture = Image.fromarray(crop).resize(size, Image.BILINEAR)
    draw = ImageDraw.Draw(picture)
    for color, (bx1, by1, bx2, by2), _ in shapes:
        box = [(bx1 - left) * scale, (by1 - top) * scale, (bx2 - left) * scale, (by2 - top) * scale]
        draw.rectangle(box, outline=color, width=2)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _worst(examples: Sequence[ErrorExample], kind: str, gt: Any) -> list[ErrorExample]:
    """The worst examples of a type: the most confident detections (for Miss: the largest objects)."""
    chosen = [e for e in examples if e.kind == kind]
    if kind == "Miss":
        chosen.sort(key=lambda e: -float(gt.anns[e.annotation]["area"]))
    else:
        chosen.sort(key=lambda e: -e.score)
    return chosen[:GALLERY]


def _caption(gt: Any, records: Sequence[dict], ex: ErrorExample) -> str:
    def name(cat: int) -> str:
        return str(gt.cats[cat]["name"]) if cat in gt.cats else str(cat)

    parts = [f"image {ex.image_id}"]
    if ex.record is not None:
        parts.append(f"detection: {name(records[ex.record]['category_id'])} {ex.score:.2f}")
    if ex.annotation is not None:
        parts.append(f"ground truth: {name(gt.anns[ex.annotation]['category_id'])}")
        if ex.record is not None:
            parts.append(f"IoU {ex.iou:.2f}")
    return ", ".join(parts)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1400px; padding: 0 16px;
       color: #222; background: #fafafa; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; } h3 { font-size: 15px; }
table { border-collapse: collapse; font-size: 14px; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
.gallery { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; background: #fff; border: 1px solid #ddd; padding: 4px; max-width: 264px; }
figcaption { font-size: 12px; color: #444; }
.swatch { display: inline-block; width: 12px; height: 12px; vertical-align: middle; }
"""


def render_errors_page(
    analyses: dict[str, TypeErrors], chart_uri: str, galleries: dict[str, dict[str, list[tuple[str, str]]]]
) -> str:
    """errors.html: the chart, the dAP table and, per IoU type and error type, its gallery."""
    esc = html.escape
    types = [*ERROR_TYPES, *SPECIAL_TYPES]
    head = "".join(f"<th>{t}</th>" for t in types)
    rows = "".join(
        f"<tr><th>{esc(t)}</th><td>{a.ap:.2f}</td>"
        + "".join(f"<td>{a.daps[k]:.2f}</td>" for k in types)
        + "</tr>"
        for t, a in analyses.items()
    )
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Error analysis</title>",
        f"<style>{_STYLE}</style></head><body><h1>Error analysis (TIDE)</h1>",
        "<p>dAP: the AP (IoU .5, points) gained if all errors of a type were fixed. Red: the detection; "
        "green: the ground truth it is about.</p>",
        f"<img id='chart' src='{chart_uri}' alt='dAP per error type'>",
        f"<table><tr><th>IoU type</th><th>AP50</th>{head}</tr>{rows}</table>",
    ]
    for iou_type, a in analyses.items():  # per class, the classes that lose the most first
        worst = sorted(a.per_class.items(), key=lambda kv: -sum(kv[1][k] for k in ERROR_TYPES))
        body = "".join(
            f"<tr><th>{esc(name)}</th>" + "".join(f"<td>{row[k]:.2f}</td>" for k in types) + "</tr>"
            for name, row in worst
        )
        parts.append(
            f"<details><summary>{esc(iou_type)}: dAP per class ({len(worst)} classes)</summary>"
            f"<table><tr><th>class</th>{head}</tr>{body}</table></details>"
        )
    for iou_type, by_kind in galleries.items():
        parts.append(f"<h2>{esc(iou_type)}: worst examples</h2>")
        for kind, items in by_kind.items():
            count = analyses[iou_type].counts[kind]
            swatch = f"<span class='swatch' style='background:{COLORS[kind]}'></span>"
            parts.append(
                f"<h3>{swatch} {kind}: {esc(NAMES[kind])} ({count} errors)</h3><div class='gallery'>"
            )
            parts += [
                f"<figure><img src='{uri}' alt='{esc(kind)}'><figcaption>{esc(text)}</figcaption></figure>"
                for uri, text in items
            ]
            parts.append("</div>" if items else "<p>none</p></div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def error_report(
    gt: Any,
    records: Sequence[dict],
    out_dir: Union[str, Path],
    *,
    iou_types: Sequence[str] = ("bbox", "segm"),
    image_of: Optional[ImageOf] = None,
) -> tuple[dict[str, dict], Path]:
    """Analyse checked records (RLE masks) against `gt` (a COCO object), write `out_dir`/errors.html
    (atomically); -> ({iou type: summary}, the page's path)."""
    from ..files import atomic_write_text

    analyses = analyze_errors(gt, records, iou_types=iou_types)
    summaries = {t: a.summary() for t, a in analyses.items()}
    cache: dict[int, Optional[np.ndarray]] = {}

    def cached(image_id: int) -> Optional[np.ndarray]:
        if image_id not in cache:
            cache[image_id] = image_of(image_id) if image_of is not None else None
        return cache[image_id]

    galleries = {
        t: {
            kind: [
                (_draw(gt, records, ex, t, cached), _caption(gt, records, ex))
                for ex in _worst(a.examples, kind, gt)
            ]
            for kind in ERROR_TYPES
        }
        for t, a in analyses.items()
    }
    page = render_errors_page(analyses, _png_uri(error_chart_figure(summaries)), galleries)
    path = atomic_write_text(Path(out_dir) / "errors.html", page)
    return summaries, path


def results_error_report(
    gt: Any,
    results: Union[Sequence[dict], str, Path],
    out_dir: Union[str, Path],
    *,
    iou_types: Sequence[str],
    image_of: Optional[ImageOf] = None,
    images: Optional[Union[str, Path]] = None,
) -> tuple[dict[str, dict], Path]:
    """`error_report` of result records (a list or a results JSON file) against ground truth (a COCO
    object or an instances JSON file), checked as `evaluate_coco_results` checks them; only the
    bbox / segm ones of `iou_types` are analysed. The pictures come from `image_of`, else from the
    folder `images` (the ground truth's file names in it), else are drawn on grey."""
    from .coco_eval import _check_records, load_ground_truth, load_results

    where = str(results) if isinstance(results, (str, Path)) else "results"
    coco = load_ground_truth(gt)
    types = [t for t in iou_types if t in ("bbox", "segm")]
    records = _check_records(load_results(results), coco, types, where)
    if image_of is None and images is not None:
        image_of = image_folder_reader(coco, images)
    return error_report(coco, records, out_dir, iou_types=types, image_of=image_of)


def dataset_error_report(
    dataset: Any, results: Sequence[dict], out_dir: Union[str, Path], *, iou_types: Sequence[str]
) -> tuple[dict[str, dict], Path]:
    """`results_error_report` of a model's results on `dataset` (`evaluate --errors`): its ground
    truth as `evaluate_model` builds it, its images for the pictures."""
    import tempfile

    from ..visualize import to_rgb_array
    from .coco_eval import _ground_truth_of

    positions = {int(image_id): i for i, image_id in enumerate(dataset.image_ids)}

    def image_of(image_id: int) -> Optional[np.ndarray]:
        return to_rgb_array(dataset[positions[image_id]].image) if image_id in positions else None

    with tempfile.TemporaryDirectory(prefix="maskrcnn-errors-") as tmp:
        gt = _ground_truth_of(dataset, Path(tmp))
    return results_error_report(gt, results, out_dir, iou_types=iou_types, image_of=image_of)


def image_folder_reader(gt: Any, folder: Union[str, Path]) -> ImageOf:
    """`image_of` for an image folder: the ground truth's file_name of the image, under `folder`;
    None (a grey canvas) where the file cannot be read."""
    from ..inputs import read_rgb

    def image_of(image_id: int) -> Optional[np.ndarray]:
        try:
            return read_rgb(Path(folder) / gt.imgs[image_id]["file_name"])
        except (OSError, ValueError):
            return None

    return image_of


def check_image_folder(folder: Optional[Union[str, Path]]) -> None:
    """`--images`: None, or an existing folder (a UserError before any work otherwise)."""
    from ..errors import UserError

    if folder is not None and not Path(folder).is_dir():
        raise UserError(f"--images {folder}: not a folder (the image folder of the annotations)")


def add_errors_argument(p: Any) -> None:
    """`--errors / --no-errors` of `evaluate` and `evaluate-results`."""
    import argparse

    p.add_argument(
        "--errors",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="error analysis (TIDE's error types as dAP, bbox and segm) in metrics.json, the report "
        "and OUT/errors.html (default on; --no-errors turns it off)",
    )
