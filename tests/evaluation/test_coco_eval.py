"""COCO evaluation: our numbers equal pycocotools' own, on coco-mini val with fixed synthetic detections."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrcnn.cli import main as cli_main
from maskrcnn.data import CocoDataset, ShapesDataset
from maskrcnn.evaluation.coco_eval import evaluate_coco_results, evaluate_model
from maskrcnn.evaluation.report import STAT_NAMES, format_per_class, format_table, write_report
from maskrcnn.structures import Detections
from tests.helpers import REPO_ROOT, ReplayModel

# pycocotools' annToMask triggers a NumPy 2 "copy keyword" DeprecationWarning inside its Cython code.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

FIELD = {"bbox": "bbox", "segm": "segmentation"}


@pytest.fixture(scope="module")
def val_json(shared_data: Path) -> Path:
    return shared_data / "coco-mini" / "annotations" / "instances_val2017.json"


def _erode(mask: np.ndarray) -> np.ndarray:
    m = mask.astype(bool)
    e = m.copy()
    e[1:] &= m[:-1]
    e[:-1] &= m[1:]
    e[:, 1:] &= m[:, :-1]
    e[:, :-1] &= m[:, 1:]
    return e


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def make_results(ann_file: Path, seed: int = 7) -> list[dict]:
    """Detections derived deterministically from the ground truth.

    Non-crowd annotations: 15% dropped; boxes jittered (sd 6% of the size); masks = GT masks, 30% of
    them eroded twice; scores uniform in [0.05, 1). Plus 150 false positives: random boxes (mask = box)
    with random categories on random images, scores in [0, 0.7).
    """
    gt = COCO(str(ann_file))
    rng = np.random.default_rng(seed)
    records = []
    for ann in sorted(gt.dataset["annotations"], key=lambda a: a["id"]):
        if ann["iscrowd"] or rng.random() < 0.15:
            continue
        x, y, w, h = ann["bbox"]
        dx, dy, dw, dh = rng.normal(0.0, 0.06, 4) * [w, h, w, h]
        mask = gt.annToMask(ann)
        if rng.random() < 0.3:
            mask = _erode(_erode(mask))
        records.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": [float(x + dx), float(y + dy), float(max(1.0, w + dw)), float(max(1.0, h + dh))],
                "score": float(rng.uniform(0.05, 1.0)),
                "segmentation": _rle(mask),
            }
        )
    image_ids, cat_ids = gt.getImgIds(), gt.getCatIds()
    for _ in range(150):
        img = gt.imgs[int(rng.choice(image_ids))]
        bw, bh = rng.uniform(8, img["width"] / 2), rng.uniform(8, img["height"] / 2)
        bx, by = rng.uniform(0, img["width"] - bw), rng.uniform(0, img["height"] - bh)
        mask = np.zeros((img["height"], img["width"]), dtype=np.uint8)
        mask[int(by) : int(by + bh), int(bx) : int(bx + bw)] = 1
        records.append(
            {
                "image_id": img["id"],
                "category_id": int(rng.choice(cat_ids)),
                "bbox": [float(bx), float(by), float(bw), float(bh)],
                "score": float(rng.uniform(0.0, 0.7)),
                "segmentation": _rle(mask),
            }
        )
    return records


def pycocotools_eval(ann_file: Path, records: list[dict], iou_type: str) -> COCOeval:
    """pycocotools run directly: each IoU type gets its own field of the records (as torchvision does)."""
    gt = COCO(str(ann_file))
    keep = ("image_id", "category_id", "score", FIELD[iou_type])
    dt = gt.loadRes([{k: r[k] for k in keep} for r in records])
    coco_eval = COCOeval(gt, dt, iou_type)
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval


@pytest.fixture(scope="module")
def results(val_json: Path) -> list[dict]:
    return make_results(val_json)


@pytest.fixture(scope="module")
def reference(val_json: Path, results: list[dict]) -> dict[str, COCOeval]:
    return {t: pycocotools_eval(val_json, results, t) for t in ("bbox", "segm")}


@pytest.fixture(scope="module")
def metrics(val_json: Path, results: list[dict]) -> dict:
    return evaluate_coco_results(val_json, results)


def test_results_are_a_real_mix(results: list[dict], reference: dict[str, COCOeval]) -> None:
    assert 400 < len(results) - 150 < 619  # about 85% of the 619 non-crowd instances, + 150 false positives
    # Neither trivial nor perfect: the comparison below is between non-degenerate numbers.
    for coco_eval in reference.values():
        assert 0.3 < coco_eval.stats[0] < 0.95 and coco_eval.stats[1] > coco_eval.stats[2]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_stats_equal_pycocotools(metrics: dict, reference: dict[str, COCOeval], iou_type: str) -> None:
    stats = reference[iou_type].stats  # all 12 are defined (> -1) here
    assert [metrics[iou_type][name] for name in STAT_NAMES] == [float(v) for v in stats]
    assert metrics["num_images"] == 79 and metrics["num_detections"] == len(reference[iou_type].cocoDt.anns)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_per_class_ap(metrics: dict, reference: dict[str, COCOeval], iou_type: str) -> None:
    coco_eval = reference[iou_type]
    per_class = metrics[iou_type]["per_class"]
    assert per_class and all(0.0 <= v <= 1.0 for v in per_class.values())
    expected = {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        p = coco_eval.eval["precision"][:, :, k, 0, -1]  # IoU .5:.95, area all, 100 detections
        if (p > -1).any():
            expected[coco_eval.cocoGt.cats[cat_id]["name"]] = float(np.mean(p[p > -1]))
    assert per_class == expected
    person = expected["person"]  # the category with most instances
    assert per_class["person"] == person and 0.0 < person < 1.0
    # The mean over categories is the overall AP (every category with GT has all T x R entries).
    assert np.mean(list(per_class.values())) == pytest.approx(metrics[iou_type]["AP"], abs=1e-12)


def test_pr_curves(metrics: dict) -> None:
    for iou_type in ("bbox", "segm"):
        pr = metrics[iou_type]["pr"]
        assert len(pr["recall"]) == 101 and pr["recall"][0] == 0.0 and pr["recall"][-1] == 1.0
        for thr, stat in (("0.50", "AP50"), ("0.75", "AP75")):
            curve = pr["precision"][thr]
            assert len(curve) == 101 and all(0.0 <= v <= 1.0 for v in curve)
            assert np.mean(curve) == pytest.approx(metrics[iou_type][stat], abs=1e-12)


def test_empty_results(val_json: Path, tmp_path: Path) -> None:
    metrics = evaluate_coco_results(val_json, [])
    for iou_type in ("bbox", "segm"):
        m = metrics[iou_type]
        assert [m[n] for n in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")] == [0.0] * 7
        assert set(m["per_class"].values()) == {0.0}
    paths = write_report(metrics, [], tmp_path)
    assert json.loads(paths["detections.json"].read_text()) == []
    assert "0.00" in format_table(metrics)


def test_bad_inputs_name_the_file(val_json: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"annotations": []}))
    with pytest.raises(ValueError, match=r"bad\.json: COCO results must be a JSON list"):
        evaluate_coco_results(val_json, bad)
    bad.write_text(
        json.dumps([{"image_id": 123456789, "category_id": 1, "score": 1.0, "bbox": [0, 0, 1, 1]}])
    )
    with pytest.raises(ValueError, match=r"bad\.json: record 0 has image_id 123456789"):
        evaluate_coco_results(val_json, bad, iou_types=("bbox",))
    with pytest.raises(ValueError, match=r"bad\.json: record 0 is missing \['segmentation'\]"):
        evaluate_coco_results(val_json, bad)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        evaluate_coco_results(tmp_path / "missing.json", [])
    assert cli_main(["evaluate-results", "--results", str(bad), "--annotations", str(val_json),
                     "--out", str(tmp_path / "r")]) == 1  # fmt: skip


def test_report_files(metrics: dict, results: list[dict], tmp_path: Path) -> None:
    paths = write_report(metrics, results, tmp_path / "report")
    assert json.loads(paths["metrics.json"].read_text()) == metrics
    assert json.loads(paths["detections.json"].read_text()) == results
    assert paths["pr_curve.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(paths["pr_curve.png"]) as im:
        im.verify()
    text = paths["per_class_ap.txt"].read_text()
    assert format_table(metrics) in text and format_per_class(metrics) in text
    person = next(line for line in text.splitlines() if line.startswith("person "))
    assert f"{100 * metrics['segm']['per_class']['person']:.2f}" in person


def test_cli_evaluate_results(val_json: Path, results: list[dict], reference: dict, tmp_path: Path) -> None:
    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(results))
    out = tmp_path / "report"
    cmd = [sys.executable, "-m", "maskrcnn", "evaluate-results", "--results", str(results_file),
           "--annotations", str(val_json), "--out", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for iou_type, coco_eval in reference.items():
        names = ("AP", "AP50", "AP75", "APs", "APm", "APl")
        assert [metrics[iou_type][n] for n in names] == [float(v) for v in coco_eval.stats[:6]]
    assert json.loads((out / "detections.json").read_text()) == results
    assert (out / "pr_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "segm" in proc.stdout and "person" in proc.stdout


def oracle(dataset) -> ReplayModel:
    """A stand-in model that 'predicts' each item's ground truth, in dataset order."""
    detections = []
    for i in range(len(dataset)):
        t, _ = dataset.load_targets(i)
        scores = torch.linspace(1.0, 0.5, len(t))
        detections.append(Detections(t.boxes, scores, t.labels, t.masks.bool()))
    return ReplayModel(detections)


