"""Each detectron2 option of ours against the detectron2 function it reproduces, on many inputs
(including the edge cases whole-model runs rarely reach): mask pasting, anchors, FPN level
assignment, proposal / detection size filters, keypoint decoding, the MSRA bottleneck."""

from __future__ import annotations

import torch

from maskrcnn.model.anchors import AnchorGenerator
from maskrcnn.model.keypoint_branch import decode_keypoints
from maskrcnn.model.mask_paste import paste_masks
from maskrcnn.model.roi_pooler import assign_levels
from maskrcnn.ops.boxes import nonempty_boxes

from .d2_reference import import_detectron2

import_detectron2()


def random_boxes(gen: torch.Generator, n: int, height: int, width: int) -> torch.Tensor:
    """Boxes of every size (under a pixel to the whole image), some crossing or touching the border."""
    x1 = torch.rand(n, generator=gen) * width * 1.1 - width * 0.05
    y1 = torch.rand(n, generator=gen) * height * 1.1 - height * 0.05
    w = torch.exp(torch.rand(n, generator=gen) * 7 - 1.5)
    h = torch.exp(torch.rand(n, generator=gen) * 7 - 1.5)
    boxes = torch.stack((x1, y1, x1 + w, y1 + h), dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes


def test_mask_paste_detectron2_equals_paste_masks_in_image():
    from detectron2.layers.mask_ops import paste_masks_in_image

    gen = torch.Generator().manual_seed(0)
    height, width = 211, 317
    boxes = random_boxes(gen, 300, height, width)
    boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
    probs = torch.rand((len(boxes), 28, 28), generator=gen)
    probs[::3] = (probs[::3] > 0.5).float()  # sharp masks too: many pixels exactly at 0 / 1
    theirs = paste_masks_in_image(probs, boxes, (height, width), threshold=0.5)
    ours = paste_masks(probs, boxes, (height, width), threshold=0.5, mode="detectron2")
    differ = (ours != theirs).sum().item()
    print("pasted pixels that differ:", differ, "of", theirs.numel(), "set:", theirs.sum().item())
    assert differ <= 1e-5 * theirs.numel()
    torchvision_way = paste_masks(probs, boxes, (height, width), threshold=0.5)
    assert (torchvision_way != theirs).sum().item() > 100 * max(differ, 1)  # the option matters


def test_exact_anchors_equal_default_anchor_generator():
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

    cfg = get_cfg()
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]  # Base-RCNN-FPN.yaml's
    shapes = [ShapeSpec(stride=s) for s in (4, 8, 16, 32, 64)]
    theirs = DefaultAnchorGenerator(cfg, shapes)
    sizes = [(75, 120), (38, 60), (19, 30), (10, 15), (5, 8)]
    features = [torch.zeros(1, 1, h, w) for h, w in sizes]
    ours = AnchorGenerator(
        sizes=((32,), (64,), (128,), (256,), (512,)),
        aspect_ratios=(0.5, 1.0, 2.0),
        strides=(4, 8, 16, 32, 64),
        round_corners=False,
    )(sizes, (300, 480), "cpu")
    for mine, expected in zip(ours, theirs(features)):
        assert torch.equal(mine, expected.tensor)


def test_level_mapping_detectron2_equals_assign_boxes_to_levels():
    from detectron2.modeling.poolers import assign_boxes_to_levels
    from detectron2.structures import Boxes

    gen = torch.Generator().manual_seed(1)
    boxes = random_boxes(gen, 5000, 800, 1333)
    # sides at exactly the level boundaries (112, 224, 448 px), where the two roundings can disagree
    sides = (56.0, 112.0, 224.0, 448.0, 111.99999, 224.00002, 223.9999)
    edges = torch.tensor([[0, 0, s, s] for s in sides])
    boxes = torch.cat([boxes, edges])
    theirs = assign_boxes_to_levels([Boxes(boxes)], 2, 5, 224, 4)
    ours = assign_levels(boxes, min_level=2, max_level=5, mapping="detectron2")
    assert torch.equal(ours, theirs)
    # torchvision's epsilon after the log puts a 223.9999 px box on P4, detectron2 on P3
    assert assign_levels(edges, min_level=2, max_level=5)[-1] == 2 and theirs[-1] == 1


def test_exclusive_min_size_equals_boxes_nonempty():
    from detectron2.structures import Boxes

    boxes = torch.tensor([[0, 0, 0, 5], [1, 1, 1.5, 2], [3, 3, 3 + 1e-4, 4], [2, 2, 2, 2], [0, 0, 9, 9.0]])
    theirs = torch.where(Boxes(boxes).nonempty(threshold=0.0))[0]
    assert torch.equal(nonempty_boxes(boxes, 0.0, exclusive=True), theirs)
    assert not torch.equal(nonempty_boxes(boxes, 1e-3), theirs)  # torchvision's rule drops 1e-4 wide


def test_keypoint_decoding_equals_heatmaps_to_keypoints():
    from detectron2.structures.keypoints import heatmaps_to_keypoints

    gen = torch.Generator().manual_seed(2)
    boxes = random_boxes(gen, 40, 300, 400)
    boxes[:, 2:] = boxes[:, 2:] + 0.5  # no empty box: both clamp w, h at 1 anyway
    maps = torch.randn((40, 17, 56, 56), generator=gen) * 3
    theirs = heatmaps_to_keypoints(maps, boxes)[:, :, [0, 1, 3]]
    ours = decode_keypoints(maps, boxes, score="softmax")
    assert (ours[..., :2] - theirs[..., :2]).abs().max() <= 1e-3
    torch.testing.assert_close(ours[..., 2], theirs[..., 2], rtol=1e-5, atol=1e-7)


def test_msra_resnext_bottleneck_matches_detectron2_block():
    """Our Bottleneck with stride_in_1x1 / groups against detectron2's BottleneckBlock, same weights."""
    from detectron2.modeling.backbone.resnet import BottleneckBlock

    from maskrcnn.model.backbone import Bottleneck

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 256, 24, 20, generator=gen)
    for groups, per_group, stride_in_1x1 in ((1, 64, True), (32, 8, False)):
        inner = groups * per_group * 2
        theirs = BottleneckBlock(
            256,
            512,
            bottleneck_channels=inner,
            stride=2,
            num_groups=groups,
            norm="FrozenBN",
            stride_in_1x1=stride_in_1x1,
        ).eval()
        ours = Bottleneck(
            256,
            128,
            stride=2,
            norm="frozen_bn",
            groups=groups,
            width_per_group=per_group,
            stride_in_1x1=stride_in_1x1,
        ).eval()
        names = {"conv1": "conv1", "conv2": "conv2", "conv3": "conv3", "shortcut": "downsample"}
        with torch.no_grad():
            for d2_name, our_name in names.items():
                d2_conv = getattr(theirs, d2_name)
                d2_conv.weight.normal_(0, 0.05, generator=gen)
                d2_conv.norm.running_var.uniform_(0.5, 1.5, generator=gen)
                conv = ours.downsample[0] if our_name == "downsample" else getattr(ours, our_name)
                norm = ours.downsample[1] if our_name == "downsample" else getattr(ours, f"bn{our_name[-1]}")
                conv.weight.copy_(d2_conv.weight)
                norm.running_var.copy_(d2_conv.norm.running_var)
            torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
