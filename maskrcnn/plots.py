"""Figures drawn with matplotlib: precision-recall curves and training curves.

Figures are `matplotlib.figure.Figure` objects on the Agg canvas, built without `pyplot`: no
display is needed, and no global matplotlib state (the backend a user picked, open figures) is
touched. The functions return the Figure, so callers and tests can read its Axes (lines, labels);
`save_png` writes one atomically.

- `pr_curves_figure(metrics)`: one panel per IoU type of `evaluate_coco_results`' metrics, one
  precision-recall curve per IoU threshold (area all, 100 detections), labelled with its AP.
- `training_curves_figure(records)`: from the records of a run's `metrics.jsonl` (see
  `maskrcnn.engine.train.MetricsWriter`): the total loss and each loss term against the iteration
  (log scale), the learning rate, and, when evaluations were logged, box and mask AP.
- `write_training_curves(run_dir)`: RUN/metrics.jsonl -> RUN/training_curves.png.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, Union

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .errors import UserError
from .files import atomic_write

__all__ = [
    "pr_curves_figure",
    "read_metrics_log",
    "save_png",
    "training_curves_figure",
    "write_training_curves",
]

PathLike = Union[str, "os.PathLike[str]"]
DPI = 100
PANEL_SIZE = (460, 380)  # pixels per panel
AP_KEYS = (("bbox/AP", "box AP"), ("segm/AP", "mask AP"))


def _figure(panels: int, panel_size: tuple[int, int] = PANEL_SIZE) -> tuple[Figure, list[Any]]:
    """A figure of `panels` side by side, each `panel_size` (width, height) pixels."""
    size = (panel_size[0] * panels / DPI, panel_size[1] / DPI)
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, panels, i + 1) for i in range(panels)]
    return fig, axes


def save_png(fig: Figure, path_or_file: PathLike | IO[bytes]) -> None:
    """Write `fig` as PNG: into a binary file object, or atomically into a path."""
    if isinstance(path_or_file, (str, os.PathLike)):
        atomic_write(path_or_file, lambda f: fig.savefig(f, format="png", dpi=DPI))
    else:
        fig.savefig(path_or_file, format="png", dpi=DPI)


# ---------------------------------------------------------------- precision-recall


def pr_curves_figure(metrics: dict, *, panel_size: tuple[int, int] = PANEL_SIZE) -> Figure:
    """One panel (`panel_size` pixels) per IoU type in `metrics` with metrics[t]["pr"] = {"recall":
    [...], "precision": {"0.50": [...], ...}}; a threshold with no values (no ground truth) has no curve."""
    iou_types = [
        t for t in ("bbox", "segm", "keypoints") if isinstance(metrics.get(t), dict) and "pr" in metrics[t]
    ]
    fig, axes = _figure(max(1, len(iou_types)), panel_size)
    if not iou_types:
        axes[0].text(0.5, 0.5, "no precision-recall data", ha="center", va="center")
        axes[0].set_axis_off()
        return fig
    for ax, iou_type in zip(axes, iou_types):
        pr = metrics[iou_type]["pr"]
        for thr, precision in sorted(pr["precision"].items()):
            if precision:
                ap = sum(precision) / len(precision)
                ax.plot(pr["recall"], precision, linewidth=1.8, label=f"IoU {thr}: AP {ap:.3f}")
        ax.set_xlim(0.0, 1.0)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title(f"{iou_type} (area all, {20 if iou_type == 'keypoints' else 100} dets)")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(loc="lower left")
    return fig


# ---------------------------------------------------------------- training curves


def read_metrics_log(path: PathLike) -> list[dict]:
    """The records of a metrics.jsonl file (one JSON object per line; blank lines are skipped)."""
    path = Path(path)
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}, line {number}: not JSON ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("iteration"), (int, float)):
                raise UserError(f"{path}, line {number}: expected an object with an 'iteration' number")
            records.append(record)
    return records


def _series(records: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    pairs = [(r["iteration"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def training_curves_figure(records: Sequence[dict]) -> Figure:
    """Losses (the total `loss` and every `loss_*` term), learning rate and, when the records hold
    evaluations (`bbox/AP`, `segm/AP`), box and mask AP, each against the iteration."""
    train = [r for r in records if "eval" not in r]
    evals = [r for r in records if "eval" in r]
    loss_keys = ["loss"] + sorted({k for r in train for k in r if k.startswith("loss_")})
    has_ap = any(_series(evals, key)[0] for key, _ in AP_KEYS)
    fig, axes = _figure(3 if has_ap else 2)
    ax = axes[0]
    for key in loss_keys:
        x, y = _series(train, key)
        if x:
            ax.plot(x, y, linewidth=2.2 if key == "loss" else 1.2, label=key)
    if ax.lines and all(v > 0 for line in ax.lines for v in line.get_ydata()):
        ax.set_yscale("log")
    ax.set_title("training losses")
    ax.set_ylabel("loss")
    if ax.lines:
        ax.legend(fontsize="small")
    x, y = _series(train, "lr")
    axes[1].plot(x, y, color="tab:purple", label="lr")
    axes[1].set_title("learning rate")
    axes[1].set_ylabel("lr")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if has_ap:
        for key, label in AP_KEYS:
            x, y = _series(evals, key)
            if x:
                axes[2].plot(x, y, marker="o", label=label)
        axes[2].set_title("validation AP (IoU .5:.95)")
        axes[2].set_ylabel("AP")
        axes[2].set_ylim(0.0, max(1e-3, *(v for line in axes[2].lines for v in line.get_ydata())) * 1.1)
        axes[2].legend(fontsize="small")
    for a in axes:
        a.set_xlabel("iteration")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.grid(True, alpha=0.3)
    if not train:
        axes[0].text(0.5, 0.5, "no training records", ha="center", va="center", transform=axes[0].transAxes)
    return fig


def write_training_curves(run_dir: PathLike, *, name: str = "training_curves.png") -> Path | None:
    """Draw RUN/metrics.jsonl into RUN/`name` (atomically); returns the path, or None without a log."""
    run = Path(run_dir)
    log = run / "metrics.jsonl"
    if not log.is_file():
        return None
    records = read_metrics_log(log)
    if not records:
        return None
    out = run / name
    save_png(training_curves_figure(records), out)
    return out
