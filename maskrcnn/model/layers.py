"""Small building blocks shared by the backbone and the heads: norms and conv+norm."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (buffers, never trained).

    y = (x - mean) / sqrt(var + eps) * weight + bias, computed as x * scale + shift.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        # (C,) -> (1, C, 1, 1)
        w = self.weight.reshape(1, -1, 1, 1)
        b = self.bias.reshape(1, -1, 1, 1)
        rv = self.running_var.reshape(1, -1, 1, 1)
        rm = self.running_mean.reshape(1, -1, 1, 1)
        scale = w * (rv + self.eps).rsqrt()
        shift = b - rm * scale
        return x * scale + shift

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


NORMS = ("none", "frozen_bn", "bn", "gn")


def make_norm(kind: str, channels: int) -> nn.Module | None:
    """A normalization layer by name: none | frozen_bn | bn | gn (32 groups)."""
    if kind == "none":
        return None
    if kind == "frozen_bn":
        return FrozenBatchNorm2d(channels)
    if kind == "bn":
        return nn.BatchNorm2d(channels)
    if kind == "gn":
        return nn.GroupNorm(32, channels)
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")


class ConvNorm(nn.Module):
    """Conv2d, then an optional norm, then an optional ReLU. The conv has a bias only without norm."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        norm: str = "none",
        relu: bool = False,
    ):
        super().__init__()
        norm_layer = make_norm(norm, out_channels)
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            bias=norm_layer is None,
        )
        self.norm = norm_layer
        self.relu = relu

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.relu:
            x = torch.relu(x)
        return x


def init_conv_kaiming(module: nn.Module) -> None:
    """He initialization (fan_out, ReLU) for every conv; zero biases."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
