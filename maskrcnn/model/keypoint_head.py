"""Keypoint head (Mask R-CNN §5): a stack of 3×3 convs on 14×14 RoI features, a stride-2
transposed conv to one channel per keypoint, then 2× bilinear upsampling: J heatmap logits of
56×56 per RoI, each trained as a softmax over its 56² locations (one-hot target).

(R, C, 14, 14) -> 8 × (conv3×3, 512, ReLU) -> deconv 4×4 stride 2 -> (R, J, 28, 28)
-> bilinear ×2 -> (R, J, 56, 56)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .layers import ConvNorm, init_conv_kaiming


class KeypointHead(nn.Module):
    def __init__(self, *, in_channels: int, num_keypoints: int, conv_dim: int = 512, num_convs: int = 8):
        super().__init__()
        channels = [in_channels] + [conv_dim] * num_convs
        self.convs = nn.ModuleList(
            ConvNorm(channels[i], channels[i + 1], 3, norm="none", relu=True) for i in range(num_convs)
        )
        self.predictor = nn.ConvTranspose2d(conv_dim, num_keypoints, 4, stride=2, padding=1)
        init_conv_kaiming(self)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = conv(x)
        x = self.predictor(x)
        return F.interpolate(
            x, scale_factor=2.0, mode="bilinear", align_corners=False, recompute_scale_factor=False
        )
