"""`maskrcnn benchmark` (maskrcnn.benchmark) on a tiny CPU setting: both models agree, rows and JSON are
complete.

No timing thresholds: only that every measurement ran and its numbers are sane.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from maskrcnn.benchmark.demo_counterpart import torchvision_counterpart
from maskrcnn.benchmark.detectron2_row import build_detectron2, detectron2_dir
from maskrcnn.benchmark.onnx_row import int8_tools
from maskrcnn.benchmark.report import format_report
from maskrcnn.benchmark.speed import Settings
from maskrcnn.benchmark.speed import main as speed_main
from maskrcnn.benchmark.timing import compare
from maskrcnn.benchmark.workloads import coco_models, coco_train_batches, default_coco_dir, shapes_batches
from maskrcnn.cli import main as cli_main
from maskrcnn.config import get_preset
from maskrcnn.convert.detectron2 import convert_state_dict as convert_d2
from maskrcnn.errors import UserError
from maskrcnn.hardware import REPORTED_FLAGS, cpu_isa_flags, has_native_bf16
from maskrcnn.model import build_model
from tests.model.tv_reference import assert_losses_match

TINY = [
    "--threads", "1", "--runs", "1", "--warmup", "0", "--images", "1", "--min-size", "160",
    "--max-size", "224", "--detections", "10", "--proposals", "100", "--train-steps", "1",
    "--demo-batch", "2", "--calibration-images", "2",
]  # fmt: skip
VARIANTS = ["torchvision", "ours, tv roi_align", "ours", "ours, channels_last"]
# inference-only rows last; int8 once maskrcnn.export.quantize exists, bf16 on a CPU with native bf16
OPTIONAL = {"ours, onnxruntime int8": int8_tools()[0] is not None, "ours, bf16": has_native_bf16("cpu")}
INFERENCE_VARIANTS = [
    v
    for v in [*VARIANTS, "ours, folded BN", "detectron2", "ours, onnxruntime", *OPTIONAL]
    if OPTIONAL.get(v, True)
]
APPROXIMATE = {"detectron2", "ours, onnxruntime int8", "ours, bf16"}  # other arithmetic: counts only


def test_cli_benchmark_writes_json_with_matching_detections(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        assert cli_main(["benchmark", *TINY, "--out", str(tmp_path / "speed.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    result = json.loads((tmp_path / "speed.json").read_text())
    for key in ("device", "device_type", "threads", "torch", "torchvision", "settings", "images"):
        assert key in result
    assert result["device_type"] == "cpu" and result["threads"] == 1
    assert result["settings"]["min_size"] == 160 and len(result["images"]) == 1

    inference = result["inference"]
    assert [r["variant"] for r in inference] == INFERENCE_VARIANTS
    assert result["onnxruntime"]  # CI installs the onnx extra
    assert len(result["notes"]) == sum(not ok for ok in OPTIONAL.values()), result["notes"]
    assert result["cpu_flags"] == sorted(cpu_isa_flags(), key=REPORTED_FLAGS.index)
    tv_counts = inference[0]["detections"]
    assert len(tv_counts) == 1 and 0 < tv_counts[0] <= 10
    for row in inference:
        assert row["median_ms"] > 0 and row["images_per_s"] > 0 and len(row["times_ms"]) == 1
        assert row["peak_mem_mb"] is None  # only measured on the GPU
    for row in inference[1:]:
        if row["variant"] in APPROXIMATE:
            assert 0 < row["detections"][0] <= 10, row["variant"]
            continue
        assert row["detections"] == tv_counts
        assert row["detections_match_torchvision"] is True
        assert row["detections_differing"] == 0
        assert row["max_box_diff"] < 1e-2 and row["max_score_diff"] < 1e-3, row["variant"]

    training = result["training"]
    assert [r["variant"] for r in training] == VARIANTS
    assert all(r["setting"] == "shapes_demo" and r["batch"] == 2 and r["median_ms"] > 0 for r in training)
    profile = result["profile"]["shapes_demo"]
    assert profile["roi_align_forward_ms"] > 0 and profile["roi_align_backward_ms"] > 0

    out = capsys.readouterr().out
    assert "ours, channels_last" in out and "shapes_demo" in out and "RoIAlign" in out
    assert "ours, folded BN" in out and "ours, onnxruntime" in out and "detectron2" in out
    assert f"ISA: {' '.join(result['cpu_flags'])}" in out and "summary:" in out


def test_demo_counterpart_matches_our_losses():
    """Same trunk, same head weights, same sampling: the five losses agree once our poolers use
    torchvision's RoIAlign convention (the demo preset pools aligned=True, torchvision cannot)."""
    cfg = get_preset("shapes_demo")
    torch.manual_seed(0)
    ours = build_model(cfg).train()
    tv = torchvision_counterpart(ours, cfg).train()
    ours.roi_heads.box.pooler.aligned = ours.roi_heads.mask.pooler.aligned = False
    images, targets = shapes_batches(2, 1)[0]
    torch.manual_seed(1)
    expected = tv(images, [{"boxes": t.boxes, "labels": t.labels, "masks": t.masks} for t in targets])
    torch.manual_seed(1)
    actual = ours.loss(images, targets)
    assert_losses_match(actual, expected, atol=1e-4)


