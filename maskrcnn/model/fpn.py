"""Feature Pyramid Network (Lin et al. 2017): top-down pathway with lateral connections.

    M5 = lateral(C5);  M_k = lateral(C_k) + upsample_nearest(M_{k+1});  P_k = output_conv(M_k)
    P6 = subsample(P5) (max-pool, kernel 1, stride 2), used by the RPN only.

Shapes: [C2..C5] -> [P2..P6], each (N, D, H / s, W / s) with s = 4, 8, 16, 32, 64 and D channels.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import ResNet
from .layers import ConvNorm


class FPN(nn.Module):
    def __init__(self, *, in_channels: list[int], out_channels: int = 256, norm: str = "none"):
        super().__init__()
        self.lateral = nn.ModuleList(ConvNorm(c, out_channels, 1, norm=norm) for c in in_channels)
        self.output = nn.ModuleList(ConvNorm(out_channels, out_channels, 3, norm=norm) for _ in in_channels)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        merged = self.lateral[-1](features[-1])
        outputs = [self.output[-1](merged)]
        for k in range(len(features) - 2, -1, -1):
            lateral = self.lateral[k](features[k])
            top_down = F.interpolate(merged, size=lateral.shape[-2:], mode="nearest")
            merged = lateral + top_down
            outputs.insert(0, self.output[k](merged))
        outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2))  # P6
        return outputs


class BackboneWithFPN(nn.Module):
    """ResNet + FPN: images (N, 3, H, W) -> [P2, P3, P4, P5, P6]."""

    def __init__(self, *, body: ResNet, fpn: FPN):
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = fpn.output[0].conv.out_channels
        self.strides = [4, 8, 16, 32, 64]

    def forward(self, images: Tensor) -> list[Tensor]:
        return self.fpn(self.body(images))
