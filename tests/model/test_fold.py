"""BatchNorm folding (maskrcnn.model.fold): folded convs equal conv + norm, a whole folded model gives
the unfolded model's detections on a real image, GroupNorm and the original model are left alone,
a model in training mode is refused, and the Predictor folds a cached copy that follows its model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maskrcnn.config import apply_overrides, get_preset
from maskrcnn.inputs import load_image
from maskrcnn.model import build_model
from maskrcnn.model.fold import fold_batchnorm, folded_pairs
from maskrcnn.model.layers import ConvNorm, FrozenBatchNorm2d
from maskrcnn.predictor import Predictor
from tests.helpers import TINY
from tests.model.tv_reference import converted, torchvision_model

IMAGE = "coco-mini/val2017/000000000139.jpg"  # 426 x 640, people and furniture


def randomize_norm(norm: nn.Module, gen: torch.Generator) -> nn.Module:
    with torch.no_grad():
        c = norm.running_mean.numel()
        norm.running_mean.copy_(torch.randn(c, generator=gen))
        norm.running_var.copy_(torch.rand(c, generator=gen) * 2 + 0.1)
        norm.weight.copy_(torch.randn(c, generator=gen))
        norm.bias.copy_(torch.randn(c, generator=gen))
    return norm


def norms(model: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("norm_kind", [FrozenBatchNorm2d, nn.BatchNorm2d])
def test_folded_conv_equals_conv_then_norm(norm_kind):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    # a strided grouped conv with its own bias, then the norm, inside a Sequential (then a ReLU)
    block = nn.Sequential(
        nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=2, bias=True),
        randomize_norm(norm_kind(12), gen),
        nn.ReLU(),
    ).eval()
    conv_norm = ConvNorm(8, 12, 3, norm="bn", relu=True).eval()
    randomize_norm(conv_norm.norm, gen)
    x = torch.randn(2, 8, 17, 23, generator=gen)
    for module, conv_name in ((block, "0"), (conv_norm, "conv")):
        expected = module(x)
        folded = fold_batchnorm(module)
        assert isinstance(folded._modules[conv_name], nn.Conv2d) and folded is not module
        assert not norms(folded, (nn.BatchNorm2d, FrozenBatchNorm2d))
        assert folded._modules[conv_name].stride == module._modules[conv_name].stride
        assert (folded(x) - expected).abs().max() <= 1e-5 * max(1.0, expected.abs().max().item())
        assert torch.equal(module(x), expected)  # the original still has its norm and weights


def test_groupnorm_and_lone_convs_are_left_alone():
    module = ConvNorm(32, 32, 3, norm="gn").eval()
    assert folded_pairs(module) == [] and fold_batchnorm(module) is module
    model = build_model(apply_overrides(get_preset("default"), [*TINY, "model.backbone.fpn_norm=gn"])).eval()
    folded = fold_batchnorm(model)
    group_norms = norms(model, nn.GroupNorm)
    assert len(group_norms) == 8  # FPN lateral + output convs of 4 levels
    assert [id(m) for m in norms(folded, nn.GroupNorm)] == [id(m) for m in group_norms]
    assert len(norms(model, FrozenBatchNorm2d)) == 20 and not norms(folded, FrozenBatchNorm2d)
    assert folded.rpn is model.rpn and folded.roi_heads is model.roi_heads  # no norms there: shared


def test_training_mode_is_refused_and_nothing_changes():
    model = build_model(apply_overrides(get_preset("default"), TINY))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    with pytest.raises(ValueError, match="inference only.*training mode"):
        fold_batchnorm(model)
    model.eval()
    model.backbone.body.layer1.train()
    with pytest.raises(ValueError, match="backbone.body.layer1 is in training mode"):
        fold_batchnorm(model)
    state = model.state_dict()
    assert state.keys() == before.keys() and all(torch.equal(state[k], before[k]) for k in state)
    assert len(norms(model, FrozenBatchNorm2d)) == 20


def test_folded_v2_model_gives_the_same_detections_on_a_real_image(shared_data):
    """torchvision v2 layout: BatchNorm after every backbone, FPN and head conv, all folded."""
    small = ["model.input.min_size=[320]", "model.input.max_size=512", "model.rpn.post_nms_topk_test=200"]
    model = converted(torchvision_model("v2"), "v2", small)  # 200 RoIs: the 4-conv box head is costly
    image = load_image(shared_data / IMAGE)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    (expected,) = model.predict([image])
    folded = fold_batchnorm(model)
    assert len(norms(model, nn.BatchNorm2d)) > 60 and not norms(folded, nn.BatchNorm2d)
    (actual,) = folded.predict([image])
    assert len(expected) > 20, "the reference detected too little; the comparison would be vacuous"
    assert len(actual) == len(expected) and torch.equal(actual.labels, expected.labels)
    assert (actual.boxes - expected.boxes).abs().max() <= 1e-3
    assert (actual.scores - expected.scores).abs().max() <= 1e-4
    assert (actual.masks == expected.masks).float().mean() >= 0.999
    # checkpoints keep the unfolded weights: the model's state is untouched
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)


def test_predictor_runs_a_folded_copy_that_follows_its_model(shared_data):
    torch.manual_seed(0)
    model = build_model(apply_overrides(get_preset("default"), TINY))
    image = load_image(shared_data / IMAGE)
    predictor = Predictor(model)
    (det,) = predictor.predict([image])
    running = predictor.inference_model()
    assert running is not model and not norms(running, FrozenBatchNorm2d)
    assert predictor.model is model and len(norms(model, FrozenBatchNorm2d)) == 20
    assert predictor.inference_model() is running  # cached while the weights stay the same
    (reference,) = model.predict([image])
    assert len(det) == len(reference) > 0 and torch.equal(det.labels, reference.labels)
    assert (det.boxes - reference.boxes).abs().max() <= 1e-3

    with torch.no_grad():  # new weights, loaded in place: the folded copy is rebuilt from them
        torch.manual_seed(1)
        model.load_state_dict(build_model(apply_overrides(get_preset("default"), TINY)).state_dict())
    (changed,) = predictor.predict([image])
    (reference,) = model.predict([image])
    assert predictor.inference_model() is not running
    assert len(changed) == len(reference) > 0 and (changed.boxes - reference.boxes).abs().max() <= 1e-3

    model.train()  # a model being trained is run as it is, never folded
    assert predictor.inference_model() is model
    assert Predictor(model.eval(), fold_bn=False).inference_model() is model
