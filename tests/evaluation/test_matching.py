"""`CrowdedCOCOeval` (numpy matching) gives pycocotools' COCOeval results exactly: every image's
matches and ignore flags, and the 12 stats, on coco-mini val (crowd regions, every area range, boxes
jittered, false positives, several IoU types) and on a crowded synthetic image; and it is fast there."""

from __future__ import annotations

import contextlib
import io
import time

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrcnn.evaluation.matching import CrowdedCOCOeval


def _run(cls, gt: COCO, results: list[dict], iou_type: str, images=None):
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        e = cls(gt, dt, iou_type)
        if images is not None:
            e.params.imgIds = images
        start = time.perf_counter()
        e.evaluate()
        seconds = time.perf_counter() - start
        e.accumulate()
        e.summarize()
    return e, seconds


def _assert_same(ours: COCOeval, theirs: COCOeval) -> None:
    assert len(ours.evalImgs) == len(theirs.evalImgs)
    for a, b in zip(ours.evalImgs, theirs.evalImgs):
        assert (a is None) == (b is None)
        if a is None:
            continue
        assert a["dtIds"] == b["dtIds"] and a["gtIds"] == b["gtIds"]
        for key in ("dtMatches", "gtMatches", "dtIgnore", "gtIgnore"):
            assert np.array_equal(a[key], b[key]), key
    assert np.array_equal(ours.stats, theirs.stats)
    assert np.array_equal(ours.eval["precision"], theirs.eval["precision"])


def _jittered_results(gt: COCO, rng: np.random.Generator) -> list[dict]:
    """Per ground-truth instance 0-2 detections near it (crowd regions too), plus false positives."""
    results = []
    for ann in gt.dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        for _ in range(int(rng.integers(0, 3))):
            dx, dy, dw, dh = rng.normal(0, 0.15, 4) * [w, h, w, h]
            box = [x + dx, y + dy, max(1.0, w + dw), max(1.0, h + dh)]
            results.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": box})
    for image in gt.dataset["images"]:
        for _ in range(5):
            w, h = rng.uniform(5, 200, 2)
            x, y = rng.uniform(0, image["width"] - w), rng.uniform(0, image["height"] - h)
            cat = int(rng.choice(gt.getCatIds()))
            results.append({"image_id": image["id"], "category_id": cat, "bbox": [x, y, w, h]})
    for r in results:
        r["score"] = float(rng.choice([0.3, 0.5, 0.9]))  # ties: the stable sort's order matters
    return results


def test_equal_to_pycocotools_on_coco_mini(shared_data):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(shared_data / "coco-mini/annotations/instances_val2017.json"))
    assert any(a["iscrowd"] for a in gt.dataset["annotations"])
    results = _jittered_results(gt, np.random.default_rng(0))
    crowded = {a["image_id"] for a in gt.dataset["annotations"] if a["iscrowd"]}
    images = sorted(crowded | set(sorted(gt.getImgIds())[:20]))  # crowd regions, and 20 more
    for iou_type in ("bbox", "segm"):
        if iou_type == "segm":  # the box as a polygon: its mask IoU with the instance's outline
            for r in results:
                x, y, w, h = r["bbox"]
                r["segmentation"] = [[x, y, x + w, y, x + w, y + h, x, y + h]]
        ours, _ = _run(CrowdedCOCOeval, gt, results, iou_type, images)
        theirs, _ = _run(COCOeval, gt, results, iou_type, images)
        _assert_same(ours, theirs)
        assert 0.01 < ours.stats[0] < 0.95  # a real mix of matches and misses


def test_equal_and_faster_on_a_crowded_image():
    rng = np.random.default_rng(1)
    grid, cell = 24, 10  # 576 instances of 6x6 px, 2 classes
    anns, results = [], []
    for k in range(grid * grid):
        x, y = cell * (k % grid), cell * (k // grid)
        anns.append(
            {
                "id": k + 1,
                "image_id": 1,
                "category_id": 1 + k % 2,
                "bbox": [x, y, 6, 6],
                "area": 36,
                "iscrowd": 0,
            }
        )
        dx, dy = rng.integers(-1, 2, 2)
        results.append(
            {"image_id": 1, "category_id": 1 + k % 2, "bbox": [x + dx, y + dy, 6, 6], "score": 0.5}
        )
    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "width": grid * cell, "height": grid * cell}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    ours, fast = _run(CrowdedCOCOeval, gt, results, "bbox")
    theirs, slow = _run(COCOeval, gt, results, "bbox")
    _assert_same(ours, theirs)
    assert ours.stats[1] > 0.1  # AP50: up to 100 of 288 per class are found
    assert fast < slow / 3, (fast, slow)