def test_lsj_batches_are_fixed_size():
    (images, targets), *_ = coco_train_batches("lsj1024", batch=2, count=1, seed=0, coco=default_coco_dir())
    assert [tuple(im.shape) for im in images] == [(3, 1024, 1024)] * 2
    assert all(t.masks.shape[-2:] == (1024, 1024) for t in targets)


def test_report_formats_rows():
    row = {"variant": "torchvision", "dtype": "fp32", "batch": 1, "median_ms": 10.0, "images_per_s": 100.0}
    result = {
        "device": "cpu",
        "device_type": "cpu",
        "threads": 2,
        "torch": "x",
        "torchvision": "y",
        "settings": Settings().__dict__,
        "images": ["a.jpg"],
        "inference": [dict(row, peak_mem_mb=None, detections=[3])],
        "training": [],
        "profile": {},
        "notes": ["ours, onnxruntime: skipped: onnxruntime not installed"],
    }
    text = format_report(result)
    assert "1.00x" in text and "torchvision" in text and "a.jpg" not in text
    assert text.splitlines()[-1] == "note: ours, onnxruntime: skipped: onnxruntime not installed"


def test_compare_matches_boxes_by_label_ignoring_order():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 30.0], [1.0, 2.0, 3.0, 4.0]])
    labels, scores = torch.tensor([1, 2, 1]), torch.tensor([0.9, 0.8, 0.7])
    reference = {0: [(boxes, labels, scores)]}
    order = torch.tensor([2, 0, 1])  # the same detections in another order, one score and box moved
    moved = boxes[order] + torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.004, 0.0, 0.0, 0.0], [0.0] * 4])
    out = compare({0: [(moved, labels[order], scores[order] + torch.tensor([0.0, 0.02, 0.0]))]}, reference)
    assert out["detections_match_torchvision"] and out["detections_differing"] == 0
    assert out["max_box_diff"] == pytest.approx(0.004, abs=1e-6)
    assert out["max_score_diff"] == pytest.approx(0.02, abs=1e-6)
    relabeled = compare({0: [(boxes, torch.tensor([1, 1, 1]), scores)]}, reference)
    assert relabeled["detections_differing"] == 1 and relabeled["max_box_diff"] is None


def test_missing_coco_mini_is_a_clear_error_before_any_work(tmp_path):
    missing = tmp_path / "no-coco"
    with pytest.raises(UserError, match=rf"coco-mini not found at {missing} .*--coco DIR"):
        speed_main(["--coco", str(missing), "--out", str(tmp_path / "x.json")])
    assert not (tmp_path / "x.json").exists()


def test_benchmark_help_lists_its_options(capsys):
    with pytest.raises(SystemExit) as info:
        cli_main(["benchmark", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: maskrcnn benchmark") and "--coco" in text and "--device" in text


def test_detectron2_row_holds_our_weights():
    """detectron2's model of the benchmark carries exactly our weights: converting its state dict with
    the project's converter gives ours back (except torchvision's unused background box rows)."""
    settings = Settings(min_size=160, max_size=224, detections=10, proposals=100)
    _, ours = coco_models(settings)
    root = detectron2_dir(settings)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    d2 = build_detectron2(ours, settings, root)
    back, state = convert_d2(d2.state_dict()), ours.state_dict()
    assert {name for name, _ in ours.named_parameters()} <= set(back) <= set(state)
    for key, value in back.items():
        expected = state[key]
        if key.startswith("roi_heads.box.predictor.bbox_pred."):
            value, expected = value[4:], expected[4:]  # detectron2 has no background regression
        assert torch.equal(value, expected.to(value.dtype)), key
