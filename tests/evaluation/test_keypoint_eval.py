"""COCO keypoint AP: `maskrcnn evaluate-results` and `evaluate_model` give pycocotools' own numbers
on coco-mini val persons (person_keypoints_val2017.json), with COCO's sigmas or given ones."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from maskrcnn.cli import main as cli_main
from maskrcnn.config import torchvision_keypoint
from maskrcnn.data import CocoDataset
from maskrcnn.errors import UserError
from maskrcnn.evaluation.coco_eval import evaluate_coco_results, evaluate_model
from maskrcnn.evaluation.keypoint_eval import parse_sigmas
from maskrcnn.evaluation.report import KEYPOINT_STAT_NAMES, format_per_class, format_table
from maskrcnn.structures import Detections
from tests.helpers import ReplayModel

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def keypoint_results(ann_file: Path, seed: int = 5) -> list[dict]:
    """COCO keypoint results made from the ground truth: every person with labelled keypoints,
    15% dropped; keypoints moved by N(0, 4% of the box size), unlabelled ones put at the box centre;
    scores random; plus one false detection per image (a kept person shifted by half its box)."""
    rng = np.random.default_rng(seed)
    data = json.loads(ann_file.read_text())
    out, shifted = [], {}
    for a in sorted(data["annotations"], key=lambda a: a["id"]):
        if a["iscrowd"] or a["num_keypoints"] == 0 or rng.random() < 0.15:
            continue
        x, y, w, h = a["bbox"]
        kps = np.array(a["keypoints"], dtype=np.float64).reshape(-1, 3)
        unlabelled = kps[:, 2] == 0
        kps[unlabelled, :2] = (x + w / 2, y + h / 2)
        kps[:, 0] += rng.normal(0, 0.04 * w, len(kps))
        kps[:, 1] += rng.normal(0, 0.04 * h, len(kps))
        kps[:, 2] = rng.uniform(0.2, 1.0, len(kps))
        record = {"image_id": a["image_id"], "category_id": 1, "keypoints": np.round(kps, 2).ravel().tolist()}
        out.append({**record, "score": round(float(rng.uniform(0.3, 1.0)), 4)})
        fake = kps.copy()
        fake[:, 0] += w / 2
        shifted[a["image_id"]] = {**record, "keypoints": np.round(fake, 2).ravel().tolist(), "score": 0.5}
    return out + [shifted[k] for k in sorted(shifted)]


def pycocotools_stats(ann_file: Path, results_file: Path, sigmas=None) -> np.ndarray:
    """pycocotools run directly, as its own demo does."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        dt = gt.loadRes(str(results_file))
        e = COCOeval(gt, dt, iouType="keypoints")
        if sigmas is not None:
            e.params.kpt_oks_sigmas = np.array(sigmas)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats


