"""Box head (Fast R-CNN): pooled RoI features -> K+1 class scores and per-class box deltas.

Shapes: (R, C, 7, 7) pooled features -> (R, fc_dim) representation
-> class_logits (R, K+1) and box_deltas (R, 4*(K+1)).

- FCBoxHead: two 1024-d fully connected layers (the paper's FPN head, "2fc").
- ConvFCBoxHead: 4 conv3×3 (+ norm) then one FC (torchvision v2, "4conv1fc").
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import ConvNorm, init_conv_kaiming


class FCBoxHead(nn.Module):
    def __init__(self, *, in_channels: int, pool_size: int, fc_dim: int = 1024):
        super().__init__()
        self.fc1 = nn.Linear(in_channels * pool_size * pool_size, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)
        self.out_dim = fc_dim

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(start_dim=1)  # (R, C, S, S) -> (R, C*S*S)
        return torch.relu(self.fc2(torch.relu(self.fc1(x))))


class ConvFCBoxHead(nn.Module):
    def __init__(
        self,
        *,
        in_channels: int,
        pool_size: int,
        conv_dim: int = 256,
        num_convs: int = 4,
        fc_dim: int = 1024,
        norm: str = "bn",
    ):
        super().__init__()
        channels = [in_channels] + [conv_dim] * num_convs
        self.convs = nn.ModuleList(
            ConvNorm(channels[i], channels[i + 1], 3, norm=norm, relu=True) for i in range(num_convs)
        )
        self.fc1 = nn.Linear(conv_dim * pool_size * pool_size, fc_dim)
        self.out_dim = fc_dim
        init_conv_kaiming(self)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = conv(x)
        return torch.relu(self.fc1(x.flatten(start_dim=1)))


class BoxPredictor(nn.Module):
    """Linear layers for K+1 class logits and 4 deltas per class (background included, unused)."""

    def __init__(self, *, in_dim: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(in_dim, (num_classes + 1) * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(x), self.bbox_pred(x)
