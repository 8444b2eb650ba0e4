"""A keypoint model through ONNX: torchvision's Keypoint R-CNN (seeded, decisive weights as in the
keypoint parity test), converted, exported, run by onnxruntime; the graph's keypoint heatmaps are
decoded outside it (`OnnxModel`), and detections and keypoints must equal PyTorch's on real person
photos and on an image without detections."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from maskrcnn.export.onnx import export_onnx
from maskrcnn.export.runtime import OnnxModel
from maskrcnn.inputs import load_image
from tests.conftest import skip_or_fail_in_ci
from tests.model.test_keypoint_parity import person_images
from tests.model.tv_reference import converted, torchvision_model

# small inputs and few detections: the keypoint head is most of the cost on 2 cores
SMALL = {
    "min_size": 320,
    "max_size": 512,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 150,
    "box_detections_per_img": 15,
}
OVERRIDES = [
    "model.input.min_size=[320]",
    "model.input.max_size=512",
    "model.rpn.pre_nms_topk_test=300",
    "model.rpn.post_nms_topk_test=150",
    "model.roi_heads.detections_per_image=15",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        skip_or_fail_in_ci("onnx and onnxruntime are not installed (pip install maskrcnn[onnx])")
    model = converted(torchvision_model("keypoint", **SMALL), "keypoint", OVERRIDES)
    path = export_onnx(model, tmp_path_factory.mktemp("keypoint") / "model.onnx")
    return model, OnnxModel(path, threads=2)


def test_onnx_keypoints_match_pytorch(exported, shared_data):
    model, onnx_model = exported
    assert "keypoint_heatmaps" in onnx_model.outputs
    total = 0
    for path in person_images(shared_data, count=2):
        image = load_image(path)
        with torch.no_grad():
            (expected,) = model.predict([image])
        (got,) = onnx_model.predict([image])
        n = len(expected)
        assert n > 0 and len(got) == n and torch.equal(got.labels, expected.labels), path.name
        assert (got.boxes - expected.boxes).abs().max() <= 1e-2, path.name
        assert (got.scores - expected.scores).abs().max() <= 1e-3, path.name
        assert got.keypoints.shape == expected.keypoints.shape == (n, 17, 3)
        xy_error = (got.keypoints[..., :2] - expected.keypoints[..., :2]).abs().max()
        assert xy_error <= 1e-2, f"{path.name}: keypoints differ by {xy_error:.4g} px"
        assert (got.keypoints[..., 2] - expected.keypoints[..., 2]).abs().max() <= 1e-2, path.name
        total += n
    assert total >= 10  # non-vacuous


def test_onnx_keypoints_on_an_image_without_detections(exported):
    model, onnx_model = exported
    blank = torch.full((3, 300, 400), 0.5)
    with torch.no_grad():
        (reference,) = model.predict([blank], score_thresh=0.0)
    # a threshold above every score PyTorch gives this image: no detections
    thresh = float(reference.scores.max()) + 1e-3 if len(reference) else 0.05
    with torch.no_grad():
        assert len(model.predict([blank], score_thresh=thresh)[0]) == 0
    (got,) = onnx_model.predict([blank], score_thresh=thresh)
    assert got.boxes.shape == (0, 4) and got.labels.shape == (0,)
    assert got.keypoints.shape == (0, 17, 3) and got.keypoints.dtype == torch.float32
