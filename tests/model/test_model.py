"""MaskRCNN end to end: losses with empty ground truth, empty detections, batched vs single-image
prediction, and forward() in train / eval mode."""

from __future__ import annotations

import pytest
import torch

from maskrcnn.config import apply_overrides, get_preset
from maskrcnn.convert.torchvision import config_for, convert_state_dict
from maskrcnn.model import build_model
from maskrcnn.predict import load_image
from maskrcnn.predictor import Predictor
from maskrcnn.structures import Detections, Targets
from tests.helpers import TINY
from tests.helpers import coco2_train as coco2_train_dict

from .tv_reference import torchvision_model

# the converted torchvision model at reduced input size (kept small for CI on 2 CPU cores)
SMALL = [
    "model.input.min_size=[320]",
    "model.input.max_size=512",
    "model.rpn.post_nms_topk_test=300",
    "model.roi_heads.detections_per_image=10",  # the mask head's cost grows with the detections
]


def tiny_model(extra=()):
    torch.manual_seed(0)
    return build_model(apply_overrides(get_preset("default"), TINY + list(extra)))


def empty_targets(h: int, w: int) -> dict:
    return {
        "boxes": torch.zeros((0, 4)),
        "labels": torch.zeros((0,), dtype=torch.int64),
        "masks": torch.zeros((0, h, w), dtype=torch.uint8),
    }


def coco2_train(shared_data):
    """The coco-2img train image with its 4 instances (labels 1/2 by parity of the category id, to
    fit the 2-class tiny model)."""
    image, target = coco2_train_dict(shared_data, label_of=lambda category_id: 1 + category_id % 2)
    return image, Targets.from_any(target)


LOSS_KEYS = {"loss_rpn_cls", "loss_rpn_box", "loss_cls", "loss_box", "loss_mask"}


def test_empty_targets_give_zero_box_and_mask_losses(shared_data):
    model = tiny_model().train()
    image = load_image(sorted((shared_data / "coco-2img/images/val2017").iterdir())[0])
    h, w = image.shape[-2:]
    torch.manual_seed(0)
    losses = model.loss([image], [empty_targets(h, w)])
    assert set(losses) == LOSS_KEYS
    # no positives anywhere: no box regression and no mask loss, exactly
    assert losses["loss_box"].item() == 0.0 and losses["loss_mask"].item() == 0.0
    assert losses["loss_rpn_box"].item() == 0.0
    # the classification losses still train the background
    assert losses["loss_cls"].item() > 0 and losses["loss_rpn_cls"].item() > 0
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_batch_mixing_empty_and_annotated_images(shared_data):
    model = tiny_model().train()
    image, target = coco2_train(shared_data)
    empty_image = image[:, :200, :300].clone()
    torch.manual_seed(0)
    losses = model.loss([image, empty_image], [target, empty_targets(200, 300)])
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box"].item() > 0 and losses["loss_mask"].item() > 0


def test_invalid_targets_are_rejected_before_they_give_nan_losses():
    model = tiny_model().train()
    image = torch.rand(3, 100, 120)
    masks = torch.zeros((2, 100, 120), dtype=torch.uint8)
    masks[:, 10:50, 10:60] = 1
    labels = torch.tensor([1, 2])
    # a box without area would be encoded with log(0) (a NaN box loss) and would match every anchor
    flat = torch.tensor([[10.0, 10.0, 60.0, 50.0], [30.0, 30.0, 30.0, 70.0]])
    with pytest.raises(ValueError, match=r"targets 0: box 1 \[30.0, 30.0, 30.0, 70.0\] has no area"):
        model.loss([image], [{"boxes": flat, "labels": labels, "masks": masks}])
    boxes = torch.tensor([[10.0, 10.0, 60.0, 50.0], [20.0, 30.0, 40.0, 70.0]])
    with pytest.raises(ValueError, match="targets 1: 2 boxes, 1 labels and 2 masks"):
        model.loss([image, image], [Targets(boxes, labels, masks), Targets(boxes, labels[:1], masks)])
    with pytest.raises(ValueError, match=r"boxes must be \(G, 4\)"):
        model.loss([image], [Targets(boxes[:, :3], labels, masks)])


