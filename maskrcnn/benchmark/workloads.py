"""The workloads of `maskrcnn benchmark`: torchvision's and our Mask R-CNN with identical, decisive
random weights, and the images and batches they are timed on (coco-mini val and train images, the
synthetic shapes of the demo).

coco-mini is found with `--coco DIR`, else at ../shared/data/coco-mini from the current folder, else
beside the checkout the package was installed from (`default_coco_dir`).
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..config import apply_overrides
from ..convert.torchvision import config_for, convert_state_dict
from ..data.shapes import ShapesDataset
from ..data.specs import build_dataset
from ..data.transforms import LargeScaleJitter
from ..errors import UserError
from ..files import STORED_PIXELS, read_image
from ..model import build_model
from ..model.preprocess import padded_shape, resized_shape
from ..structures import Targets

if TYPE_CHECKING:
    from .speed import Settings

COCO_MINI = os.path.join("..", "shared", "data", "coco-mini")
Batch = tuple[list[Tensor], list[Targets]]


def default_coco_dir() -> Path:
    """../shared/data/coco-mini from the current folder, else beside the checkout of this package."""
    here = Path.cwd() / COCO_MINI
    checkout = Path(__file__).resolve().parents[2] / COCO_MINI
    return next((p for p in (here, checkout) if p.is_dir()), here).resolve()


def coco_dir(settings: Settings) -> Path:
    folder = Path(settings.coco) if settings.coco else default_coco_dir()
    if not (folder / "annotations" / "instances_val2017.json").is_file():
        raise UserError(
            f"coco-mini not found at {folder} (it needs annotations/instances_val2017.json); "
            "give its folder with --coco DIR"
        )
    return folder


def decisive_torchvision(seed: int, **kwargs: Any) -> nn.Module:
    """Seeded `maskrcnn_resnet50_fpn(weights=None)` whose random weights give confident detections."""
    import torchvision
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(seed)
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, torchvision.ops.FrozenBatchNorm2d)):
                n = m.running_mean.numel()
                m.running_mean.normal_(0.0, 0.1, generator=gen)
                m.running_var.uniform_(0.75, 1.25, generator=gen)
                m.weight.uniform_(0.5, 1.0, generator=gen)
                m.bias.copy_(torch.randn(n, generator=gen) * 0.1)
        for name, p in model.backbone.body.named_parameters():  # damp the residual branches
            if name.endswith("bn3.weight") or ("layer" in name and name.endswith("bn2.weight")):
                p.mul_(0.3)
        model.roi_heads.box_predictor.cls_score.weight.mul_(40.0)
        model.roi_heads.box_predictor.bbox_pred.weight.mul_(5.0)
        model.rpn.head.cls_logits.weight.mul_(10.0)
    return model.eval()


def coco_models(settings: Settings) -> tuple[nn.Module, nn.Module]:
    """(torchvision, ours) with identical weights and inference sizes."""
    tv = decisive_torchvision(
        settings.seed,
        min_size=settings.min_size,
        max_size=settings.max_size,
        box_detections_per_img=settings.detections,
        rpn_post_nms_top_n_test=settings.proposals,
    )
    state = tv.state_dict()
    cfg = apply_overrides(
        config_for(state, "v1"),
        [
            f"model.input.min_size=[{settings.min_size}]",
            f"model.input.max_size={settings.max_size}",
            f"model.roi_heads.detections_per_image={settings.detections}",
            f"model.rpn.post_nms_topk_test={settings.proposals}",
            "model.roi_heads.roi_align_impl=auto",
        ],
    )
    ours = build_model(cfg)
    ours.load_state_dict(convert_state_dict(state))
    return tv, ours.eval()


def val_images(settings: Settings) -> tuple[list[str], list[Tensor]]:
    """The first `images` coco-mini val images (by name) of the most common padded size."""
    coco = coco_dir(settings)
    info = json.loads((coco / "annotations/instances_val2017.json").read_text())["images"]

    def padded(im: dict) -> tuple[int, int]:
        size = resized_shape(
            im["height"], im["width"], min_size=settings.min_size, max_size=settings.max_size
        )
        return padded_shape([size], 32)

    common = collections.Counter(padded(im) for im in info).most_common(1)[0][0]
    names = sorted(im["file_name"] for im in info if padded(im) == common)[: settings.images]
    return names, [read_image(coco / "val2017" / n, policy=STORED_PIXELS) for n in names]


def coco_train_batches(setting: str, batch: int, count: int, seed: int, coco: Path) -> list[Batch]:
    """`count` batches of coco-mini train images (LSJ crops for lsj1024, as loaded otherwise)."""
    dataset = build_dataset(f"coco:{coco / 'annotations/instances_train2017.json'}:{coco / 'train2017'}")
    jitter = LargeScaleJitter(1024) if setting == "lsj1024" else None
    gen = torch.Generator().manual_seed(seed)
    samples = [dataset[i % len(dataset)] for i in range(batch * count)]
    if jitter is not None:
        samples = [jitter(s, gen) for s in samples]
    return [
        ([s.image for s in samples[i : i + batch]], [s.targets for s in samples[i : i + batch]])
        for i in range(0, len(samples), batch)
    ]


def shapes_batches(batch: int, count: int) -> list[Batch]:
    dataset = ShapesDataset(batch * count, seed=0)
    samples = [dataset[i] for i in range(len(dataset))]
    return [
        ([s.image for s in samples[i : i + batch]], [s.targets for s in samples[i : i + batch]])
        for i in range(0, len(samples), batch)
    ]
