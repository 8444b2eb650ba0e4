"""Optimizer and learning-rate schedule (Mask R-CNN §3.1 "Training": SGD, momentum 0.9, weight
decay 1e-4, linear warmup, step decay), as pure functions of the solver config."""

from __future__ import annotations

import bisect
import math

import torch
from torch import nn

from ..config import SolverConfig
from ..errors import UserError

NORM_TYPES = (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.SyncBatchNorm)


def parameter_groups(model: nn.Module, solver: SolverConfig) -> list[dict]:
    """Trainable parameters split into (decayed, not decayed) groups.

    With `no_decay_on_norm_and_bias`, norm weights/biases and all biases get weight decay
    `weight_decay_norm`; otherwise every parameter gets `weight_decay`.
    """
    decay, no_decay = [], []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_norm_or_bias = isinstance(module, NORM_TYPES) or name == "bias"
            (no_decay if solver.no_decay_on_norm_and_bias and is_norm_or_bias else decay).append(p)
    groups = [{"params": decay, "weight_decay": solver.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": solver.weight_decay_norm})
    return groups


def build_optimizer(model: nn.Module, solver: SolverConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, solver)
    if solver.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=solver.base_lr, momentum=solver.momentum)
    if solver.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=solver.base_lr)
    raise UserError(f"unknown optimizer {solver.optimizer!r}; choose sgd or adamw")


def lr_factor(iteration: int, solver: SolverConfig) -> float:
    """Multiplier of base_lr at `iteration` (0-based): linear warmup from warmup_factor to 1,
    then ×gamma at each of `steps` (multistep) or a half cosine to 0 at max_iter (cosine)."""
    if solver.schedule == "multistep":
        factor = solver.gamma ** bisect.bisect_right(sorted(solver.steps), iteration)
    elif solver.schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * min(iteration, solver.max_iter) / max(solver.max_iter, 1)))
    else:
        raise UserError(f"unknown schedule {solver.schedule!r}; choose multistep or cosine")
    if iteration < solver.warmup_iters:
        alpha = iteration / solver.warmup_iters
        factor *= solver.warmup_factor * (1 - alpha) + alpha
    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, solver: SolverConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, solver))
