"""The ONNX Runtime backend: an exported model (`maskrcnn.export.onnx.export_onnx`) with what
`maskrcnn.predictor.Predictor` needs from a model, so `maskrcnn.load("model.onnx")` and every
command's `--weights model.onnx` run it like the PyTorch model.

    model = OnnxModel("model.onnx")                  # device="cuda" uses CUDAExecutionProvider
    detections = model.predict([image])              # image: (3, H, W) float in [0, 1] or uint8

One image per session run (the graph takes one image); the 28×28 mask probabilities are pasted
into the image outside the graph with `maskrcnn.model.mask_paste.paste_mask_crops`, and keypoint
heatmaps decoded with `maskrcnn.model.keypoint_branch.decode_keypoints` in the model's input frame
then scaled to the image, as `predict` does.
Shapes: D detections, (H, W) the image's size, M the mask resolution, J keypoints, S heatmap side.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..config import Config, from_dict
from ..errors import UserError
from ..model.keypoint_branch import decode_keypoints
from ..model.mask_paste import paste_mask_crops
from ..model.preprocess import padded_shape, resized_shape
from ..ops.boxes import scale_boxes
from ..ops.keypoints import scale_keypoints
from ..structures import Detections
from .onnx import FORMAT_VERSION


def _require_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise UserError("running an .onnx model needs onnxruntime: pip install maskrcnn[onnx]") from None
    return onnxruntime


def cpu_cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


class OnnxModel:
    """An exported Mask R-CNN run by onnxruntime. `threads`: intra-op threads (default: all cores)."""

    backend = "onnxruntime"  # what `maskrcnn serve` reports in GET /v1/model

    def __init__(self, path: str | Path, *, device: str | torch.device = "cpu", threads: int | None = None):
        self.ort = _require_onnxruntime()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        self.threads = threads or cpu_cores()
        self.device = torch.device("cpu")
        self.session = None
        self.to(device)
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("maskrcnn") != FORMAT_VERSION:
            raise UserError(
                f"{self.path}: not an ONNX file written by `maskrcnn export` (no maskrcnn metadata)"
            )
        self.class_names = list(json.loads(meta["class_names"]))
        self.category_ids = list(json.loads(meta["category_ids"]))
        self.config = from_dict(json.loads(meta["config"]), Config)
        self.settings = json.loads(meta["inference"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    # ------------------------------------------------------------------ what Predictor uses
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to(self, device: str | torch.device) -> OnnxModel:
        """Run on `device`: the CPU, or CUDA through onnxruntime's CUDAExecutionProvider."""
        device = torch.device(device)
        if device.type not in ("cpu", "cuda"):
            raise UserError(f"an ONNX model runs on cpu or cuda, not {device}")
        if self.session is not None and device == self.device:
            return self
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in self.ort.get_available_providers():
                raise UserError(
                    f"{self.path}: onnxruntime has no CUDAExecutionProvider here; install "
                    "onnxruntime-gpu or use --device cpu"
                )
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        options = self.ort.SessionOptions()
        options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        options.log_severity_level = 3  # errors only
        try:
            self.session = self.ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail / InvalidProtobuf types
            raise UserError(f"{self.path}: onnxruntime cannot load it ({type(e).__name__}: {e})") from e
        self.device = device
        return self

    def eval(self) -> OnnxModel:
        return self

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The padded input size of an image of this size (as `MaskRCNN.padded_size`)."""
        return padded_shape([self.input_size(height, width)], self.settings["size_divisible"])

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """The resized size the graph gives an image of this size (the model's input frame)."""
        s = self.settings
        return resized_shape(height, width, min_size=s["min_size"], max_size=s["max_size"])

    def _keypoints(self, heatmaps: Tensor, boxes: Tensor, original: tuple[int, int]) -> Tensor:
        """(D, J, S, S) heatmaps, (D, 4) boxes in original pixels -> (D, J, 3) keypoints in original
        pixels: decoded in the input frame, as `KeypointBranch.predict` and `to_original` do."""
        size = self.input_size(*original)
        in_frame = scale_boxes(boxes, original, size)
        keypoints = decode_keypoints(heatmaps, in_frame, score=self.settings.get("keypoint_score") or "logit")
        return scale_keypoints(keypoints, size, original)

    def predict(self, images: list[Tensor], *, score_thresh: float | None = None) -> list[Detections]:
        """One Detections per (3, H, W) image (float in [0, 1] or uint8), in original-image pixels,
        on this model's device; `score_thresh` replaces the default threshold for this call."""
        thresh = np.array(self.settings["score_thresh"] if score_thresh is None else score_thresh, np.float32)
        results = []
        for i, image in enumerate(images):
            if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
                shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
                raise ValueError(f"image {i}: expected a (3, H, W) tensor, got {shape}")
            pixels = image.detach().to("cpu")
            pixels = pixels.float() / 255.0 if pixels.dtype == torch.uint8 else pixels.to(torch.float32)
            values = self.session.run(None, {"image": pixels.contiguous().numpy(), "score_thresh": thresh})
            out = {name: torch.from_numpy(v).to(self.device) for name, v in zip(self.outputs, values)}
            det = Detections(boxes=out["boxes"], scores=out["scores"], labels=out["labels"])
            if "mask_probs" in out:
                det.mask_probs = out["mask_probs"]
                det.masks = paste_mask_crops(
                    det.mask_probs,
                    det.boxes,
                    (int(image.shape[-2]), int(image.shape[-1])),
                    threshold=self.settings["mask_threshold"],
                    mode=self.settings.get("mask_paste") or "torchvision",
                )
            if "keypoint_heatmaps" in out:
                det.keypoints = self._keypoints(out["keypoint_heatmaps"], det.boxes, tuple(image.shape[-2:]))
            results.append(det)
        return results

    __call__ = predict
