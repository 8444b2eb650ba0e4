"""matplotlib figures: the training curves read from a metrics.jsonl and the precision-recall curves of a
real pycocotools evaluation. The figures' Axes hold exactly the logged numbers; the PNGs are real."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from maskrcnn.errors import UserError
from maskrcnn.evaluation.coco_eval import evaluate_coco_results
from maskrcnn.evaluation.report import write_report
from maskrcnn.plots import (
    pr_curves_figure,
    read_metrics_log,
    training_curves_figure,
    write_training_curves,
)
from maskrcnn.visualize import draw_pr_curves

LOSS_TERMS = ("loss_cls", "loss_box", "loss_mask", "loss_rpn_cls", "loss_rpn_box")


def train_record(it: int) -> dict:
    terms = {k: round(1.0 / (it + j + 1), 6) for j, k in enumerate(LOSS_TERMS)}
    lr = 0.02 * min(1.0, it / 3) * (0.1 if it > 6 else 1.0)
    return {"iteration": it, "loss": sum(terms.values()), **terms, "lr": lr, "images_per_s": 3.5,
            "nonfinite_steps": 0}  # fmt: skip


def eval_record(it: int, box: float, mask: float) -> dict:
    return {"iteration": it, "eval": f"eval_{it:07d}", "bbox/AP": box, "bbox/AP50": 0.9, "segm/AP": mask}


def write_log(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def lines_by_label(ax) -> dict:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines}


def test_training_curves_hold_the_logged_numbers(tmp_path):
    records = [train_record(it) for it in range(1, 9)]
    records.insert(4, eval_record(4, 0.125, 0.25))
    records.append(eval_record(8, 0.375, 0.5))
    write_log(tmp_path / "metrics.jsonl", records)
    assert read_metrics_log(tmp_path / "metrics.jsonl") == records

    fig = training_curves_figure(records)
    losses, lr, ap = fig.axes
    train = [r for r in records if "eval" not in r]
    iterations = list(range(1, 9))
    curves = lines_by_label(losses)
    assert set(curves) == {"loss", *LOSS_TERMS}
    for key in ("loss", *LOSS_TERMS):
        assert curves[key] == (iterations, [r[key] for r in train])
    assert losses.get_yscale() == "log"
    assert lines_by_label(lr) == {"lr": (iterations, [r["lr"] for r in train])}
    assert lines_by_label(ap) == {"box AP": ([4, 8], [0.125, 0.375]), "mask AP": ([4, 8], [0.25, 0.5])}
    assert [a.get_xlabel() for a in fig.axes] == ["iteration"] * 3

    path = write_training_curves(tmp_path)
    assert path == tmp_path / "training_curves.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "training_curves.png"]
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (1380, 380)  # three 460 x 380 panels
        pixels = np.asarray(im.convert("RGB"))
    assert (pixels < 128).mean() > 0.005  # drawn lines and text, not a blank canvas

    # other numbers give another picture; without evaluations there is no AP panel
    write_log(tmp_path / "metrics.jsonl", [dict(r, loss=r["loss"] * 3) for r in train])
    write_training_curves(tmp_path)
    with Image.open(path) as im:
        assert im.size == (920, 380)
        assert not np.array_equal(np.asarray(im.convert("RGB"))[:, :920], pixels[:, :920])


def test_training_curves_keep_nonpositive_losses_on_a_linear_axis():
    records = [dict(train_record(1), loss_mask=0.0), train_record(2)]
    losses = training_curves_figure(records).axes[0]
    assert losses.get_yscale() == "linear"
    assert lines_by_label(losses)["loss_mask"] == ([1, 2], [0.0, records[1]["loss_mask"]])


def test_metrics_log_errors_name_the_file_and_line(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text(json.dumps(train_record(1)) + "\n\n{not json\n")
    with pytest.raises(UserError, match=r"metrics\.jsonl, line 3: not JSON"):
        read_metrics_log(log)
    log.write_text('{"loss": 1.0}\n')
    with pytest.raises(UserError, match=r"metrics\.jsonl, line 1: expected an object with an 'iteration'"):
        read_metrics_log(log)
    assert write_training_curves(tmp_path / "no-run") is None


@pytest.fixture(scope="module")
def metrics(shared_data):
    """pycocotools metrics of shifted ground-truth boxes/polygons on the coco-2img val image."""
    gt_file = shared_data / "coco-2img/annotations/instances_val2017.json"
    gt = json.loads(gt_file.read_text())
    results = []
    for k, a in enumerate(a for a in gt["annotations"] if not a.get("iscrowd")):
        shift = 2.0 * (k % 4)  # some detections stay good matches, some drift off at IoU .75
        x, y, w, h = a["bbox"]
        polygons = [[v + shift for v in poly] for poly in a["segmentation"]]
        score = 1.0 - 0.03 * k
        results.append({"image_id": a["image_id"], "category_id": a["category_id"], "score": score,
                        "bbox": [x + shift, y + shift, w, h], "segmentation": polygons})  # fmt: skip
    return evaluate_coco_results(gt_file, results)


def test_pr_curves_figure_plots_the_coco_curves(metrics, tmp_path):
    fig = pr_curves_figure(metrics)
    assert [ax.get_title() for ax in fig.axes] == ["bbox (area all, 100 dets)", "segm (area all, 100 dets)"]
    for ax, iou_type in zip(fig.axes, ("bbox", "segm")):
        pr = metrics[iou_type]["pr"]
        curves = lines_by_label(ax)
        expected = {}
        for thr, stat in (("0.50", "AP50"), ("0.75", "AP75")):
            expected[f"IoU {thr}: AP {metrics[iou_type][stat]:.3f}"] = (pr["recall"], pr["precision"][thr])
        assert curves == expected
    assert metrics["bbox"]["AP50"] > metrics["bbox"]["AP75"] > 0  # two different curves

    paths = write_report(metrics, [], tmp_path)
    with Image.open(paths["pr_curve.png"]) as im:
        assert im.format == "PNG" and im.size == (920, 380)
    picture = draw_pr_curves(metrics)  # the PIL image of the same figure, for Python users
    assert picture.mode == "RGB" and picture.size == (920, 380)
    assert draw_pr_curves(metrics, panel_size=(300, 250)).size == (600, 250)


def test_pr_curves_without_data_say_so():
    fig = pr_curves_figure({"num_images": 0})
    assert [t.get_text() for t in fig.axes[0].texts] == ["no precision-recall data"]
    assert not fig.axes[0].lines
