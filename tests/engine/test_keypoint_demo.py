"""`maskrcnn demo --keypoints` end to end on a tiny schedule: trains on the shapes' corner keypoints,
evaluates box and keypoint AP on held-out shapes (pycocotools, the preset's OKS sigmas), writes the
summary and the ground truth | prediction pictures with skeletons."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from maskrcnn.cli import main
from maskrcnn.config import resolve
from maskrcnn.data.shapes import KEYPOINT_NAMES, KEYPOINT_SKELETON
from tests.helpers import TINY_NET


def test_keypoint_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "kp-demo"
    schedule = ["solver.max_iter=2", "solver.ims_per_batch=2", "solver.warmup_iters=1", "solver.steps=[1]"]
    tiny = [*TINY_NET, "model.roi_heads.keypoint_head_dim=16", "model.roi_heads.keypoint_head_convs=1"]
    args = [
        "demo",
        "--keypoints",
        "--out",
        str(out),
        "--train-images",
        "4",
        "--val-images",
        "3",
        "--no-progress",
    ]
    assert main(args + tiny + schedule + ["train.log_period=1", "data.num_workers=0"]) == 0

    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["iterations"] == 2 and "mask_AP" not in summary
    assert 0.0 <= summary["box_AP"] <= 1.0 and 0.0 <= summary["keypoint_AP"] <= 1.0
    printed = capsys.readouterr().out
    assert f"keypoint AP {summary['keypoint_AP']:.3f}" in printed and "keypoints" in printed
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["keypoints"]["AP"] == summary["keypoint_AP"] and "segm" not in metrics

    # the model: the preset's keypoint branch, the dataset's corner names and skeleton, no masks
    config = (out / "config.yaml").read_text()
    for name in KEYPOINT_NAMES:
        assert f"- {name}" in config
    cfg = resolve(str(out / "config.yaml"))
    assert cfg.model.keypoints.skeleton == KEYPOINT_SKELETON and cfg.model.keypoints.oks_sigmas == (0.1,) * 4
    assert cfg.model.roi_heads.keypoint_on and not cfg.model.roi_heads.mask_on
    records = json.loads((out / "eval" / "detections.json").read_text())
    assert all(len(r["keypoints"]) == 4 * 3 and "segmentation" not in r for r in records)

    pictures = sorted((out / "overlays").glob("*.png"))
    assert len(pictures) == 3
    picture = np.asarray(Image.open(pictures[0]))
    assert picture.shape[1] == 2 * 384 + 10 and picture.shape[0] > 384
    assert (out / "model_final.pt").is_file() and (out / "training_curves.png").is_file()
