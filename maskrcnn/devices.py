"""Device names: `resolve_device` turns a user's `--device` / `train.device` ("auto", "cpu",
"cuda", "cuda:1", ...) into one this machine has, for every command (inference and training).
"""

from __future__ import annotations

import torch

from .errors import UserError


def resolve_device(name: str) -> str:
    """`auto` -> cuda when a GPU is there, else cpu; a device this machine lacks is a UserError."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"device {name!r} is not a device name ({e})") from None
    if device.type == "cuda" and not (device.index or 0) < torch.cuda.device_count():
        found = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA"
        raise UserError(f"device {name!r} is not available: this machine has {found}")
    return name
