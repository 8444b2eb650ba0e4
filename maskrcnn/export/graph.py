"""Mask R-CNN inference on one image as a traceable module, for ONNX export: it only composes the
model's own stages, which are trace-safe (`maskrcnn.model.traceable`): every size that depends on
the image (resize, padding, anchor grids, top-k counts, how many boxes survive each filter and
NMS) is a tensor while tracing, so the traced graph keeps H and W dynamic, and nothing branches on
data, so an image without detections runs the same graph and gives empty outputs.

    image (3, H, W) float32 in [0, 1], score_thresh () float32
      -> Preprocessor.resize_image, pad_one -> backbone + FPN -> RegionProposalNetwork
      -> BoxBranch.predict (per-class NMS), to_original -> MaskBranch.class_masks, KeypointBranch
      -> boxes (D, 4) original-image pixels, scores (D,), labels (D,) int64 in 1..K,
         mask_probs (D, M, M) of each detection's class (pasting happens outside the graph),
         keypoint_heatmaps (D, J, S, S) logits (decoded outside the graph, `decode_keypoints`)

`InferenceGraph(model)` wraps a `MaskRCNN`; in eager mode it runs `MaskRCNN.predict`'s own code
on one image (same numbers); traced, the RoI poolers use torchvision's RoIAlign kernels (not the
sparse one) and NMS both of torchvision's algorithms with the choice made in the graph.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import UserError
from ..model.traceable import spatial_size


class InferenceGraph(nn.Module):
    """`model` on one image, as a traceable module: forward(image, score_thresh) -> boxes, scores,
    labels[, mask_probs][, keypoint_heatmaps] (see the module docstring)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        if model.preprocessor.resize != "torchvision":
            raise UserError(
                "ONNX export resizes inputs as torchvision does; this model resizes them as detectron2 "
                "does (model.input.resize=detectron2: rounded sizes, antialiased), which the graph lacks"
            )
        self.model = model.eval()
        self.mask = model.roi_heads.branch("mask")
        self.keypoint = model.roi_heads.branch("keypoint")

    @property
    def output_names(self) -> list[str]:
        names = ["boxes", "scores", "labels"]
        names += ["mask_probs"] if self.mask is not None else []
        return names + (["keypoint_heatmaps"] if self.keypoint is not None else [])

    def forward(self, image: Tensor, score_thresh: Tensor) -> tuple[Tensor, ...]:
        m = self.model
        original = spatial_size(image)
        resized, size = m.preprocessor.resize_image(image)
        batch = m.preprocessor.pad_one(resized)
        features = m.backbone(batch)
        (proposals,), _ = m.rpn(features, [size], spatial_size(batch))
        box = m.roi_heads.box
        (det,) = box.predict(features, [proposals.boxes], [size], score_thresh=score_thresh)
        boxes = box.to_original(det, input_size=size, original_size=original).boxes
        outputs = [boxes, det.scores, det.labels]
        if self.mask is not None:
            outputs.append(self.mask.class_masks(features, [det.boxes], det.labels))
        if self.keypoint is not None:
            outputs.append(self.keypoint(features, [det.boxes]))
        return tuple(outputs)
