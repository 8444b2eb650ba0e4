"""Error analysis (maskrcnn.evaluation.tide, errors.html): our dAP per error type, overall and per
class, equals tidecv 1.0.1's (tests/evaluation/tidecv_reference.py, run in the same test) within
1e-3 for bbox and segm on coco-mini val, for detections made from the ground truth with every kind
of error and for a decisive model's detections through `maskrcnn evaluate`; errors.html renders in
headless Chromium with the chart's bars."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from maskrcnn.cli import main as cli_main
from maskrcnn.config import apply_overrides, get_preset
from maskrcnn.engine.checkpoint import save_model
from maskrcnn.evaluation.errors_page import COLORS, GALLERY
from maskrcnn.evaluation.tide import ERROR_TYPES, SPECIAL_TYPES
from maskrcnn.model import build_model
from tests.conftest import skip_or_fail_in_ci
from tests.helpers import TINY, chromium_screenshot, coco_subset, find_chromium

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
TYPES = (*ERROR_TYPES, *SPECIAL_TYPES)
REFERENCE = Path(__file__).with_name("tidecv_reference.py")


@pytest.fixture(scope="module")
def val_json(shared_data: Path) -> Path:
    return shared_data / "coco-mini" / "annotations" / "instances_val2017.json"


def tidecv(gt_file: Path, results_file: Path) -> dict:
    if importlib.util.find_spec("tidecv") is None:
        skip_or_fail_in_ci("tidecv is not installed (pip install --no-deps tidecv==1.0.1 appdirs)")
    done = subprocess.run(
        [sys.executable, str(REFERENCE), str(gt_file), str(results_file)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def assert_equal_to_tidecv(ours: dict, reference: dict, gt: COCO) -> None:
    for iou_type in ("bbox", "segm"):
        mine, ref = ours[iou_type], reference[iou_type]
        for t in ("AP50", *TYPES):
            assert abs(mine[t] - ref[t]) < 1e-3, (iou_type, t, mine[t], ref[t])
        names = {str(k): c["name"] for k, c in gt.cats.items()}
        assert set(mine["per_class"]) == {names[k] for k in ref["per_class"]}
        for k, row in ref["per_class"].items():
            for t in TYPES:
                got = mine["per_class"][names[k]][t]
                assert abs(got - row[t]) < 1e-3, (iou_type, names[k], t, got, row[t])


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mistaken_results(ann_file: Path, seed: int = 3) -> list[dict]:
    """Detections made from the ground truth with every kind of error, scores rounded to 2 decimals
    (ties, as rounded scores give): per non-crowd object one of found (box jittered, the mask),
    poorly located (shifted by 60-90 % of its size: box and mask), wrong class, both, missed; found
    ones get a lower-scored duplicate at times; crowd regions one detection each; plus background
    boxes on random images."""
    gt = COCO(str(ann_file))
    rng = np.random.default_rng(seed)
    cat_ids = gt.getCatIds()
    records = []

    def add(ann: dict, category: int, shift: tuple[float, float], score: float) -> None:
        x, y, w, h = ann["bbox"]
        dx, dy = shift[0] * w, shift[1] * h
        mask = np.roll(gt.annToMask(ann), (int(round(dy)), int(round(dx))), axis=(0, 1))
        box = [float(x + dx), float(y + dy), float(w), float(h)]
        records.append(
            {
                "image_id": ann["image_id"],
                "category_id": category,
                "bbox": box,
                "score": round(score, 2),
                "segmentation": _rle(mask),
            }
        )

    for ann in sorted(gt.dataset["annotations"], key=lambda a: a["id"]):
        if ann["iscrowd"]:  # a detection on the crowd region, of its class: ignored in the AP, typed
            add(ann, ann["category_id"], (0.0, 0.0), float(rng.uniform(0.3, 1.0)))
            continue
        kind = rng.choice(["found", "found", "loc", "cls", "both", "miss"])
        other = int(rng.choice([c for c in cat_ids if c != ann["category_id"]]))
        jitter = tuple(rng.normal(0.0, 0.04, 2))
        far = tuple(rng.uniform(0.6, 0.9, 2) * rng.choice([-1, 1], 2))
        score = float(rng.uniform(0.05, 1.0))
        if kind == "found":
            add(ann, ann["category_id"], jitter, score)
            if rng.random() < 0.3:
                add(ann, ann["category_id"], tuple(rng.normal(0.0, 0.04, 2)), score * rng.uniform(0.3, 1.0))
        elif kind in ("loc", "both"):
            add(ann, ann["category_id"] if kind == "loc" else other, far, score)
        elif kind == "cls":
            add(ann, other, jitter, score)
    for _ in range(60):
        img = gt.imgs[int(rng.choice(gt.getImgIds()))]
        w, h = rng.uniform(10, 60, 2)
        x, y = rng.uniform(0, img["width"] - w), rng.uniform(0, img["height"] - h)
        mask = np.zeros((img["height"], img["width"]), np.uint8)
        mask[int(y) : int(y + h), int(x) : int(x + w)] = 1
        records.append(
            {
                "image_id": img["id"],
                "category_id": int(rng.choice(cat_ids)),
                "bbox": [float(x), float(y), float(w), float(h)],
                "score": round(float(rng.uniform(0.0, 0.8)), 2),
                "segmentation": _rle(mask),
            }
        )
    return records


@pytest.fixture(scope="module")
def mistaken(shared_data, val_json, tmp_path_factory) -> tuple[Path, Path, str]:
    """`maskrcnn evaluate-results --images` of `mistaken_results` on coco-mini val; -> (the results
    file, the report folder, what it printed)."""
    tmp = tmp_path_factory.mktemp("tide-mistaken")
    results, out = tmp / "results.json", tmp / "report"
    results.write_text(json.dumps(mistaken_results(val_json)))
    argv = ["evaluate-results", "--results", str(results), "--annotations", str(val_json), "--out", str(out)]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert cli_main([*argv, "--images", str(shared_data / "coco-mini/val2017")]) == 0
    return results, out, stdout.getvalue()


def test_every_error_type_equals_tidecv(mistaken, val_json):
    results, out, printed = mistaken
    errors = json.loads((out / "metrics.json").read_text())["errors"]
    assert_equal_to_tidecv(errors, tidecv(val_json, results), COCO(str(val_json)))
    for iou_type in ("bbox", "segm"):  # every error type happens, and costs AP
        assert all(errors[iou_type]["counts"][t] > 0 for t in ERROR_TYPES), errors[iou_type]["counts"]
        assert all(errors[iou_type][t] > 0.1 for t in ("Cls", "Loc", "Dupe", "Bkg", "Miss", "FalseNeg"))
    lines = printed.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("dAP (IoU .5)"))
    assert lines[at].split()[-8:] == list(TYPES)  # the table of the report: a row per IoU type
    for row, iou_type in zip(lines[at + 1 : at + 3], ("bbox", "segm")):
        cells = row.split()
        assert cells[0] == iou_type
        assert [float(c) for c in cells[2:]] == pytest.approx([errors[iou_type][t] for t in TYPES], abs=0.006)


@pytest.fixture(scope="module")
def evaluated(shared_data, val_json, tmp_path_factory) -> tuple[Path, Path]:
    """`maskrcnn evaluate` on the first 10 images of coco-mini val (their own COCO file) of a tiny
    random one-class ("person") model at 128 px, made decisive (sharp class scores, spread box
    deltas and mask logits); -> (the report folder, the ground-truth file)."""
    tmp = tmp_path_factory.mktemp("tide-model")
    ids = sorted(COCO(str(val_json)).getImgIds())[:10]
    gt_file, image_dir = coco_subset(shared_data, tmp / "val10.json", image_ids=ids)
    cfg = apply_overrides(
        get_preset("default"), [*TINY, "model.num_classes=1", "model.roi_heads.detections_per_image=100"]
    )
    torch.manual_seed(0)
    model = build_model(cfg, class_names=["person"])
    with torch.no_grad():
        model.roi_heads.box.predictor.cls_score.weight.mul_(30)
        model.roi_heads.box.predictor.bbox_pred.weight.mul_(20)
        model.roi_heads.mask.head.predictor.weight.mul_(10)
    save_model(model, tmp / "w.pt")
    out = tmp / "run"
    data = f"coco:{gt_file}:{image_dir}"
    argv = ["evaluate", "--weights", str(tmp / "w.pt"), "--data", data, "--out", str(out), "--no-progress"]
    with pytest.warns(UserWarning, match="differ from the dataset"):  # 1 class of 80: person
        assert cli_main(argv) == 0
    return out, gt_file


def test_model_results_equal_tidecv(evaluated):
    out, gt_file = evaluated
    errors = json.loads((out / "metrics.json").read_text())["errors"]
    assert_equal_to_tidecv(errors, tidecv(gt_file, out / "detections.json"), COCO(str(gt_file)))
    for iou_type in ("bbox", "segm"):  # a random model's: mostly Bkg, Both and Loc, some Cls, misses
        counts = errors[iou_type]["counts"]
        assert sum(counts.values()) > 100 and sum(1 for t in ERROR_TYPES if counts[t]) >= 4, counts
    page = (out / "errors.html").read_text()
    assert page.count("<figure>") >= 12 and "id='chart'" in page  # galleries of its errors


def test_errors_page_renders_in_chromium(mistaken, tmp_path):
    evaluated = mistaken[1]
    chromium = find_chromium()
    if chromium is None:
        skip_or_fail_in_ci("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    page = (evaluated / "errors.html").read_text()
    assert page.count("<figure>") == 2 * len(ERROR_TYPES) * GALLERY  # full galleries
    pixels = chromium_screenshot(chromium, evaluated / "errors.html", tmp_path, size=(1100, 900)).astype(int)
    errors = json.loads((evaluated / "metrics.json").read_text())["errors"]["bbox"]
    shown = [t for t in TYPES if errors[t] > 0.5]  # bars long enough to be seen
    assert len(shown) >= 5
    for t in shown:  # the bar colour is on the screen, in the chart's area below the header
        color = np.array([int(COLORS[t][i : i + 2], 16) for i in (1, 3, 5)])
        hits = (np.abs(pixels[60:600] - color).max(axis=2) <= 6).sum()
        assert hits > 100, (t, hits)


def test_a_missing_image_folder_is_one_error_line(val_json, tmp_path, capsys):
    results = tmp_path / "results.json"
    results.write_text("[]")
    argv = ["evaluate-results", "--results", str(results), "--annotations", str(val_json)]
    assert cli_main([*argv, "--out", str(tmp_path / "out"), "--images", str(tmp_path / "nowhere")]) == 1
    err = capsys.readouterr().err
    assert (
        err == f"error: --images {tmp_path / 'nowhere'}: not a folder (the image folder of the annotations)\n"
    )
    assert not (tmp_path / "out").exists()
