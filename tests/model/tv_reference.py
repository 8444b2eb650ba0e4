"""Helpers for parity tests: torchvision Mask R-CNN models with random but well-conditioned weights."""

from __future__ import annotations

import torch
import torchvision
from torchvision.models.detection import (
    keypointrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn_v2,
)

BUILDERS = {
    "v1": maskrcnn_resnet50_fpn,
    "v2": maskrcnn_resnet50_fpn_v2,
    "keypoint": keypointrcnn_resnet50_fpn,
}


def torchvision_model(version: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    """torchvision's `maskrcnn_resnet50_fpn(_v2)` or `keypointrcnn_resnet50_fpn` ("keypoint") with
    weights=None and a fixed seed, then made decisive: random norm statistics and sharper
    class/objectness layers, so that the random model produces confident detections (the default
    init gives near-uniform scores below the 0.05 threshold)."""
    torch.manual_seed(seed)
    model = BUILDERS[version](weights=None, weights_backbone=None, **kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torchvision.ops.FrozenBatchNorm2d)):
                c = module.running_mean.shape[0]
                module.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
                module.weight.copy_(torch.rand(c, generator=gen) * 0.5 + 0.5)
                module.bias.copy_(torch.randn(c, generator=gen) * 0.1)
        # keep activations bounded through the deep random trunk
        for name, p in model.backbone.body.named_parameters():
            if "bn3.weight" in name or ("layer" in name and "bn2.weight" in name):
                p.mul_(0.3)
        predictor = model.roi_heads.box_predictor
        predictor.cls_score.weight.mul_(40.0)
        predictor.bbox_pred.weight.mul_(5.0)
        model.rpn.head.cls_logits.weight.mul_(10.0)
    return model.eval()


# torchvision's loss names -> ours
TV_LOSS_NAMES = {
    "loss_objectness": "loss_rpn_cls",
    "loss_rpn_box_reg": "loss_rpn_box",
    "loss_classifier": "loss_cls",
    "loss_box_reg": "loss_box",
    "loss_mask": "loss_mask",
}


def assert_losses_match(ours: dict, torchvision_losses: dict, *, atol: float) -> None:
    """Each of the 5 training losses equals torchvision's within `atol`."""
    for tv_name, name in TV_LOSS_NAMES.items():
        difference = abs(ours[name].item() - torchvision_losses[tv_name].item())
        assert difference <= atol, (name, ours[name], torchvision_losses[tv_name])


def converted(tv_model: torch.nn.Module, version: str, overrides=()) -> torch.nn.Module:
    """Our model holding a torchvision model's weights (config from the state dict + overrides)."""
    from maskrcnn.config import apply_overrides
    from maskrcnn.convert.torchvision import config_for, convert_state_dict
    from maskrcnn.model import build_model

    state = tv_model.state_dict()
    model = build_model(apply_overrides(config_for(state, version), list(overrides)))
    model.load_state_dict(convert_state_dict(state))
    return model.eval()