def test_evaluate_model_shapes_oracle_is_perfect() -> None:
    dataset = ShapesDataset(6, seed=3)
    metrics, records = evaluate_model(oracle(dataset), dataset, batch_size=4, progress=False)
    assert metrics["bbox"]["AP"] == 1.0 and metrics["segm"]["AP"] == 1.0
    assert {r["image_id"] for r in records} == set(range(6)) and {r["category_id"] for r in records} <= {
        1,
        2,
        3,
    }


def test_evaluate_model_coco_uses_original_file(val_json: Path, tmp_path: Path, shared_data: Path) -> None:
    """A CocoDataset is scored against its own file: sparse category ids and crowd regions kept."""
    data = json.loads(val_json.read_text())
    crowd_images = sorted({a["image_id"] for a in data["annotations"] if a["iscrowd"]})
    keep = set(crowd_images[:2]) | {im["id"] for im in data["images"][:4]}
    subset = {
        "images": [im for im in data["images"] if im["id"] in keep],
        "annotations": [a for a in data["annotations"] if a["image_id"] in keep],
        "categories": data["categories"],
    }
    ann_file = tmp_path / "subset.json"
    ann_file.write_text(json.dumps(subset))
    dataset = CocoDataset(ann_file, shared_data / "coco-mini" / "val2017")
    metrics, records = evaluate_model(oracle(dataset), dataset, progress=False)
    assert metrics["segm"]["AP"] == 1.0  # the decoded masks are exactly COCOeval's masks
    assert 0.9 < metrics["bbox"]["AP"] < 1.0  # tight mask boxes differ slightly from the JSON boxes
    assert len(records) == sum(1 for a in subset["annotations"] if not a["iscrowd"])
    assert {r["category_id"] for r in records} == {a["category_id"] for a in subset["annotations"]}


