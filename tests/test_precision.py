"""`--precision bf16`: CPU capability detection (maskrcnn.hardware), the fp32 fallback note, bf16
detections of a ResNet-50-FPN against fp32 on a real image, and the option in predict / evaluate."""

from __future__ import annotations

import json

import pytest
import torch
from torchvision.ops import box_iou

import maskrcnn
from maskrcnn import cli
from maskrcnn.benchmark.workloads import decisive_torchvision
from maskrcnn.config import apply_overrides
from maskrcnn.convert.torchvision import config_for, convert_state_dict
from maskrcnn.errors import UserError
from maskrcnn.files import STORED_PIXELS, read_image
from maskrcnn.hardware import ASSUME_NO_BF16_ENV, cpu_isa_flags, has_native_bf16, resolve_precision
from maskrcnn.model import build_model
from maskrcnn.predictor import Predictor

CPUINFO = """processor\t: 0
model name\t: Some CPU
flags\t\t: fpu sse2 avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile
"""
NATIVE = has_native_bf16("cpu")


def test_isa_flags_are_read_from_cpuinfo():
    assert cpu_isa_flags(CPUINFO) == {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16"}
    assert cpu_isa_flags("processor: 0\n") == set()
    assert has_native_bf16("cpu", flags={"avx2", "avx512_vnni"}) is False
    assert has_native_bf16("cpu", flags={"avx2", "amx_bf16"}) is True


def test_bf16_without_native_support_is_fp32_with_one_note(monkeypatch):
    assert resolve_precision("fp32", "cpu", flags=set()) == ("fp32", None)
    precision, note = resolve_precision("bf16", "cpu", flags={"avx2"})
    assert precision == "fp32" and "\n" not in note
    assert note == "bf16 would be slower here (this CPU has no avx512_bf16 / amx_bf16): running fp32"
    with pytest.raises(ValueError, match="fp32, bf16"):
        resolve_precision("fp16", "cpu")
    monkeypatch.setenv(ASSUME_NO_BF16_ENV, "1")
    assert resolve_precision("bf16", "cpu", flags={"amx_bf16"})[0] == "fp32"
    assert has_native_bf16("cpu", flags={"amx_bf16"}) is False


@pytest.fixture(scope="module")
def resnet50():
    """A ResNet-50-FPN with torchvision's seeded decisive weights (confident detections), at 320 px."""
    state = decisive_torchvision(0).state_dict()
    cfg = apply_overrides(
        config_for(state, "v1"),
        ["model.input.min_size=[320]", "model.input.max_size=480", "model.roi_heads.detections_per_image=30"],
    )
    model = build_model(cfg)
    model.load_state_dict(convert_state_dict(state))
    return model.eval()


@pytest.mark.skipif(not NATIVE, reason="bf16 runs only on a CPU with native bf16")
def test_bf16_detections_close_to_fp32(resnet50, shared_data):
    image = read_image(shared_data / "coco-mini/val2017/000000000139.jpg", policy=STORED_PIXELS)
    (fp32,) = Predictor(resnet50).predict([image])
    bf16_predictor = Predictor(resnet50, precision="bf16")
    assert bf16_predictor.precision == "bf16" and bf16_predictor.precision_note is None
    (bf16,) = bf16_predictor.predict([image])
    assert bf16.boxes.dtype == bf16.scores.dtype == bf16.mask_probs.dtype == torch.float32
    assert len(fp32) >= 10
    # random weights: ~30 detections of one class with scores 0.24-0.26, 1e-3 apart, on overlapping
    # anchor-like proposals, so bf16's rounding flips which of two overlapping proposals survives NMS
    # for some of them; the score distribution and most boxes stay (AP on trained models, where
    # scores are far apart: `maskrcnn benchmark --accuracy`, benchmarks/README.md)
    assert len(bf16) == len(fp32)
    assert (fp32.scores.sort().values - bf16.scores.sort().values).abs().max() < 0.02
    iou = box_iou(bf16.boxes, fp32.boxes)
    iou[bf16.labels[:, None] != fp32.labels[None]] = 0.0
    best, index = iou.max(dim=1)
    assert (best >= 0.5).float().mean() >= 0.8, best  # the same objects
    same = best >= 0.9
    assert same.float().mean() >= 0.25, best  # 0.30 measured here
    assert (bf16.scores[same] - fp32.scores[index[same]]).abs().max() < 0.02
    assert not torch.equal(fp32.boxes, bf16.boxes)  # it did run in bf16
    assert next(resnet50.parameters()).dtype == torch.float32  # the model itself is untouched


def test_predictor_falls_back_with_a_note_and_refuses_onnx(tiny_weights, monkeypatch):
    monkeypatch.setenv(ASSUME_NO_BF16_ENV, "1")
    with pytest.warns(RuntimeWarning, match="bf16 would be slower here"):
        predictor = Predictor(maskrcnn.load(str(tiny_weights)).model, precision="bf16")
    assert (predictor.requested_precision, predictor.precision) == ("bf16", "fp32")
    with pytest.raises(UserError, match="precision must be one of fp32, bf16"):
        predictor.set_precision("int8")

    class Runtime:  # what Predictor sees of an ONNX model: not a torch module
        backend = "onnxruntime"

    onnx = Predictor.__new__(Predictor)
    onnx.model, onnx.device = Runtime(), torch.device("cpu")
    with pytest.raises(UserError, match="runs in onnxruntime.*maskrcnn export --int8"):
        onnx.set_precision("bf16")


def test_predict_and_evaluate_take_precision(tiny_weights, shared_data, tmp_path, capsys, monkeypatch):
    image = shared_data / "coco-mini/val2017/000000000139.jpg"
    monkeypatch.setenv(ASSUME_NO_BF16_ENV, "1")  # the note path, whatever this CPU has
    args = ["predict", "--weights", str(tiny_weights), "--out", str(tmp_path / "p"), "--no-progress"]
    assert cli.main([*args, "--no-overlays", "--precision", "bf16", str(image)]) == 0
    err = capsys.readouterr().err
    assert err.count("note: bf16 would be slower here") == 1 and len(err.strip().splitlines()) == 1
    fallback = json.loads((tmp_path / "p/predictions.json").read_text())
    monkeypatch.delenv(ASSUME_NO_BF16_ENV)
    fp32 = maskrcnn.load(str(tiny_weights)).predict([str(image)])[0]
    assert len(fallback) == len(fp32) > 0  # fp32 ran: the same detections

    ann = shared_data / "coco-mini/annotations/instances_val2017.json"
    data = f"coco:{ann}:{shared_data / 'coco-mini/val2017'}"
    coco = json.loads(ann.read_text())
    subset = tmp_path / "two.json"
    keep = {im["id"] for im in sorted(coco["images"], key=lambda im: im["file_name"])[:2]}
    coco["images"] = [im for im in coco["images"] if im["id"] in keep]
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    subset.write_text(json.dumps(coco))
    data = f"coco:{subset}:{shared_data / 'coco-mini/val2017'}"
    out = tmp_path / "e"
    args = ["evaluate", "--weights", str(tiny_weights), "--data", data, "--out", str(out), "--no-progress"]
    assert cli.main([*args, "--precision", "bf16"]) == 0
    assert (out / "metrics.json").is_file() or any(out.iterdir())
    assert ("note:" in capsys.readouterr().err) is (not NATIVE)


def test_serve_takes_precision_and_reports_what_runs(tiny_weights, monkeypatch):
    from maskrcnn.serve.app import model_info

    args = cli.build_parser().parse_args(["serve", "--weights", str(tiny_weights), "--precision", "bf16"])
    assert args.precision == "bf16"
    predictor = maskrcnn.load(str(tiny_weights))
    monkeypatch.setenv(ASSUME_NO_BF16_ENV, "1")
    assert predictor.set_precision(args.precision).startswith("bf16 would be slower here")
    assert model_info(predictor)["precision"] == "fp32"  # GET /v1/model: what runs, not what was asked
    monkeypatch.delenv(ASSUME_NO_BF16_ENV)
    predictor.set_precision("bf16")
    assert model_info(predictor)["precision"] == ("bf16" if NATIVE else "fp32")
