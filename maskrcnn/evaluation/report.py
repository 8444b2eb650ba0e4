"""The names of the COCO metrics and the reports of them: text tables and the report folder.

`maskrcnn.evaluation.coco_eval` returns, per IoU type (IOU_TYPES), the summary stats by name
(STAT_NAMES; KEYPOINT_STAT_NAMES for keypoints), "per_class" AP and "pr" curves. Here they become:

- `format_table`: one row per IoU type, columns AP AP50 AP75 APs APm APl, in percent ("-" where
  COCOeval has no value);
- `format_per_class`: one row per category, a column of AP (IoU .5:.95) per IoU type, in percent;
- `write_report`: metrics.json, detections.json, per_class_ap.txt (both tables) and pr_curve.png,
  each written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

from ..files import atomic_write_json, atomic_write_text

__all__ = [
    "IOU_TYPES",
    "KEYPOINT_STAT_NAMES",
    "STAT_NAMES",
    "TABLE_COLUMNS",
    "format_per_class",
    "format_table",
    "write_report",
]

IOU_TYPES = ("bbox", "segm", "keypoints")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
TABLE_COLUMNS = STAT_NAMES[:6]


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{100.0 * value:.2f}"


def _table(rows: list[list[str]]) -> str:
    """Aligned text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
        for r in rows
    )


def format_table(metrics: dict) -> str:
    """AP table in percent: one row per IoU type, columns AP AP50 AP75 APs APm APl."""
    rows = [["IoU type", *TABLE_COLUMNS]]
    rows += [[t, *(_fmt(metrics[t].get(c)) for c in TABLE_COLUMNS)] for t in IOU_TYPES if t in metrics]
    return _table(rows)


def format_per_class(metrics: dict) -> str:
    """Per-category AP table in percent (AP at IoU .5:.95): one row per category, a column per IoU type."""
    iou_types = [t for t in IOU_TYPES if t in metrics]
    names: dict[str, None] = {}
    for t in iou_types:
        names.update(dict.fromkeys(metrics[t].get("per_class", {})))
    rows = [["category", *(f"{t} AP" for t in iou_types)]]
    rows += [[n, *(_fmt(metrics[t]["per_class"].get(n)) for t in iou_types)] for n in names]
    return _table(rows)


def write_report(metrics: dict, results: Sequence[dict], out_dir: Union[str, Path]) -> dict[str, Path]:
    """Write metrics.json, detections.json, per_class_ap.txt and pr_curve.png into `out_dir`."""
    from ..plots import pr_curves_figure, save_png

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = ("metrics.json", "detections.json", "per_class_ap.txt", "pr_curve.png")
    paths = {name: out / name for name in names}
    for name, obj in (("metrics.json", metrics), ("detections.json", list(results))):
        atomic_write_json(paths[name], obj)
    text = format_table(metrics) + "\n\nper-class AP (IoU .5:.95, %)\n" + format_per_class(metrics) + "\n"
    atomic_write_text(paths["per_class_ap.txt"], text)
    save_png(pr_curves_figure(metrics), paths["pr_curve.png"])  # atomic
    return paths