def test_cli_evaluate_with_checkpoint(tmp_path: Path) -> None:
    """`maskrcnn evaluate` end to end (in process) with a small randomly initialised model."""
    from maskrcnn.config import shapes_demo
    from maskrcnn.engine.checkpoint import save_model
    from maskrcnn.model import build_model

    torch.manual_seed(0)
    save_model(build_model(shapes_demo(), class_names=["square", "circle", "triangle"]), tmp_path / "m.pt")
    out = tmp_path / "eval"
    argv = ["evaluate", "--weights", str(tmp_path / "m.pt"), "--data", "shapes:2", "--out", str(out)]
    assert cli_main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["bbox"]["AP"] <= 1.0 and 0.0 <= metrics["segm"]["AP"] <= 1.0
    assert metrics["num_detections"] == len(json.loads((out / "detections.json").read_text()))


def _small_people(val_json: Path, tmp_path: Path, count: int = 6) -> Path:
    """The `count` coco-mini val images with the most people of about 30 x 60 pixels (the size of the
    random model's boxes below), as a COCO file; they include crowd regions."""
    data = json.loads(val_json.read_text())
    people: dict[int, int] = {}
    for a in data["annotations"]:
        w, h = a["bbox"][2:]
        if a["category_id"] == 1 and not a["iscrowd"] and 15 <= w <= 60 and 40 <= h <= 120:
            people[a["image_id"]] = people.get(a["image_id"], 0) + 1
    keep = set(sorted(people, key=lambda i: (-people[i], i))[:count])
    subset = {
        "images": [im for im in data["images"] if im["id"] in keep],
        "annotations": [a for a in data["annotations"] if a["image_id"] in keep],
        "categories": data["categories"],
    }
    assert any(a["iscrowd"] for a in subset["annotations"])
    path = tmp_path / "people.json"
    path.write_text(json.dumps(subset))
    return path


