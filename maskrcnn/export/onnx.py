"""ONNX export: `export_onnx(model, path, *, opset=17)` writes a MaskRCNN as one ONNX graph for one
image; `maskrcnn.export.runtime.OnnxModel(path)` (or `maskrcnn.load("model.onnx")`) runs it.

    from maskrcnn.export.onnx import export_onnx
    export_onnx(model, "model.onnx")          # model: a MaskRCNN (e.g. maskrcnn.load(W).model)

The graph (`maskrcnn.export.graph.InferenceGraph`, traced by torch.onnx's TorchScript exporter):

    inputs:  image (3, H, W) float32 in [0, 1], RGB; H and W dynamic, one image per run
             score_thresh () float32: the box branch's score threshold (the config's by default)
    outputs: boxes (D, 4) float32 xyxy in original-image pixels, scores (D,) float32,
             labels (D,) int64 in 1..K, mask_probs (D, M, M) float32 (models with a mask branch),
             keypoint_heatmaps (D, J, S, S) float32 logits (models with a keypoint branch; the
             runtime decodes them with `decode_keypoints`, as `KeypointBranch.predict` does)

D is dynamic and may be 0. The file's metadata_props hold what `maskrcnn.load` needs besides the
graph: `maskrcnn` (the format version), `class_names` and `category_ids` (JSON lists) and `config`
(the Config as JSON), `inference` (what the runtime needs outside the graph, read from the model's
modules: `inference_settings`).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from ..config import Config, to_dict
from ..errors import UserError
from ..files import atomic_write
from .graph import InferenceGraph

DEFAULT_OPSET = 17  # RoiAlign's half_pixel mode (aligned=True) needs 16
FORMAT_VERSION = "1"
INPUTS = ("image", "score_thresh")
OUTPUTS = ("boxes", "scores", "labels", "mask_probs", "keypoint_heatmaps")


def require_onnx():
    try:
        import onnx
    except ImportError:
        raise UserError("ONNX export needs the onnx package: pip install maskrcnn[onnx]") from None
    return onnx


def check_opset(opset: int) -> None:
    if opset < 16:
        raise UserError(f"--opset must be at least 16 (RoiAlign with half_pixel), got {opset}")


def _example_image(height: int = 480, width: int = 640) -> torch.Tensor:
    """A fixed smooth random picture to trace with (any image traces the same graph)."""
    gen = torch.Generator().manual_seed(0)
    small = torch.rand((1, 3, height // 32, width // 32), generator=gen)
    return torch.nn.functional.interpolate(small, size=(height, width), mode="bilinear")[0]


def inference_settings(model) -> dict:
    """The model's settings that act outside the graph: the default score threshold, the mask
    threshold of pasting, the keypoint score, and the resize and padding rule of `padded_size`."""
    p = model.preprocessor
    mask = model.roi_heads.branch("mask")
    keypoint = model.roi_heads.branch("keypoint")
    return {
        "keypoint_score": None if keypoint is None else keypoint.score,
        "score_thresh": float(model.roi_heads.box.score_thresh),
        "mask_threshold": None if mask is None else float(mask.threshold),
        "mask_paste": None if mask is None else mask.paste,
        "min_size": int(p.min_size[-1]),
        "max_size": int(p.max_size),
        "size_divisible": int(p.size_divisible),
    }


def export_onnx(model, path: str | Path, *, opset: int = DEFAULT_OPSET) -> Path:
    """Write `model` (a MaskRCNN; left unchanged) as an ONNX file at `path` (atomically); returns
    the path. See the module docstring for the graph's inputs and outputs."""
    onnx = require_onnx()
    check_opset(opset)
    was_training = model.training
    device = next(model.parameters()).device
    model = model.eval().cpu()
    try:
        graph = InferenceGraph(model)
        example = (_example_image(), torch.tensor(0.0))  # threshold 0: every branch of the graph runs
        outputs = graph.output_names
        dynamic = {"image": {1: "height", 2: "width"}, **{name: {0: "detections"} for name in outputs}}
        tmp = Path(path).with_name(f".{Path(path).name}.trace")
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")  # tracer warnings about constants, the exporter's deprecation
                torch.onnx.export(
                    graph,
                    example,
                    str(tmp),
                    dynamo=False,
                    opset_version=opset,
                    input_names=list(INPUTS),
                    output_names=list(outputs),
                    dynamic_axes=dynamic,
                )
            proto = onnx.load(str(tmp))
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        model.to(device).train(was_training)
    cfg = model.config if model.config is not None else Config()
    metadata = {
        "maskrcnn": FORMAT_VERSION,
        "inference": json.dumps(inference_settings(model)),
        "class_names": json.dumps(list(model.class_names)),
        "category_ids": json.dumps(list(model.category_ids)),
        "config": json.dumps(to_dict(cfg)),
    }
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "maskrcnn"
    data = proto.SerializeToString()
    return atomic_write(path, lambda f: f.write(data))
