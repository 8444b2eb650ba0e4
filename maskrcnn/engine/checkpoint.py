"""Writing our checkpoints (training's side) and loading ImageNet backbone weights into a model.

The format and its reading (`read_checkpoint`, `load_model`, `resolve_weights`, ...) are in
`maskrcnn.checkpoints`, which inference uses without the training engine. Writes are atomic: a
temporary file in the same folder, flushed and fsynced, then renamed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..checkpoints import resolve_weights
from ..config import Config
from ..convert.checkpoint_format import checkpoint_dict
from ..convert.fit import load_fitting
from ..errors import UserError
from ..files import atomic_write
from ..safe_load import load_weights_file


def atomic_save(obj: Any, path: str | Path) -> None:
    """`torch.save(obj)` into `path` atomically (see `maskrcnn.files.atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def model_state(model) -> dict:
    """The checkpoint dict of a model (without training state)."""
    return checkpoint_dict(
        config=model.config if model.config is not None else Config(),
        class_names=model.class_names,
        category_ids=model.category_ids,
        model={k: v.detach().cpu() for k, v in model.state_dict().items()},
    )


def save_model(model, path: str | Path, **extra: Any) -> None:
    atomic_save({**model_state(model), **extra}, path)


def load_backbone_weights(model, path_or_url: str | Path, *, sha256: str | None = None) -> None:
    """Load an ImageNet ResNet state dict in torchvision format into the model's backbone; weights
    that do not fit it (e.g. ResNet-50 weights into a ResNet-18) -> UserError, nothing loaded."""
    from ..convert.torchvision import resnet_imagenet_to_backbone

    path = resolve_weights(path_or_url, sha256=sha256)
    state = load_weights_file(path)
    if not isinstance(state, dict):
        raise UserError(f"{path_or_url}: not a ResNet state dict (it holds a {type(state).__name__})")
    load_fitting(
        model.backbone.body,
        resnet_imagenet_to_backbone(state),
        source=str(path_or_url),
        what="the backbone (ResNet weights; check backbone.depth)",
    )