def _anchor_model(path: Path) -> None:
    """A small random model whose detections are its anchors (no box regression, in the RPN or the
    box head): 100 person- and bicycle-labelled boxes per image, some of which overlap real people,
    so that several COCO stats are above zero. Its masks cover about 2/3 of their boxes (damped
    random mask logits plus 1), so mask areas, which decide APs/APm/APl for segm, differ from box
    areas."""
    from maskrcnn.config import apply_overrides, get_preset
    from maskrcnn.engine.checkpoint import atomic_save, model_state
    from maskrcnn.model import build_model
    from tests.helpers import TINY

    torch.manual_seed(0)
    overrides = ["model.roi_heads.detections_per_image=100", "model.input.min_size=[320]"]
    cfg = apply_overrides(get_preset("default"), [*TINY, *overrides, "model.input.max_size=640"])
    state = model_state(build_model(cfg, class_names=["person", "bicycle"]))
    weights = state["model"]
    regression = [k for k in weights if "deltas" in k or "bbox_pred" in k]
    mask_logits = [k for k in weights if k.startswith("roi_heads.mask") and ".predictor." in k]
    assert len(regression) == 4 and len(mask_logits) == 2, (regression, mask_logits)
    for key in regression:
        weights[key] = torch.zeros_like(weights[key])
    for key in mask_logits:
        weights[key] = torch.ones_like(weights[key]) if key.endswith("bias") else weights[key] * 0.03
    atomic_save(state, path)


@pytest.mark.filterwarnings("ignore:the model's classes:UserWarning")
def test_cli_evaluate_equals_pycocotools_on_its_own_detections(val_json, shared_data, tmp_path) -> None:
    """`maskrcnn evaluate`: the metrics it reports are pycocotools' own stats, run here independently
    on the detections file it wrote and the same ground truth."""
    _anchor_model(tmp_path / "m.pt")
    ann_file = _small_people(val_json, tmp_path)
    out = tmp_path / "eval"
    data = f"coco:{ann_file}:{shared_data / 'coco-mini' / 'val2017'}"
    assert cli_main(["evaluate", "--weights", str(tmp_path / "m.pt"), "--data", data, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    records = json.loads((out / "detections.json").read_text())
    assert len(records) == metrics["num_detections"] > 300
    gt = COCO(str(ann_file))
    for iou_type, field in FIELD.items():
        # each IoU type sees only its own field, as torchvision's and detectron2's evaluators do
        dt = gt.loadRes([{k: r[k] for k in ("image_id", "category_id", "score", field)} for r in records])
        coco_eval = COCOeval(gt, dt, iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
        ours = [-1.0 if metrics[iou_type][n] is None else metrics[iou_type][n] for n in STAT_NAMES]
        assert ours == coco_eval.stats.tolist(), iou_type
        assert sum(v > 0 for v in ours) >= 4, f"{iou_type}: too few non-zero stats to compare: {ours}"
