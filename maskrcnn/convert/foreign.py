"""Weights files that are not our checkpoints, as `maskrcnn.checkpoints.read_checkpoint` meets them
(already read by `maskrcnn.safe_load`): `to_checkpoint(obj, source=...)` turns what it can
convert into our checkpoint dict and says what to do with the rest.

- a detectron2 checkpoint (its `.pth` or model-zoo `.pkl`): converted by
  `maskrcnn.convert.detectron2` (`is_detectron2`, `from_detectron2`);
- a torchvision state dict: a UserError saying to run `maskrcnn convert --from torchvision-...`,
  since the torchvision version (v1, v2, keypoint) is not told by the weights alone;
- anything else: a UserError naming the file and what it holds.
"""

from __future__ import annotations

from typing import Any

from ..errors import UserError
from .detectron2 import from_detectron2, is_detectron2
from .torchvision import is_torchvision_state, torchvision_checkpoint, torchvision_state

__all__ = ["to_checkpoint"]


def _what(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = [repr(k) for k in list(obj)[:5]]
        return (
            f"a dict with keys {', '.join(keys)}{', ...' if len(obj) > 5 else ''}"
            if keys
            else "an empty dict"
        )
    return f"a {type(obj).__name__}"


def to_checkpoint(obj: Any, *, source: str, torchvision: bool = False) -> dict:
    """Our checkpoint dict for a foreign weights object read from `source`, or a UserError naming
    `source` and what to do. `torchvision=True` converts a torchvision state dict too (its version
    told by its keys), as `train --init` does, where only the weights matter."""
    if is_detectron2(obj):
        return from_detectron2(obj, source=source)
    state = obj.get("model") if isinstance(obj, dict) and isinstance(obj.get("model"), dict) else obj
    if is_torchvision_state(state):
        if torchvision:
            return torchvision_checkpoint(torchvision_state(obj, source=source))
        raise UserError(
            f"{source}: not a maskrcnn checkpoint (no format='maskrcnn' entry). It is a torchvision "
            "state dict: run `maskrcnn convert --from torchvision-v1 IN OUT` (or torchvision-v2, "
            "torchvision-keypoint)."
        )
    raise UserError(
        f"{source}: not a maskrcnn checkpoint (no format='maskrcnn' entry; it holds {_what(obj)})"
    )