def test_forward_train_mode_returns_losses_eval_mode_detections(shared_data):
    model = tiny_model()
    image, target = coco2_train(shared_data)
    model.train()
    torch.manual_seed(0)
    losses = model([image], [target])
    assert isinstance(losses, dict) and set(losses) == LOSS_KEYS
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    assert losses["loss_mask"].item() > 0  # real instances give positive RoIs
    # the dict form of the targets gives the same losses under the same seed
    torch.manual_seed(0)
    as_dict = model([image], [{"boxes": target.boxes, "labels": target.labels, "masks": target.masks}])
    assert all(torch.equal(losses[k], as_dict[k]) for k in LOSS_KEYS)

    model.eval()
    (det,) = model([image])
    h, w = image.shape[-2:]
    assert isinstance(det, Detections) and len(det) > 0
    assert det.masks.shape == (len(det), h, w) and det.masks.dtype == torch.bool
    assert set(det.labels.tolist()) <= {1, 2}
    # predict() in train mode gives the same detections and restores train mode
    model.train()
    (again,) = model.predict([image])
    assert model.training
    assert torch.equal(again.boxes, det.boxes) and torch.equal(again.masks, det.masks)


def test_zero_detections_have_empty_shapes():
    image = torch.rand(3, 77, 131, generator=torch.Generator().manual_seed(1))
    # the same weights detect things at the default threshold (so the empty result is no accident)
    assert len(tiny_model().predict([image])[0]) > 0
    model = tiny_model(["model.roi_heads.score_thresh=1.0"])  # softmax scores never exceed 1.0
    assert model.roi_heads.box.score_thresh == 1.0
    dets = model.predict([image, torch.rand(3, 50, 60)])
    for det, (h, w) in zip(dets, [(77, 131), (50, 60)]):
        assert det.boxes.shape == (0, 4) and det.scores.shape == (0,) and det.labels.shape == (0,)
        assert det.masks.shape == (0, h, w) and det.masks.dtype == torch.bool
        assert det.labels.dtype == torch.int64
    assert model.predict([]) == []


@pytest.fixture(scope="module")
def converted_small():
    tv = torchvision_model("v1")
    state = tv.state_dict()
    model = build_model(apply_overrides(config_for(state, "v1"), SMALL))
    model.load_state_dict(convert_state_dict(state))
    return model.eval()


def test_predictor_batches_equal_single_image_calls(converted_small, shared_data):
    model = converted_small
    folder = shared_data / "coco-mini/val2017"
    images = [
        # 240 x 320 -> resized (320, 426); 300 x 410 -> (320, 437): both padded to (320, 448)
        load_image(folder / "000000000139.jpg")[:, :240, :320],
        load_image(folder / "000000018575.jpg")[:, 100:400, 50:460],
        # 640 x 424 -> (483, 320), padded (512, 320); 500 x 333 -> (480, 320), padded (480, 320)
        load_image(folder / "000000000802.jpg"),
        load_image(folder / "000000011813.jpg"),
    ]
    padded = [model.padded_size(*im.shape[-2:]) for im in images]
    assert padded == [(320, 448), (320, 448), (512, 320), (480, 320)]  # a real batch of 2 runs
    predictor = Predictor(model)
    singles = [predictor.predict([im])[0] for im in images]
    batched = predictor.predict(images)
    assert len(batched) == 4
    for i, (one, many, image) in enumerate(zip(singles, batched, images)):
        assert len(one) > 0, f"image {i}: the reference call detected nothing; the test would be vacuous"
        assert len(many) == len(one), f"image {i}: {len(many)} vs {len(one)} detections"
        assert torch.equal(many.labels, one.labels), i
        assert (many.boxes - one.boxes).abs().max() <= 1e-3, i
        assert (many.scores - one.scores).abs().max() <= 1e-4, i
        assert many.masks.shape == one.masks.shape == (len(one), *image.shape[-2:])
        agree = (many.masks == one.masks).float().mean().item()
        assert agree >= 0.999, f"image {i}: only {agree:.5f} of mask pixels equal"
