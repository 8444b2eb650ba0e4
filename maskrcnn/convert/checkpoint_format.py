"""The entries of our model checkpoint dict, in one place for everything that writes one:
`checkpoint_dict(config=..., class_names=..., category_ids=..., model=...)`.

    format: "maskrcnn", version: `VERSION` (the module layout of the state dict), schema: the
    config schema version (`maskrcnn.config.SCHEMA_VERSION`), config: the Config as a dict,
    class_names: K names, category_ids: K dataset category ids (label i+1 <-> category_ids[i]),
    model: the state dict.

`engine.checkpoint` writes and `maskrcnn.checkpoints` reads these files; the converters
(torchvision, detectron2) build the same dict here, so that a converted checkpoint records its
schema as well.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..config import SCHEMA_VERSION, Config, to_dict

__all__ = ["FORMAT", "VERSION", "checkpoint_dict"]

FORMAT = "maskrcnn"
VERSION = 2  # 2: the RoI-head branches live under roi_heads.{box,mask}.*


def checkpoint_dict(
    *,
    config: Config,
    class_names: Sequence[str],
    category_ids: Sequence[int],
    model: dict[str, Tensor],
) -> dict:
    """Our checkpoint dict (without training state) of a config, its K classes and a state dict."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "schema": SCHEMA_VERSION,
        "config": to_dict(config),
        "class_names": list(class_names),
        "category_ids": list(category_ids),
        "model": model,
    }
