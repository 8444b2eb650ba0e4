"""Freezing parts of the model for small data (`train.freeze`), on top of `model.backbone.frozen_stages`.

    none              everything trains (what `frozen_stages` leaves trainable)
    backbone          the ResNet (`backbone.body`) is frozen: FPN, RPN and RoI heads train
    backbone+fpn      the ResNet and the FPN (`backbone`) are frozen
    backbone+fpn+rpn  only the RoI heads train (matterport's `layers="heads"`)

A frozen parameter gets `requires_grad=False`, so it has no gradient and `build_optimizer` leaves
it out: no weight decay, no momentum, it never changes. BatchNorm layers (norm=bn) inside a frozen
part stay in eval mode while training (`set_train_mode`), so their running statistics do not move
either: the frozen part computes the same function at every step.
"""

from __future__ import annotations

from torch import nn

from ..errors import UserError

# level -> the module prefixes (of the model's state dict names) it freezes
FREEZE_LEVELS: dict[str, tuple[str, ...]] = {
    "none": (),
    "backbone": ("backbone.body",),
    "backbone+fpn": ("backbone",),
    "backbone+fpn+rpn": ("backbone", "rpn"),
}


def frozen_prefixes(level: str) -> tuple[str, ...]:
    if level not in FREEZE_LEVELS:
        raise UserError(f"train.freeze={level!r} is not one of {', '.join(FREEZE_LEVELS)}")
    return FREEZE_LEVELS[level]


def _inside(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def freeze(model: nn.Module, level: str) -> list[str]:
    """Set `requires_grad=False` on every parameter of the parts `level` names; returns their names.
    Call it before building the optimizer."""
    prefixes = frozen_prefixes(level)
    frozen = []
    for name, p in model.named_parameters():
        if _inside(name, prefixes):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


def set_train_mode(model: nn.Module, level: str) -> None:
    """`model.train()`, then the BatchNorm layers of the frozen parts back in eval mode. `model` may be
    wrapped (DistributedDataParallel: its names start with `module.`)."""
    model.train()
    prefixes = frozen_prefixes(level)
    if not prefixes:
        return
    for name, module in model.named_modules():
        name = name[len("module.") :] if name.startswith("module.") else name
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and _inside(name, prefixes):
            module.eval()