def _cli_metrics(tmp_path: Path, results: Path, ann: Path, *extra: str) -> tuple[int, dict, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli_main(["evaluate-results", "--results", str(results), "--annotations", str(ann),
                       "--out", str(tmp_path / "report"), *extra])  # fmt: skip
    metrics_file = tmp_path / "report" / "metrics.json"
    return rc, json.loads(metrics_file.read_text()) if rc == 0 else {}, out.getvalue()


def test_evaluate_results_equals_pycocotools(keypoints_json: Path, tmp_path: Path) -> None:
    results_file = tmp_path / "keypoint_results.json"
    results_file.write_text(json.dumps(keypoint_results(keypoints_json)))
    rc, metrics, printed = _cli_metrics(tmp_path, results_file, keypoints_json)
    assert rc == 0 and set(metrics) == {"keypoints", "num_images", "num_detections"}
    stats = pycocotools_stats(keypoints_json, results_file)
    ours = [metrics["keypoints"][n] for n in KEYPOINT_STAT_NAMES]
    assert ours == [float(v) if v > -1 else None for v in stats]  # exactly
    assert 0.3 < metrics["keypoints"]["AP"] < 0.95  # the jitter and the false detections cost AP
    assert metrics["keypoints"]["per_class"] == {"person": pytest.approx(stats[0], abs=1e-12)}
    assert "keypoints" in printed.splitlines()[1] and "person" in printed


def test_given_sigmas_change_the_numbers_as_in_pycocotools(keypoints_json: Path, tmp_path: Path) -> None:
    results_file = tmp_path / "keypoint_results.json"
    results_file.write_text(json.dumps(keypoint_results(keypoints_json, seed=11)))
    sigmas = [0.05] * 17
    rc, metrics, _ = _cli_metrics(
        tmp_path, results_file, keypoints_json, "--oks-sigmas", ",".join(map(str, sigmas))
    )
    assert rc == 0
    stats = pycocotools_stats(keypoints_json, results_file, sigmas)
    assert [metrics["keypoints"][n] for n in KEYPOINT_STAT_NAMES] == [float(v) for v in stats]
    assert metrics["keypoints"]["AP"] != pytest.approx(
        pycocotools_stats(keypoints_json, results_file)[0], abs=1e-3
    )


def _three_keypoint_gt(keypoints_json: Path, tmp_path: Path) -> Path:
    """The persons with only nose, left_eye and right_eye: a custom set COCO has no sigmas for."""
    data = json.loads(keypoints_json.read_text())
    cat = data["categories"][0]
    cat["keypoints"], cat["skeleton"] = cat["keypoints"][:3], [[1, 2], [1, 3]]
    for a in data["annotations"]:
        a["keypoints"] = a["keypoints"][:9]
        a["num_keypoints"] = sum(1 for v in a["keypoints"][2::3] if v > 0)
    path = tmp_path / "faces.json"
    path.write_text(json.dumps(data))
    return path


def test_custom_keypoints_need_sigmas(keypoints_json: Path, tmp_path: Path) -> None:
    gt = _three_keypoint_gt(keypoints_json, tmp_path)
    records = [{**r, "keypoints": r["keypoints"][:9]} for r in keypoint_results(keypoints_json)]
    results_file = tmp_path / "faces_results.json"
    results_file.write_text(json.dumps(records))
    with pytest.raises(
        UserError, match=r"faces\.json: keypoint AP needs OKS sigmas for this custom set of 3"
    ):
        evaluate_coco_results(gt, results_file)
    rc, _, _ = _cli_metrics(tmp_path, results_file, gt)
    assert rc == 1
    with pytest.raises(UserError, match=r"--oks-sigmas '0.02,x': expected comma-separated numbers"):
        parse_sigmas("0.02,x")
    with pytest.raises(UserError, match=r"2 OKS sigmas given for the ground truth's 3 keypoints"):
        evaluate_coco_results(gt, results_file, oks_sigmas=[0.1, 0.1])
    rc, metrics, _ = _cli_metrics(tmp_path, results_file, gt, "--oks-sigmas", "0.026,0.025,0.025")
    assert rc == 0
    stats = pycocotools_stats(gt, results_file, [0.026, 0.025, 0.025])
    assert [metrics["keypoints"][n] for n in KEYPOINT_STAT_NAMES] == [float(v) for v in stats]


def test_bad_keypoint_records_name_the_file(keypoints_json: Path, tmp_path: Path) -> None:
    records = keypoint_results(keypoints_json)
    records[3] = {**records[3], "keypoints": records[3]["keypoints"][:-3]}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(records))
    with pytest.raises(UserError, match=r"bad\.json: record 3: keypoints must be 51 numbers"):
        evaluate_coco_results(keypoints_json, bad)
    instances = keypoints_json.parent / "instances_val2017.json"
    with pytest.raises(UserError, match=r"instances_val2017\.json: the ground truth has no keypoints"):
        evaluate_coco_results(instances, keypoint_results(keypoints_json), iou_types=("keypoints",))


def keypoint_oracle(dataset: CocoDataset) -> ReplayModel:
    """A stand-in keypoint model that 'predicts' each item's ground-truth persons that have labelled
    keypoints, with keypoint scores 1; it carries the torchvision_keypoint config (COCO's sigmas)."""
    detections = []
    for i in range(len(dataset)):
        t, _ = dataset.load_targets(i)
        t = t.select((t.keypoints[..., 2] > 0).any(dim=1))
        kps = t.keypoints.clone()
        kps[..., 2] = 1.0
        scores = torch.linspace(1.0, 0.5, len(t))
        detections.append(Detections(t.boxes, scores, t.labels, t.masks.bool(), keypoints=kps))
    return ReplayModel(detections, config=torchvision_keypoint())


def test_evaluate_model_reports_keypoint_ap(keypoints_json: Path, shared_data: Path, tmp_path: Path) -> None:
    data = json.loads(keypoints_json.read_text())
    keep = sorted({a["image_id"] for a in data["annotations"] if a["num_keypoints"] > 0})[:5]
    subset = {
        **data,
        "images": [im for im in data["images"] if im["id"] in keep],
        "annotations": [a for a in data["annotations"] if a["image_id"] in keep],
    }
    ann = tmp_path / "subset.json"
    ann.write_text(json.dumps(subset))
    dataset = CocoDataset(ann, shared_data / "coco-mini" / "val2017")
    metrics, records = evaluate_model(keypoint_oracle(dataset), dataset, progress=False)
    assert set(metrics) >= {"bbox", "segm", "keypoints"}
    assert metrics["keypoints"]["AP"] == 1.0
    assert metrics["segm"]["AP"] < 1.0  # the persons without labelled keypoints are missed, and only there
    assert all(len(r["keypoints"]) == 51 for r in records)
    table = format_table(metrics).splitlines()
    assert [row.split()[0] for row in table] == ["IoU", "bbox", "segm", "keypoints"]
    assert table[3].split()[1:4] == ["100.00", "100.00", "100.00"] and "keypoints AP" in format_per_class(
        metrics
    )
