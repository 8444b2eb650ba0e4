"""ONNX export run by ONNX Runtime against our PyTorch model, on real photos of three sizes and a
blank image: torchvision v1 and v2 models (seeded, decisive weights as in the parity tests),
converted, exported once per version, then compared detection by detection; the command line
(`maskrcnn export`, `maskrcnn predict --weights model.onnx`) on a shapes_demo checkpoint.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from maskrcnn.export.onnx import export_onnx
from maskrcnn.export.runtime import OnnxModel
from maskrcnn.inputs import load_image
from tests.conftest import skip_or_fail_in_ci
from tests.helpers import run
from tests.model.tv_reference import converted, torchvision_model

# small inputs and fewer proposals keep a ResNet-50 forward near a second on 2 cores
OVERRIDES = [
    "model.input.min_size=[320]",
    "model.input.max_size=512",
    "model.rpn.pre_nms_topk_test=300",
    "model.rpn.post_nms_topk_test=150",
    "model.roi_heads.detections_per_image=25",
]
# three photos of different sizes (and padded sizes): 426x640, 640x424, 500x333
PHOTOS = ["000000000139.jpg", "000000000802.jpg", "000000011813.jpg"]
# a blank image gives scores below 0.25 (v1) and 0.55 (v2) with these weights, photos many above
BLANK_THRESH = 0.6


@pytest.fixture(autouse=True, scope="module")
def _onnx_installed():
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        skip_or_fail_in_ci("onnx and onnxruntime are not installed (pip install maskrcnn[onnx])")


@pytest.fixture(scope="module", params=["v1", "v2"])
def exported(request, tmp_path_factory):
    """(our PyTorch model, the same exported and loaded in onnxruntime, the ONNX file)."""
    version = request.param
    model = converted(torchvision_model(version), version, OVERRIDES)
    path = export_onnx(model, tmp_path_factory.mktemp(version) / "model.onnx")
    return model, OnnxModel(path, threads=2), path


@pytest.fixture(scope="module")
def photos(shared_data):
    return [load_image(shared_data / "coco-mini/val2017" / name) for name in PHOTOS]


def mask_agreement(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    """Of the pixels set in either (D, H, W) mask stack, the fraction set in both."""
    union = int((ours | theirs).sum())
    return 1.0 if union == 0 else int((ours & theirs).sum()) / union


def test_onnx_runtime_matches_pytorch_on_photos(exported, photos):
    model, onnx_model, _ = exported
    sizes = {tuple(im.shape[-2:]) for im in photos}
    assert len(sizes) == 3 and len({onnx_model.padded_size(*s) for s in sizes}) == 3
    for name, image in zip(PHOTOS, photos):
        with torch.no_grad():
            expected = model.predict([image])[0]
        got = onnx_model.predict([image])[0]
        assert len(expected) == 25 and len(got) == len(expected), name  # detections_per_image
        assert torch.equal(got.labels, expected.labels), name
        assert (got.boxes - expected.boxes).abs().max() <= 1e-2, name
        assert (got.scores - expected.scores).abs().max() <= 1e-3, name
        assert (got.mask_probs - expected.mask_probs).abs().max() <= 1e-3, name
        assert got.masks.shape == expected.masks.shape == (25, *image.shape[-2:])
        assert mask_agreement(got.masks, expected.masks) >= 0.995, name
        assert int(expected.masks.sum()) > 10_000  # non-vacuous: real masks were compared


def test_blank_image_gives_empty_outputs(exported):
    model, onnx_model, _ = exported
    blank = torch.full((3, 300, 400), 0.5)
    with torch.no_grad():
        assert len(model.predict([blank], score_thresh=BLANK_THRESH)[0]) == 0
    det = onnx_model.predict([blank], score_thresh=BLANK_THRESH)[0]  # the graph's outputs, as they come
    shapes = [tuple(t.shape) for t in (det.boxes, det.scores, det.labels, det.mask_probs)]
    assert shapes == [(0, 4), (0,), (0,), (0, 28, 28)]
    assert [det.boxes.dtype, det.scores.dtype, det.labels.dtype] == [
        torch.float32,
        torch.float32,
        torch.int64,
    ]
    assert det.masks.shape == (0, 300, 400) and det.masks.dtype == torch.bool


def test_onnx_file_carries_what_load_needs(exported):
    import maskrcnn

    model, _, path = exported
    predictor = maskrcnn.load(str(path))
    assert predictor.class_names == model.class_names and len(predictor.class_names) == 90
    assert predictor.category_ids == model.category_ids
    assert predictor.config == model.config
    assert predictor.model.padded_size(426, 640) == model.padded_size(426, 640) == (320, 480)


@pytest.fixture(scope="module")
def shapes_checkpoint(tmp_path_factory):
    """A shapes_demo model (BatchNorm backbone, aligned RoIAlign, sparse RoIAlign in PyTorch) saved."""
    from maskrcnn.config import resolve
    from maskrcnn.engine.checkpoint import save_model
    from maskrcnn.model import build_model

    torch.manual_seed(0)
    model = build_model(resolve("shapes_demo"), ["circle", "square", "triangle"]).eval()
    with torch.no_grad():  # decisive, as the parity tests' models: scores apart by >= 4e-5, not 1e-5
        model.roi_heads.box.predictor.cls_score.weight.normal_(std=0.15)
        model.roi_heads.box.predictor.bbox_pred.weight.normal_(std=0.01)
        model.rpn.head.objectness.weight.mul_(30.0)
    path = tmp_path_factory.mktemp("shapes") / "model.pt"
    save_model(model, path)
    return model, path


def test_cli_export_and_predict_with_onnx(shapes_checkpoint, shared_data, tmp_path):
    from pycocotools.coco import COCO

    import maskrcnn

    model, checkpoint = shapes_checkpoint
    onnx_path = tmp_path / "shapes.onnx"
    done = run("export", "--weights", str(checkpoint), "--out", str(onnx_path))
    assert done.returncode == 0, done.stderr
    assert f"wrote {onnx_path}" in done.stdout
    images = [str(shared_data / "coco-mini/val2017" / name) for name in PHOTOS]
    done = run(
        "predict", "--weights", str(onnx_path), "--out", str(tmp_path / "out"), "--no-progress", *images
    )
    assert done.returncode == 0, done.stderr
    records = json.loads((tmp_path / "out/predictions.json").read_text())
    gt = COCO(str(shared_data / "coco-mini/annotations/instances_val2017.json"))
    loaded = gt.loadRes(records)
    assert len(loaded.getAnnIds()) == len(records) > 0
    assert {r["image_id"] for r in records} == {int(name[:-4]) for name in PHOTOS}
    assert sorted(p.name for p in (tmp_path / "out/overlays").iterdir()) == sorted(PHOTOS)
    # the same detections as the PyTorch checkpoint through the same Predictor path
    torch_dets = maskrcnn.load(str(checkpoint)).predict(images)
    onnx_dets = maskrcnn.load(str(onnx_path)).predict(images)
    for expected, got in zip(torch_dets, onnx_dets):
        assert len(got) == len(expected) > 0
        assert torch.equal(got.labels, expected.labels)
        assert (got.boxes - expected.boxes).abs().max() <= 1e-2
        assert (got.scores - expected.scores).abs().max() <= 1e-3
        assert mask_agreement(got.masks, expected.masks) >= 0.995


def test_export_errors_are_one_line(tmp_path, shapes_checkpoint, shared_data, capsys):
    from maskrcnn.cli import main

    _, checkpoint = shapes_checkpoint
    assert (
        main(["export", "--weights", str(checkpoint), "--out", str(tmp_path / "m.onnx"), "--opset", "11"])
        == 1
    )
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: --opset must be at least 16 (RoiAlign with half_pixel), got 11"
    ]
    assert not (tmp_path / "m.onnx").exists()
    photo = str(shared_data / "coco-mini/val2017" / PHOTOS[0])
    assert main(["predict", "--weights", str(tmp_path / "missing.onnx"), "--out", str(tmp_path), photo]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "missing.onnx" in err[0]


def test_missing_extra_and_foreign_onnx_files_are_user_errors(tmp_path, shapes_checkpoint, shared_data):
    import subprocess
    import sys

    import onnx
    from onnx import TensorProto, helper

    import maskrcnn
    from maskrcnn.errors import UserError

    # without the extra (its modules made unimportable in a real process): one line naming the fix
    _, checkpoint = shapes_checkpoint
    photo = str(shared_data / "coco-mini/val2017" / PHOTOS[0])
    export = ["export", "--weights", str(checkpoint), "--out", str(tmp_path / "m.onnx")]
    predict = ["predict", "--weights", str(tmp_path / "x.onnx"), "--out", str(tmp_path), photo]
    script = (
        "import sys; sys.modules['onnx'] = sys.modules['onnxruntime'] = None\n"
        "from maskrcnn.cli import main\n"
        f"print(main({export!r}))\nprint(main({predict!r}))\n"
    )
    (tmp_path / "x.onnx").write_bytes(b"not read")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["1", "1"], done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: ONNX export needs the onnx package: pip install maskrcnn[onnx]",
        "error: running an .onnx model needs onnxruntime: pip install maskrcnn[onnx]",
    ]
    # an ONNX file that `maskrcnn export` did not write
    node = helper.make_node("Identity", ["x"], ["y"])
    value = helper.make_tensor_value_info
    graph = helper.make_graph(
        [node], "g", [value("x", TensorProto.FLOAT, [1])], [value("y", TensorProto.FLOAT, [1])]
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "foreign.onnx"))
    with pytest.raises(UserError, match="not an ONNX file written by `maskrcnn export`"):
        maskrcnn.load(str(tmp_path / "foreign.onnx"))
