"""The inference boundary: `Predictor` turns whatever a user has (file paths, PIL images, numpy
arrays, tensors) into detections with a model that only ever sees tensors.

It owns what lies outside the model: decoding inputs (EXIF orientation applied, transparency
composited on white: `maskrcnn.inputs`), device placement, batching (images are grouped by
their padded size, so a result never depends on which other images share a call) and per-call
options (score threshold, classes) that are passed down as arguments, never set on the model.
It runs the model with frozen BatchNorm folded into the convolutions (`maskrcnn.model.fold`; a
cached copy sharing the other weights, rebuilt when `predictor.model`'s tensors change): the same
detections up to float rounding, faster on the CPU. `predictor.model` itself is never folded.

`precision="bf16"` runs the layers that compute features (ResNet, FPN, the RPN's and the heads'
hidden layers: `BF16_REGIONS`) under bfloat16 autocast where the device computes bf16 natively
(`maskrcnn.hardware`: AVX-512 BF16 / AMX CPUs, CUDA GPUs with bf16), their outputs cast back to
float32; the layers that give scores, box deltas and mask logits, RoIAlign and all post-processing
(box decoding, NMS, mask pasting) stay float32. Elsewhere it runs fp32
and `predictor.precision_note` says why (a one-line note). Detections are float32 either way.

    predictor = maskrcnn.load("model_final.pt")         # or Predictor(model, device="cuda")
    detections = predictor.predict(["a.jpg", pil_image], score_thresh=0.5, classes=["person"])
    predictor.set_precision("bf16")                     # -> None, or the note when it runs fp32
"""

from __future__ import annotations

import copy
import fnmatch
import os
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .hardware import PRECISIONS, resolve_precision
from .image_limits import check_image_shape
from .inputs import as_image_tensor
from .model import MaskRCNN
from .model.fold import fold_batchnorm, weights_key
from .structures import Detections
from .tiling import TileSettings, predict_tiled, tile_grid

TILE_PROGRESS_MIN = 16  # tiles of one image above which `predict(..., progress=True)` shows a bar

__all__ = ["BF16_REGIONS", "Predictor", "autocast_regions", "region_names", "resolve_classes"]

