"""Mask R-CNN (He et al. 2017): Faster R-CNN with FPN plus a parallel mask branch.

    images -> preprocess -> backbone + FPN -> RPN -> RoI heads (box branch, mask branch, ...)
           -> detections in original-image pixels

`loss(images, targets)` returns the dict of losses (five for Mask R-CNN); `predict(images)`
returns one Detections per image. `forward` follows torchvision: in training mode with targets it
returns losses, otherwise detections. The model takes tensors only: decoding files and other
image types, device placement and batching are `maskrcnn.predictor.Predictor`'s job.

Shapes: N images; images are (3, H_i, W_i) float tensors in [0, 1] (or uint8).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch
from torch import Tensor, nn

from ..structures import Detections, ImageBatch, Proposals, Targets
from .preprocess import BY_CHANNEL_PIXELS, Preprocessor, padded_shape
from .roi_heads import RoIHeads
from .rpn import RegionProposalNetwork

TargetsLike = Union[Targets, dict]


class MaskRCNN(nn.Module):
    def __init__(
        self,
        *,
        preprocessor: Preprocessor,
        backbone: nn.Module,
        rpn: RegionProposalNetwork,
        roi_heads: RoIHeads,
        class_names: Sequence[str],
        category_ids: Sequence[int] | None = None,
    ):
        """class_names: the K foreground classes (label i+1 is class_names[i]); category_ids: the
        dataset's id of each (label i+1 <-> category_ids[i]; default 1..K), used in COCO results."""
        super().__init__()
        self.preprocessor = preprocessor
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.class_names = list(class_names)
        self.category_ids = (
            list(category_ids) if category_ids is not None else list(range(1, len(class_names) + 1))
        )
        if len(self.category_ids) != len(self.class_names):
            raise ValueError(f"{len(self.category_ids)} category ids for {len(self.class_names)} class names")
        self.config = None  # set by build_model; travels into checkpoints

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def set_channels_last(self, enabled: bool = True) -> MaskRCNN:
        """Keep conv weights and the padded image batch in channels-last memory (NHWC), which the
        CPU's oneDNN convolutions and tensor-core GPUs prefer; values are unchanged. Returns self."""
        memory_format = torch.channels_last if enabled else torch.contiguous_format
        self.to(memory_format=memory_format)
        self.preprocessor.memory_format = memory_format
        return self

    # ------------------------------------------------------------------ stages
    def preprocess(self, images: list[Tensor], targets: list[TargetsLike] | None = None):
        images = [_as_float_image(im, i) for i, im in enumerate(images)]
        device = self.preprocessor.pixel_mean.device
        images = [im.to(device) for im in images]
        if targets is not None:
            targets = [Targets.from_any(t).to(device) for t in targets]
        return self.preprocessor(images, targets)

    def propose(self, batch: ImageBatch, features: list[Tensor], targets=None):
        padded = tuple(batch.tensor.shape[-2:])
        return self.rpn(features, batch.image_sizes, padded, targets)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The padded input size of an image of this size at inference: images batch together
        without changing each other's results exactly when their padded sizes are equal."""
        p = self.preprocessor
        size = p.output_size(height, width)
        return padded_shape([size], p.size_divisible)

    # ------------------------------------------------------------------ training
    def loss(self, images: list[Tensor], targets: list[TargetsLike]) -> dict[str, Tensor]:
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        for i, t in enumerate(targets):
            _check_targets(Targets.from_any(t), i)
        batch, targets = self.preprocess(images, targets)
        features = self.backbone(batch.tensor)
        proposals, losses = self.propose(batch, features, targets)
        losses.update(self.roi_heads.loss(features, proposals, targets))
        return losses

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def predict(self, images: list[Tensor], *, score_thresh: float | None = None) -> list[Detections]:
        """Detections per image, in original-image pixels, for (3, H, W) tensors run as ONE batch
        (padded to a common size, so results can depend on the batch's other images unless their
        padded sizes are equal: `Predictor` groups images by `padded_size`). `score_thresh`
        replaces the box branch's own threshold for this call."""
        if len(images) == 0:
            return []
        was_training = self.training
        self.eval()
        try:
            batch, _ = self.preprocess(images)
            features = self.backbone(batch.tensor)
            proposals, _ = self.propose(batch, features)
            return self.detect(batch, features, proposals, score_thresh=score_thresh)
        finally:
            self.train(was_training)

    def detect(
        self,
        batch: ImageBatch,
        features: list[Tensor],
        proposals: list[Proposals],
        *,
        score_thresh: float | None = None,
    ) -> list[Detections]:
        """RoI heads on given proposals -> detections in original-image pixels."""
        detections = self.roi_heads.predict(features, proposals, batch.image_sizes, score_thresh=score_thresh)
        return self.roi_heads.to_original(detections, batch.image_sizes, batch.original_sizes)

    def forward(self, images: list[Tensor], targets: list[TargetsLike] | None = None):
        if self.training and targets is not None:
            return self.loss(images, targets)
        return self.predict(images)


def _check_targets(t: Targets, index: int) -> None:
    """Reject ground truth that would silently give NaN losses (as torchvision does): a box without
    area is encoded with log(0) and matches every anchor as a low-quality match."""
    if t.boxes.dim() != 2 or t.boxes.shape[-1] != 4:
        raise ValueError(f"targets {index}: boxes must be (G, 4), got shape {tuple(t.boxes.shape)}")
    counts = {name: int(v.shape[0]) for name, v in t.tensor_fields().items()}
    if len(set(counts.values())) > 1:
        listed = [f"{n} {name}" for name, n in counts.items()]
        text = ", ".join(listed[:-1]) + " and " + listed[-1]
        raise ValueError(f"targets {index}: {text}; the counts must be equal")
    bad = torch.where((t.boxes[:, 2] <= t.boxes[:, 0]) | (t.boxes[:, 3] <= t.boxes[:, 1]))[0]
    if len(bad):
        j = int(bad[0])
        raise ValueError(
            f"targets {index}: box {j} {t.boxes[j].tolist()} has no area; boxes need x2 > x1 and y2 > y1"
        )


def _as_float_image(image: Tensor, index: int) -> Tensor:
    if not isinstance(image, Tensor):
        raise TypeError(f"image {index}: expected a torch.Tensor (3, H, W), got {type(image).__name__}")
    if image.dtype == torch.uint8 and image.shape[-2] * image.shape[-1] <= BY_CHANNEL_PIXELS:
        return image.float() / 255.0
    return image  # a large uint8 image: the preprocessor converts it one channel at a time
