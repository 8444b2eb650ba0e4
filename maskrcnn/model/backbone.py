"""ResNet bottom-up pathway (He et al. 2016), returning C2..C5 (strides 4, 8, 16, 32).

ResNet-18/34 use basic blocks, ResNet-50/101 bottleneck blocks with the stride on the 3×3 conv
("ResNet v1.5", as torchvision) or, with `stride_in_1x1`, on the first 1×1 conv (the original
MSRA / Caffe2 ResNet that detectron2's models use). ResNeXt (Xie et al. 2017): `groups` > 1 makes
the 3×3 conv a grouped conv of `groups × width_per_group` channels in res2 (doubling per stage).
Parameter names follow torchvision's ResNet (conv1, bn1, layer1..4, downsample) so that ImageNet
checkpoints in torchvision format load without renaming.

Shapes: images (N, 3, H, W) -> [(N, C_k, H / 2^k, W / 2^k) for k = 2..5].
"""

from __future__ import annotations

from torch import Tensor, nn

from .layers import make_norm

STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, width: int, *, stride: int, norm: str, **bottleneck: int):
        super().__init__()
        if bottleneck.get("groups", 1) != 1 or bottleneck.get("stride_in_1x1"):
            raise ValueError("ResNet-18/34 basic blocks have no groups and no 1×1 conv: use depth 50 or 101")
        out_channels = width * self.expansion
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=stride, padding=1, bias=False)
        self.bn1 = make_norm(norm, width)
        self.conv2 = nn.Conv2d(width, out_channels, 3, padding=1, bias=False)
        self.bn2 = make_norm(norm, out_channels)
        self.downsample = _shortcut(in_channels, out_channels, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.conv1(x)).relu_()
        out = self.bn2(self.conv2(out))
        return (out + identity).relu_()


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        in_channels: int,
        width: int,
        *,
        stride: int,
        norm: str,
        groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = False,
    ):
        """width: the stage's base width (out channels = 4 * width); the 1×1 and 3×3 convs have
        width * width_per_group / 64 * groups channels (torchvision's and detectron2's rule)."""
        super().__init__()
        out_channels = width * self.expansion
        inner = int(width * (width_per_group / 64.0)) * groups
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, inner, 1, stride=stride_1x1, bias=False)
        self.bn1 = make_norm(norm, inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride=stride_3x3, padding=1, groups=groups, bias=False)
        self.bn2 = make_norm(norm, inner)
        self.conv3 = nn.Conv2d(inner, out_channels, 1, bias=False)
        self.bn3 = make_norm(norm, out_channels)
        self.downsample = _shortcut(in_channels, out_channels, stride, norm)

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.conv1(x)).relu_()
        out = self.bn2(self.conv2(out)).relu_()
        out = self.bn3(self.conv3(out))
        return (out + identity).relu_()


def _shortcut(in_channels: int, out_channels: int, stride: int, norm: str) -> nn.Module | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), make_norm(norm, out_channels)
    )


class ResNet(nn.Module):
    """ResNet trunk. `frozen_stages`: 0 none, 1 the stem, k the stem and res2..res(k)."""

    def __init__(
        self,
        *,
        depth: int = 50,
        norm: str = "frozen_bn",
        frozen_stages: int = 1,
        width: int = 64,
        groups: int = 1,
        width_per_group: int = 64,
        stride_in_1x1: bool = False,
    ):
        super().__init__()
        bottleneck = {"groups": groups, "width_per_group": width_per_group, "stride_in_1x1": stride_in_1x1}
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}")
        if norm == "none":
            raise ValueError("the ResNet backbone needs a norm: frozen_bn, bn or gn")
        block = Bottleneck if depth >= 50 else BasicBlock
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = make_norm(norm, width)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = width
        self.out_channels: list[int] = []
        for i, num_blocks in enumerate(STAGE_BLOCKS[depth]):
            stage_width = width * 2**i
            blocks = []
            for b in range(num_blocks):
                stride = 2 if (b == 0 and i > 0) else 1
                blocks.append(block(in_channels, stage_width, stride=stride, norm=norm, **bottleneck))
                in_channels = stage_width * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.out_channels.append(in_channels)
        self.strides = [4, 8, 16, 32]
        self._init_weights()
        self.freeze(frozen_stages)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def freeze(self, frozen_stages: int) -> None:
        stages = [[self.conv1, self.bn1], [self.layer1], [self.layer2], [self.layer3], [self.layer4]]
        for modules in stages[:frozen_stages]:
            for module in modules:
                for p in module.parameters():
                    p.requires_grad_(False)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.bn1(self.conv1(x)).relu_())
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]
