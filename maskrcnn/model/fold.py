"""BatchNorm folding for inference: a frozen BatchNorm that directly follows a convolution is merged
into that convolution's weights, so that eager PyTorch runs one op where it ran two.

For a conv y = W * x + b followed by a norm z = (y - mean) / sqrt(var + eps) * gamma + beta:

    scale = gamma / sqrt(var + eps)              (C_out,)
    W' = W * scale[:, None, None, None]          (C_out, C_in / groups, kH, kW)
    b' = (b - mean) * scale + beta               (C_out,)

Foldable norms are `FrozenBatchNorm2d` and `nn.BatchNorm2d` in eval mode with running statistics;
GroupNorm (it normalizes with statistics of each input) and convs without a following norm are left
as they are. Which child convs a norm follows is part of each module's forward, so the pairs are
listed per module type (`PAIRS`), plus any Conv2d directly followed by a norm inside nn.Sequential.

`fold_batchnorm(model)` never changes `model`: it returns a new module tree in which only the
modules that contain a folded pair (and their ancestors) are new objects; every other submodule,
parameter and buffer is shared with `model`. Checkpoints therefore keep the unfolded weights, and a
model in training mode is refused (its BatchNorm statistics are still being learned).

    fast = fold_batchnorm(model.eval())          # same detections up to float rounding
"""

from __future__ import annotations

import copy
import itertools
from typing import TypeVar

import torch
from torch import nn

from .backbone import BasicBlock, Bottleneck, ResNet
from .layers import ConvNorm, FrozenBatchNorm2d

__all__ = ["fold_batchnorm", "folded_pairs", "weights_key"]

M = TypeVar("M", bound=nn.Module)

# (conv child, norm child) pairs in which forward applies the norm right after the conv
PAIRS: dict[type, tuple[tuple[str, str], ...]] = {
    ResNet: (("conv1", "bn1"),),
    BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
    Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
    ConvNorm: (("conv", "norm"),),
}


def _foldable(norm: nn.Module | None) -> bool:
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return isinstance(norm, nn.BatchNorm2d) and norm.running_mean is not None and not norm.training


def folded_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """The (conv, norm) child names of `module` that fold (not recursive)."""
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        candidates = list(zip(names, names[1:]))
    else:
        candidates = [p for kind, pairs in PAIRS.items() if isinstance(module, kind) for p in pairs]
    children = module._modules
    return [
        (conv, norm)
        for conv, norm in candidates
        if isinstance(children.get(conv), nn.Conv2d) and _foldable(children.get(norm))
    ]


@torch.no_grad()
def fold_conv(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """A new conv (same hyperparameters, with a bias) equal to norm(conv(x)); scale and bias are
    computed in float64, the weight product in the weight's own dtype (one rounding)."""
    running_var, running_mean = norm.running_var.double(), norm.running_mean.double()
    gamma = norm.weight.double() if norm.weight is not None else torch.ones_like(running_var)
    beta = norm.bias.double() if norm.bias is not None else torch.zeros_like(running_var)
    scale = gamma * (running_var + norm.eps).rsqrt()  # (C_out,)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(running_var)
    weight = conv.weight.detach()
    memory_format = torch.channels_last if _is_channels_last(weight) else torch.contiguous_format
    new_weight = weight * scale.to(weight.dtype).reshape(-1, 1, 1, 1)
    new_bias = ((bias - running_mean) * scale + beta).to(weight.dtype)
    folded = copy.copy(conv)  # shares hyperparameters; gets its own parameter dict below
    folded._parameters = {
        "weight": nn.Parameter(new_weight.contiguous(memory_format=memory_format), requires_grad=False),
        "bias": nn.Parameter(new_bias, requires_grad=False),
    }
    return folded


def _is_channels_last(weight: torch.Tensor) -> bool:
    return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()


def _fold(module: M) -> M:
    """`module` itself when nothing under it folds, else a shallow copy with new children."""
    replaced: dict[str, nn.Module] = {}
    for conv, norm in folded_pairs(module):
        replaced[conv] = fold_conv(module._modules[conv], module._modules[norm])
        replaced[norm] = nn.Identity()
    for name, child in module.named_children():
        if name not in replaced:
            new = _fold(child)
            if new is not child:
                replaced[name] = new
    if not replaced:
        return module
    clone = copy.copy(module)  # shares parameters, buffers and plain attributes
    clone._modules = {**module._modules, **replaced}
    return clone


def fold_batchnorm(model: M) -> M:
    """`model` with every frozen BatchNorm that follows a conv folded into it (see the module doc).

    Returns a new module tree sharing all unfolded submodules and tensors with `model`, which is
    left unchanged. Raises ValueError for a model in training mode."""
    training = [name or "the model" for name, m in model.named_modules() if m.training]
    if training:
        raise ValueError(
            f"fold_batchnorm is for inference only: {training[0]} is in training mode (call .eval() first)"
        )
    return _fold(model)


def weights_key(model: nn.Module) -> tuple[tuple[int, int], ...]:
    """Changes whenever a parameter or buffer of `model` is replaced, moved or modified in place
    (storage address and autograd version counter of each): when a folded copy is stale."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    return tuple((t.data_ptr(), _version(t)) for t in tensors)


def _version(tensor: torch.Tensor) -> int:
    try:
        return tensor._version
    except RuntimeError:  # inference tensors (torch.inference_mode) have no version counter
        return -1
