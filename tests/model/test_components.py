"""Model components on hand-made inputs: FPN level assignment, matcher, sampler, anchors, FPN,
ResNet, freezing and model assembly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maskrcnn.config import apply_overrides, get_preset
from maskrcnn.model import build_model
from maskrcnn.model.anchors import AnchorGenerator, cell_anchors
from maskrcnn.model.backbone import ResNet
from maskrcnn.model.box_head import ConvFCBoxHead, FCBoxHead
from maskrcnn.model.fpn import FPN, BackboneWithFPN
from maskrcnn.model.layers import FrozenBatchNorm2d
from maskrcnn.model.matcher import BACKGROUND, IGNORE, Matcher
from maskrcnn.model.roi_pooler import assign_levels
from maskrcnn.model.sampler import BalancedSampler
from maskrcnn.ops.boxes import box_area


def square(side: float, x: float = 0.0) -> list[float]:
    return [x, 0.0, x + side, side]


# ---------------------------------------------------------------- FPN level assignment (FPN eq. 1)


def test_assign_levels_canonical_sizes_and_clamp():
    # k = floor(4 + log2(sqrt(w h) / 224)), clamped to [2, 5]; the result is k - 2.
    #   side 112:  4 + log2(0.5) = 3 -> index 1
    #   side 224:  4 + 0         = 4 -> index 2
    #   side 448:  4 + 1         = 5 -> index 3
    #   side 111.9: 4 + log2(0.49955) = 2.9987 -> floor 2 -> index 0 (just below the P3 boundary)
    #   side 10:   4 + log2(0.0446) = -0.49 -> floor -1 -> clamped to 2 -> index 0
    #   side 2000: 4 + log2(8.93) = 7.16 -> floor 7 -> clamped to 5 -> index 3
    #   side 0 (empty box): log2(0) = -inf -> clamped to 2 -> index 0
    boxes = torch.tensor(
        [square(112), square(224, 10), square(448, 3), square(111.9), square(10), square(2000), square(0)]
    )
    levels = assign_levels(boxes, min_level=2, max_level=5)
    assert levels.dtype == torch.int64
    assert levels.tolist() == [1, 2, 3, 0, 0, 3, 0]
    # a non-square box uses sqrt(area): 56 x 224 -> sqrt = 112 -> level 3
    assert assign_levels(torch.tensor([[0.0, 0.0, 56.0, 224.0]]), min_level=2, max_level=5).tolist() == [1]
    # other canonical settings: canonical 112 at level 3 -> a 112 box goes to level 3 (index 1 from 2)
    levels = assign_levels(boxes[:1], min_level=2, max_level=5, canonical_box_size=112, canonical_level=3)
    assert levels.tolist() == [1]


# ---------------------------------------------------------------- matcher


# IoU of 2 ground truths (rows) with 5 anchors (columns):
#   anchor 0: 0.9 with gt0                       -> >= 0.7: matched to gt0
#   anchor 1: best is gt0 with 0.65              -> in [0.3, 0.7): IGNORE
#   anchor 2: best 0.2                           -> < 0.3: BACKGROUND
#   anchor 3: best is gt1 with 0.25              -> < 0.3: BACKGROUND
#   anchor 4: best 0.35                          -> IGNORE
# gt1's highest IoU is 0.25, reached by anchors 1 and 3 (a tie): with low-quality matches both are
# kept. Anchor 3's best ground truth is gt1, so it becomes gt1; anchor 1's best ground truth is gt0
# (0.65 > 0.25), and a kept low-quality prediction takes its own best match (torchvision's rule),
# so anchor 1 becomes gt0. gt0's best (0.9, anchor 0) is matched already.
IOU = torch.tensor([[0.9, 0.65, 0.2, 0.0, 0.35], [0.1, 0.25, 0.1, 0.25, 0.2]])


def test_matcher_without_low_quality_matches():
    matcher = Matcher(high_threshold=0.7, low_threshold=0.3, allow_low_quality_matches=False)
    assert matcher(IOU.clone()).tolist() == [0, IGNORE, BACKGROUND, BACKGROUND, IGNORE]


def test_matcher_with_low_quality_matches_and_tie():
    matcher = Matcher(high_threshold=0.7, low_threshold=0.3, allow_low_quality_matches=True)
    assert matcher(IOU.clone()).tolist() == [0, 0, BACKGROUND, 1, IGNORE]


def test_matcher_edge_cases():
    matcher = Matcher(high_threshold=0.7, low_threshold=0.3, allow_low_quality_matches=True)
    # no ground truth: everything is background
    out = matcher(torch.zeros((0, 4)))
    assert out.tolist() == [BACKGROUND] * 4 and out.dtype == torch.int64
    # thresholds are inclusive at the top of each band: 0.7 -> match, 0.3 -> ignore
    strict = Matcher(high_threshold=0.7, low_threshold=0.3, allow_low_quality_matches=False)
    assert strict(torch.tensor([[0.7, 0.3, 0.29]])).tolist() == [0, IGNORE, BACKGROUND]
    with pytest.raises(ValueError, match="low threshold"):
        Matcher(high_threshold=0.3, low_threshold=0.7, allow_low_quality_matches=False)


# ---------------------------------------------------------------- sampler


def labels_with(pos: int, neg: int, ignored: int) -> torch.Tensor:
    labels = torch.cat(
        [torch.ones(pos), torch.zeros(neg), -torch.ones(ignored)]
    )  # positives 1, negatives 0, ignored -1
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(5))]


def test_sampler_counts():
    sampler = BalancedSampler(batch_size_per_image=20, positive_fraction=0.25)  # <= 5 positives
    many = labels_with(10, 100, 30)  # positives capped at 5, negatives fill to 20 -> 15
    few = labels_with(2, 100, 30)  # 2 positives, negatives fill to 20 -> 18
    scarce = labels_with(3, 4, 30)  # not enough of either: 3 + 4
    torch.manual_seed(0)
    positives, negatives = sampler([many, few, scarce])
    for labels, pos, neg, (n_pos, n_neg) in zip(
        [many, few, scarce], positives, negatives, [(5, 15), (2, 18), (3, 4)]
    ):
        assert pos.dtype == torch.bool and pos.shape == labels.shape
        assert int(pos.sum()) == n_pos and int(neg.sum()) == n_neg
        assert (labels[pos] == 1).all() and (labels[neg] == 0).all()  # never an ignored (-1) anchor
        assert not (pos & neg).any()
    # a label >= 1 of any class counts as positive (RoI heads use class ids)
    pos, neg = BalancedSampler(batch_size_per_image=4, positive_fraction=0.5)([torch.tensor([3, 7, 0, -1])])
    assert pos[0].tolist() == [True, True, False, False] and neg[0].tolist() == [False, False, True, False]


def test_sampler_is_deterministic_under_a_seed():
    sampler = BalancedSampler(batch_size_per_image=20, positive_fraction=0.25)
    labels = [labels_with(10, 100, 30), labels_with(40, 60, 0)]
    draws = []
    for seed in (1, 1, 2):
        torch.manual_seed(seed)
        draws.append(sampler(labels))
    same = all(torch.equal(a, b) for a, b in zip(draws[0][0] + draws[0][1], draws[1][0] + draws[1][1]))
    different = any(
        not torch.equal(a, b) for a, b in zip(draws[0][0] + draws[0][1], draws[2][0] + draws[2][1])
    )
    assert same and different


# ---------------------------------------------------------------- anchors


def test_cell_anchors_hand_computed():
    # size 32, ratio r = h / w: w = 32 / sqrt(r), h = 32 * sqrt(r); corners (-w/2, -h/2, w/2, h/2) rounded
    #   r=0.5: w = 45.2548, h = 22.6274 -> half 22.627, 11.314 -> (-23, -11, 23, 11)
    #   r=1:   w = h = 32                -> (-16, -16, 16, 16)
    #   r=2:   w = 22.6274, h = 45.2548  -> (-11, -23, 11, 23)
    expected = torch.tensor(
        [[-23.0, -11.0, 23.0, 11.0], [-16.0, -16.0, 16.0, 16.0], [-11.0, -23.0, 11.0, 23.0]]
    )
    assert torch.equal(cell_anchors((32,), (0.5, 1.0, 2.0)), expected)
    # two sizes: ordered by ratio, then size; size 64 ratio 1 -> (-32, -32, 32, 32)
    two = cell_anchors((32, 64), (1.0,))
    assert torch.equal(two, torch.tensor([[-16.0, -16.0, 16.0, 16.0], [-32.0, -32.0, 32.0, 32.0]]))


def anchor_generator(image_size_strides: bool) -> AnchorGenerator:
    return AnchorGenerator(
        sizes=((32,), (64,), (128,), (256,), (512,)),
        aspect_ratios=(0.5, 1.0, 2.0),
        strides=(4, 8, 16, 32, 64),
        image_size_strides=image_size_strides,
    )


def test_anchor_counts_and_strides_for_800x1216():
    # padded image 800 x 1216 -> feature maps (ceil(800 / s), ceil(1216 / s)), as the backbone gives:
    # P2 200x304, P3 100x152, P4 50x76, P5 25x38, P6 13x19, 3 anchors per location each.
    sizes = [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]
    true_strides = anchor_generator(False)(sizes, (800, 1216), "cpu")
    image_strides = anchor_generator(True)(sizes, (800, 1216), "cpu")
    counts = [200 * 304 * 3, 100 * 152 * 3, 50 * 76 * 3, 25 * 38 * 3, 13 * 19 * 3]
    assert counts == [182400, 45600, 11400, 2850, 741]
    assert [len(a) for a in true_strides] == counts == [len(a) for a in image_strides]
    # P2..P5: 800 // h and 1216 // w are the true strides 4, 8, 16, 32 -> identical anchors
    for a, b in zip(true_strides[:4], image_strides[:4]):
        assert torch.equal(a, b)
    # P6: 800 // 13 = 61 rows apart instead of 64 (1216 // 19 = 64 on x)
    assert anchor_generator(True).level_strides(sizes, (800, 1216))[4] == (61, 64)
    assert not torch.equal(true_strides[4], image_strides[4])
    # last location (row 12, column 18), ratio 1 (anchor index 1): cell (-256, -256, 256, 256)
    # shifted by (x, y) = (18 * 64, 12 * 64) = (1152, 768), or (1152, 12 * 61 = 732)
    last = (12 * 19 + 18) * 3 + 1
    assert true_strides[4][last].tolist() == [896.0, 512.0, 1408.0, 1024.0]
    assert image_strides[4][last].tolist() == [896.0, 476.0, 1408.0, 988.0]
    # order (row, column, anchor): P2's location (0, 1) is the 4th..6th anchors, shifted by x = 4
    p2 = true_strides[0]
    assert p2[:3].tolist() == [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]]
    assert p2[3:6].tolist() == [[-19, -11, 27, 11], [-12, -16, 20, 16], [-7, -23, 15, 23]]
    # location (1, 0) starts at index 304 * 3, shifted by y = 4
    assert p2[304 * 3 + 1].tolist() == [-16, -12, 16, 20]


# ---------------------------------------------------------------- ResNet and FPN


@pytest.mark.parametrize(
    "depth, channels",
    [
        (18, [64, 128, 256, 512]),
        (34, [64, 128, 256, 512]),
        (50, [256, 512, 1024, 2048]),
        (101, [256, 512, 1024, 2048]),
    ],
)
def test_resnet_output_channels(depth, channels):
    body = ResNet(depth=depth, width=64)
    assert body.out_channels == channels
    if depth in (18, 50):  # the real outputs (cheap depths only)
        with torch.no_grad():
            out = body(torch.rand(1, 3, 64, 96))
        assert [tuple(o.shape) for o in out] == [
            (1, c, 64 // s, 96 // s) for c, s in zip(channels, (4, 8, 16, 32))
        ]


def test_resnet_width_scales_channels_and_depth_is_checked():
    assert ResNet(depth=18, width=16).out_channels == [16, 32, 64, 128]
    assert ResNet(depth=50, width=16).out_channels == [64, 128, 256, 512]
    with pytest.raises(ValueError, match="depth"):
        ResNet(depth=42)


def test_fpn_output_shapes_and_strides():
    body = ResNet(depth=18, width=16)
    backbone = BackboneWithFPN(body=body, fpn=FPN(in_channels=body.out_channels, out_channels=32))
    assert backbone.strides == [4, 8, 16, 32, 64] and backbone.out_channels == 32
    with torch.no_grad():
        out = backbone(torch.rand(2, 3, 64, 96))
    # 64 x 96 -> P2 16x24, P3 8x12, P4 4x6, P5 2x3, P6 = max-pool(k=1, s=2) of P5: 1x2
    assert [tuple(o.shape) for o in out] == [
        (2, 32, 16, 24),
        (2, 32, 8, 12),
        (2, 32, 4, 6),
        (2, 32, 2, 3),
        (2, 32, 1, 2),
    ]
    # P6 subsamples P5: P6[i, j] = P5[2i, 2j]
    assert torch.equal(out[4], out[3][:, :, ::2, ::2])


STAGE_PREFIXES = [("conv1.", "bn1."), ("layer1.",), ("layer2.",), ("layer3.",), ("layer4.",)]


@pytest.mark.parametrize("frozen_stages", [0, 1, 2, 3, 5])
def test_frozen_stages_freeze_exactly_the_first_stages(frozen_stages):
    body = ResNet(depth=18, width=16, norm="bn", frozen_stages=frozen_stages)
    frozen_prefixes = tuple(p for stage in STAGE_PREFIXES[:frozen_stages] for p in stage)
    names = [name for name, _ in body.named_parameters()]
    assert any(n.startswith("bn1.") for n in names)  # BN parameters exist with norm="bn"
    for name, p in body.named_parameters():
        assert p.requires_grad == (not name.startswith(frozen_prefixes)), name


def test_frozen_bn_has_no_parameters():
    body = ResNet(depth=18, width=16, norm="frozen_bn", frozen_stages=0)
    assert all(isinstance(m, FrozenBatchNorm2d) for m in body.modules() if "bn" in type(m).__name__.lower())
    assert not any("bn" in name for name, _ in body.named_parameters())
    assert any(name.endswith("bn1.running_var") for name, _ in body.named_buffers())


# ---------------------------------------------------------------- build_model


def norm_types(module: nn.Module) -> set[type]:
    kinds = (FrozenBatchNorm2d, nn.BatchNorm2d, nn.GroupNorm)
    return {type(m) for m in module.modules() if isinstance(m, kinds)}


@pytest.mark.parametrize("preset", ["default", "torchvision_v1", "torchvision_v2"])
def test_build_model_presets(preset):
    model = build_model(get_preset(preset))
    assert model.config == get_preset(preset)
    assert model.backbone.body.out_channels == [256, 512, 1024, 2048]
    assert model.roi_heads.box.predictor.cls_score.out_features == 91  # 90 classes + background
    assert model.roi_heads.box.predictor.bbox_pred.out_features == 91 * 4
    assert model.roi_heads.mask.head.predictor.out_channels == 90
    assert model.rpn.head.objectness.out_channels == 3
    # stem and res2 frozen (frozen_stages=2), res3 trainable
    assert not any(p.requires_grad for p in model.backbone.body.layer1.parameters())
    assert all(p.requires_grad for p in model.backbone.body.layer2.parameters())
    if preset == "torchvision_v2":
        assert norm_types(model.backbone.body) == {nn.BatchNorm2d}
        assert norm_types(model.backbone.fpn) == {nn.BatchNorm2d}
        assert isinstance(model.roi_heads.box.head, ConvFCBoxHead) and norm_types(
            model.roi_heads.box.head
        ) == {nn.BatchNorm2d}
        assert norm_types(model.roi_heads.mask.head) == {nn.BatchNorm2d}
        assert len(model.rpn.head.convs) == 2
    else:
        assert norm_types(model.backbone.body) == {FrozenBatchNorm2d}
        assert norm_types(model.backbone.fpn) == set() and norm_types(model.roi_heads.mask.head) == set()
        assert isinstance(model.roi_heads.box.head, FCBoxHead)
        assert len(model.rpn.head.convs) == 1
    aligned, sampling = (True, 0) if preset == "default" else (False, 2)
    for pooler in (model.roi_heads.box.pooler, model.roi_heads.mask.pooler):
        assert (pooler.aligned, pooler.sampling_ratio) == (aligned, sampling)
    assert model.roi_heads.box.pooler.output_size == 7 and model.roi_heads.mask.pooler.output_size == 14
    assert model.rpn.anchor_generator.image_size_strides == (preset != "default")


def test_build_model_head_sizes_follow_the_config():
    cfg = apply_overrides(
        get_preset("torchvision_v2"),
        [
            "model.backbone.depth=18",
            "model.backbone.fpn_channels=32",
            "model.num_classes=4",
            "model.roi_heads.box_conv_dim=48",
            "model.roi_heads.fc_dim=80",
            "model.roi_heads.mask_head_dim=40",
            "model.roi_heads.mask_head_convs=2",
            "model.rpn.num_convs=3",
        ],
    )
    model = build_model(cfg)
    assert [c.conv.out_channels for c in model.roi_heads.box.head.convs] == [48, 48, 48, 48]
    assert model.roi_heads.box.head.convs[0].conv.in_channels == 32
    assert (
        model.roi_heads.box.head.fc1.in_features == 48 * 7 * 7
        and model.roi_heads.box.head.fc1.out_features == 80
    )
    assert model.roi_heads.box.predictor.cls_score.in_features == 80
    assert [c.conv.out_channels for c in model.roi_heads.mask.head.convs] == [40, 40]
    assert (
        model.roi_heads.mask.head.deconv.out_channels == 40
        and model.roi_heads.mask.head.predictor.out_channels == 4
    )
    assert len(model.rpn.head.convs) == 3


def test_build_resnet18_group_norm_trains_and_predicts():
    cfg = apply_overrides(
        get_preset("default"),
        [
            "model.backbone.depth=18",
            "model.backbone.norm=gn",
            "model.backbone.fpn_norm=gn",
            "model.num_classes=3",
            "model.input.min_size=[96]",
            "model.input.max_size=128",
            "model.rpn.post_nms_topk_train=100",
            "model.rpn.post_nms_topk_test=50",
            "model.roi_heads.batch_size_per_image=32",
            "model.roi_heads.fc_dim=64",
            "model.roi_heads.mask_head_dim=64",
            "model.roi_heads.detections_per_image=10",
        ],
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.backbone.body.out_channels == [64, 128, 256, 512]
    assert norm_types(model.backbone.body) == {nn.GroupNorm}
    assert norm_types(model.backbone.fpn) == {nn.GroupNorm}
    assert (
        model.roi_heads.box.predictor.cls_score.out_features == 4
        and model.roi_heads.mask.head.predictor.out_channels == 3
    )
    image = torch.rand(3, 100, 120)
    masks = torch.zeros((1, 100, 120), dtype=torch.uint8)
    masks[0, 20:60, 30:90] = 1
    target = {"boxes": torch.tensor([[30.0, 20.0, 90.0, 60.0]]), "labels": torch.tensor([2]), "masks": masks}
    model.train()
    losses = model([image], [target])
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    gn = model.backbone.body.layer4[0].bn1
    assert isinstance(gn, nn.GroupNorm) and gn.weight.grad is not None
    assert model.backbone.body.bn1.weight.grad is None  # stem frozen (frozen_stages=2 in the preset)
    model.eval()
    (det,) = model([image])
    assert det.masks.shape[1:] == (100, 120)


def test_assign_levels_epsilon_is_added_in_float32_as_the_tensor_epsilon_was():
    # the torchvision epsilon is a Python float (no tensor made from host data): it must give the
    # float32 sums, and so the levels, that a float32 eps tensor gave, on sizes around every boundary
    torch.manual_seed(0)
    boundaries = torch.tensor([56.0, 112.0, 224.0, 448.0, 896.0])
    near = (boundaries[:, None] * (1 + torch.linspace(-1e-5, 1e-5, 2001))[None, :]).flatten()
    sides = torch.cat((near, torch.rand(20000) * 1500, boundaries))
    boxes = torch.stack((torch.zeros_like(sides), torch.zeros_like(sides), sides, sides), dim=1)
    raw = 4 + torch.log2(torch.sqrt(box_area(boxes)) / 224)
    eps = torch.tensor(1e-6, dtype=torch.float32)
    assert torch.equal(raw + 1e-6, raw + eps)
    want = torch.clamp(torch.floor(raw + eps), min=2, max=5).to(torch.int64) - 2
    got = assign_levels(boxes, min_level=2, max_level=5)
    assert torch.equal(got, want)
    assert set(got.tolist()) == {0, 1, 2, 3}