# The submodules that run under bf16 autocast (fnmatch patterns of MaskRCNN's module names, the
# outermost match taken). Every layer that computes features does (trunk,
# FPN, the RPN's 3x3 convs, the box head's FCs, the mask / keypoint heads' convs); the layers whose
# outputs decide the detections (objectness, box deltas, class scores, mask logits), RoIAlign and
# all post-processing stay float32 (measured in benchmarks/README.md, "bf16").
BF16_REGIONS: tuple[str, ...] = (
    "backbone",
    "rpn.head.convs.*",
    "roi_heads.box.head",
    "roi_heads.*.head.convs.*",
    "roi_heads.mask.head.deconv",
)


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
        precision: str = "fp32",
    ):
        if batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {batch_size}")
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.fold_bn = fold_bn
        self._folded: tuple[tuple, MaskRCNN] | None = None  # (key of self.model's weights, run copy)
        self.requested_precision = "fp32"  # what the user asked for
        self.precision = "fp32"  # what runs on this device (bf16 falls back to fp32 without it)
        self.precision_note: str | None = None
        note = self.set_precision(precision)
        if note:
            warnings.warn(note, RuntimeWarning, stacklevel=2)

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
        self.set_precision(self.requested_precision)  # bf16 may run on one device and not another
        return self

    def set_precision(self, precision: str) -> str | None:
        """Compute in `precision` (fp32 | bf16) from now on. Returns the one-line note (also kept as
        `precision_note`) when bf16 is asked for on a device without native bf16, which then runs
        fp32; None otherwise. A model that is not a torch module (ONNX Runtime's) is a UserError."""
        if precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if precision != "fp32" and not isinstance(self.model, nn.Module):
            runtime = getattr(self.model, "backend", "another runtime")
            raise UserError(
                f"precision {precision}: this model runs in {runtime}, in the precision it was exported "
                "in; bf16 is for PyTorch checkpoints "
                "(for a faster ONNX model: maskrcnn export --int8)"
            )
        self.requested_precision = precision
        self.precision, self.precision_note = resolve_precision(precision, self.device)
        return self.precision_note

    def inference_model(self) -> MaskRCNN:
        """The module `predict` runs: `self.model` with BatchNorm folded (cached until its tensors
        change) and, in bf16, with `BF16_REGIONS` under autocast; `self.model` itself when folding
        is off in fp32, it is not a MaskRCNN, or in training."""
        if not isinstance(self.model, MaskRCNN) or self.model.training:
            return self.model
        regions = self.precision == "bf16"
        if not self.fold_bn and not regions:
            return self.model
        key = (weights_key(self.model), self.precision, self.fold_bn, self.device.type)
        if self._folded is None or self._folded[0] != key:
            model = fold_batchnorm(self.model) if self.fold_bn else self.model
            if regions:
                names = region_names(model, BF16_REGIONS)
                model = autocast_regions(model, names, device_type=self.device.type)
            self._folded = (key, model)
        return self._folded[1]

    def input_size(self, height: int, width: int) -> tuple[int, int] | None:
        """The (h, w) the model resizes an image of `height` x `width` to; None when it cannot say."""
        if isinstance(self.model, MaskRCNN):
            return self.model.preprocessor.output_size(height, width)
        size = getattr(self.model, "input_size", None)  # ONNX Runtime's model
        return size(height, width) if callable(size) else None

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
        tile: TileSettings | None = None,
        progress: bool = False,
    ) -> list[Detections]:
        """One Detections per image (original-image pixels, on the predictor's device).

        images: file paths, PIL images, numpy arrays (H, W[, C]) or (3, H, W) tensors (float in
        [0, 1] or uint8). score_thresh: keep detections scoring above it (replaces the model's
        threshold before NMS, for this call only). classes: names or category ids to keep.
        An image too thin for the model (`maskrcnn.image_limits`) is an ImageShapeError naming it.
        tile: tiled inference (`maskrcnn.tiling`: each image cut into tiles at native resolution,
        run in batches of `batch_size` tiles, pieces of cut objects merged); progress: with `tile`,
        a bar over the tiles of an image of more than `TILE_PROGRESS_MIN` tiles.
        """
        if score_thresh is not None and not 0.0 <= score_thresh <= 1.0:
            raise UserError(f"score threshold must be in [0, 1], got {score_thresh}")
        keep = None
        if classes is not None:
            keep = torch.tensor(sorted(self.labels_for(classes)), dtype=torch.int64, device=self.device)
        tensors = [as_image_tensor(image) for image in images]
        for i, (image, tensor) in enumerate(zip(images, tensors)):  # thin images: a UserError naming it
            h, w = int(tensor.shape[-2]), int(tensor.shape[-1])
            name = str(image) if isinstance(image, (str, os.PathLike)) else f"image {i} of the call"
            check_image_shape(h, w, name=name, resized=self.input_size(h, w) if min(h, w) > 0 else None)
        size = batch_size or self.batch_size
        if tile is not None:
            return [
                self._predict_tiled(
                    image, tile, score_thresh=score_thresh, keep=keep, size=size, progress=progress
                )
                for image in tensors
            ]
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

    def _predict_tiled(
        self,
        image: torch.Tensor,
        tile: TileSettings,
        *,
        score_thresh: float | None,
        keep: torch.Tensor | None,
        size: int,
        progress: bool,
    ) -> Detections:
        from tqdm import tqdm

        model = self.inference_model()
        image = image.to(self.device)
        h, w = int(image.shape[-2]), int(image.shape[-1])
        count = len(tile_grid(h, w, size=tile.size, overlap=tile.overlap))
        show = progress and count > TILE_PROGRESS_MIN
        with tqdm(total=count, desc=f"tiles {w}x{h}", unit="tile", leave=False, disable=not show) as bar:
            det = predict_tiled(
                lambda batch: model.predict(batch, score_thresh=score_thresh),
                image,
                tile,
                batch_size=size,
                progress=bar.update,
            )
        return det if keep is None else det.select(torch.isin(det.labels, keep))


class AutocastRegion(nn.Module):
    """`module` run under bf16 autocast, its floating-point outputs (tensors, or lists / tuples of
    them) cast back to float32. Attributes other than its own are read from `module`."""

    def __init__(self, module: nn.Module, *, device_type: str):
        super().__init__()
        self.module = module
        self.device_type = device_type

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            out = self.module(*args, **kwargs)
        return _float32(out)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)


def region_names(model: nn.Module, patterns: Iterable[str]) -> list[str]:
    """The names of `model`'s submodules that match one of `patterns` (fnmatch), outermost only."""
    patterns = list(patterns)
    names: list[str] = []
    for name, _ in model.named_modules():
        if any(name.startswith(n + ".") for n in names):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            names.append(name)
    return names


def autocast_regions(model: nn.Module, regions: Iterable[str], *, device_type: str) -> nn.Module:
    """A copy of `model` whose submodules at the dotted names `regions` run in bf16
    (`AutocastRegion`); the modules on the way are shallow copies, every other module, parameter
    and buffer is `model`'s own. `model` is not changed."""
    root = _shallow(model)
    for name in regions:
        *path, last = name.split(".")
        parent = root
        for part in path:
            child = _shallow(getattr(parent, part))
            setattr(parent, part, child)
            parent = child
        setattr(parent, last, AutocastRegion(getattr(parent, last), device_type=device_type))
    return root


def _shallow(module: nn.Module) -> nn.Module:
    out = copy.copy(module)
    out._modules = dict(module._modules)  # its own child table: replacing a child leaves `module` alone
    return out


def _float32(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_float32(v) for v in value)
    return value
