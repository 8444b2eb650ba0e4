"""Mask head (Mask R-CNN §3, Figure 4 right): a small FCN on 14×14 RoI features.

(R, C, 14, 14) -> 4 × (conv3×3, 256, ReLU) -> deconv 2×2 stride 2 (ReLU) -> 1×1 conv
-> (R, K, 28, 28) logits, one mask per class (or 1 channel class-agnostic, or K+1 for the
softmax ablation).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import ConvNorm, init_conv_kaiming


class MaskHead(nn.Module):
    def __init__(
        self,
        *,
        in_channels: int,
        num_outputs: int,
        conv_dim: int = 256,
        num_convs: int = 4,
        norm: str = "none",
    ):
        super().__init__()
        channels = [in_channels] + [conv_dim] * num_convs
        self.convs = nn.ModuleList(
            ConvNorm(channels[i], channels[i + 1], 3, norm=norm, relu=True) for i in range(num_convs)
        )
        self.deconv = nn.ConvTranspose2d(conv_dim, conv_dim, 2, stride=2)
        self.predictor = nn.Conv2d(conv_dim, num_outputs, 1)
        init_conv_kaiming(self)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = conv(x)
        return self.predictor(torch.relu(self.deconv(x)))
