"""The inference boundary: `Predictor` turns whatever a user has (file paths, PIL images, numpy
arrays, tensors) into detections with a model that only ever sees tensors.

It owns what lies outside the model: decoding inputs (EXIF orientation applied, transparency
composited on white: `maskrcnn.inputs`), device placement, batching (images are grouped by
their padded size, so a result never depends on which other images share a call) and per-call
options (score threshold, classes) that are passed down as arguments, never set on the model.
It runs the model with frozen BatchNorm folded into the convolutions (`maskrcnn.model.fold`; a
cached copy sharing the other weights, rebuilt when `predictor.model`'s tensors change): the same
detections up to float rounding, faster on the CPU. `predictor.model` itself is never folded.

    predictor = maskrcnn.load("model_final.pt")         # or Predictor(model, device="cuda")
    detections = predictor.predict(["a.jpg", pil_image], score_thresh=0.5, classes=["person"])
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from .errors import UserError
from .inputs import as_image_tensor
from .model import MaskRCNN
from .model.fold import fold_batchnorm, weights_key
from .structures import Detections

__all__ = ["Predictor", "resolve_classes"]


def resolve_classes(
    wanted: Iterable[str], *, class_names: Sequence[str], category_ids: Sequence[int]
) -> set[int]:
    """Class names or category ids (as in predictions.json; comma-separated lists allowed) -> the
    model's labels (1..K). Names match exactly, else ignoring case. Unknown ones raise UserError."""
    names, ids = list(class_names), list(category_ids)
    folded = [n.lower() for n in names]
    labels: set[int] = set()
    for token in (t.strip() for spec in wanted for t in spec.split(",")):
        if not token:
            continue
        if token in names:
            labels.add(names.index(token) + 1)
        elif token.lower() in folded:
            labels.add(folded.index(token.lower()) + 1)
        elif token.isdigit() and int(token) in ids:
            labels.add(ids.index(int(token)) + 1)
        else:
            known = ", ".join(f"{n} ({i})" for n, i in zip(names, ids))
            raise UserError(f"--classes: this model has no class {token!r}; its classes: {known}")
    return labels


class Predictor:
    """A model ready for inference on one device. `class_names[i]` and `category_ids[i]` describe
    label i+1 (the model's metadata, stored in its checkpoint). `fold_bn`: run a MaskRCNN with
    its frozen BatchNorm folded into its convs (default; `predictor.model` stays unfolded)."""

    def __init__(
        self,
        model: MaskRCNN,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 8,
        fold_bn: bool = True,
    ):
        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.fold_bn = fold_bn
        self._folded: tuple[tuple, MaskRCNN] | None = None  # (weights_key of self.model, folded copy)

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names

    @property
    def category_ids(self) -> list[int]:
        return self.model.category_ids

    @property
    def config(self):
        return self.model.config

    def to(self, device: str | torch.device) -> Predictor:
        self.model.to(device)
        self.device = torch.device(device)
        return self

    def inference_model(self) -> MaskRCNN:
        """The module `predict` runs: `self.model` with BatchNorm folded (cached until its tensors
        change), or `self.model` itself when folding is off, it is not a MaskRCNN, or in training."""
        if not self.fold_bn or not isinstance(self.model, MaskRCNN) or self.model.training:
            return self.model
        key = weights_key(self.model)
        if self._folded is None or self._folded[0] != key:
            self._folded = (key, fold_batchnorm(self.model))
        return self._folded[1]

    def labels_for(self, classes: Iterable[str]) -> set[int]:
        """Class names or category ids -> the model's labels (ValueError for unknown ones)."""
        return resolve_classes(classes, class_names=self.class_names, category_ids=self.category_ids)

    @torch.no_grad()
    def predict(
        self,
        images: Sequence[Any],
        *,
        score_thresh: float | None = None,
        classes: Iterable[str] | None = None,
        batch_size: int | None = None,
    ) -> list[Detections]:
        """One Detections per image (original-image pixels, on the predictor's device).

        images: file paths, PIL images, numpy arrays (H, W[, C]) or (3, H, W) tensors (float in
        [0, 1] or uint8). score_thresh: keep detections scoring above it (replaces the model's
        threshold before NMS, for this call only). classes: names or category ids to keep.
        """
        if score_thresh is not None and not 0.0 <= score_thresh <= 1.0:
            raise UserError(f"score threshold must be in [0, 1], got {score_thresh}")
        keep = None
        if classes is not None:
            keep = torch.tensor(sorted(self.labels_for(classes)), dtype=torch.int64, device=self.device)
        tensors = [as_image_tensor(image) for image in images]
        size = batch_size or self.batch_size
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, image in enumerate(tensors):
            groups[self.model.padded_size(int(image.shape[-2]), int(image.shape[-1]))].append(i)
        results: list[Detections | None] = [None] * len(tensors)
        model = self.inference_model()
        for indices in groups.values():
            for start in range(0, len(indices), size):
                chunk = indices[start : start + size]
                batch = [tensors[i].to(self.device) for i in chunk]
                for i, det in zip(chunk, model.predict(batch, score_thresh=score_thresh)):
                    results[i] = det if keep is None else det.select(torch.isin(det.labels, keep))
        return results  # type: ignore[return-value]

    __call__ = predict
