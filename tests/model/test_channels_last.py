"""`MaskRCNN.set_channels_last`: NHWC weights and batches, same detections and losses."""

from __future__ import annotations

import torch

from maskrcnn.config import get_preset
from maskrcnn.data.shapes import ShapesDataset
from maskrcnn.model import build_model


def test_channels_last_keeps_outputs():
    torch.manual_seed(0)
    model = build_model(get_preset("shapes_demo")).eval()
    with torch.no_grad():  # confident enough for detections on the shapes below
        model.rpn.head.objectness.weight.mul_(10.0)
        model.roi_heads.box.predictor.cls_score.weight.mul_(40.0)
    samples = [ShapesDataset(2, seed=3)[i] for i in range(2)]
    images, targets = [s.image for s in samples], [s.targets for s in samples]
    expected = model.predict(images)
    torch.manual_seed(1)
    expected_losses = model.loss(images, targets)

    assert model.set_channels_last() is model
    batch, _ = model.preprocess(images)
    assert batch.tensor.is_contiguous(memory_format=torch.channels_last)
    assert model.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    actual = model.predict(images)
    torch.manual_seed(1)
    actual_losses = model.loss(images, targets)
    assert sum(len(d) for d in expected) > 0
    for e, a in zip(expected, actual):
        assert len(a) == len(e) and torch.equal(a.labels, e.labels)
        torch.testing.assert_close(a.boxes, e.boxes, rtol=0, atol=1e-3)
        torch.testing.assert_close(a.scores, e.scores, rtol=0, atol=1e-4)
    for name, value in expected_losses.items():
        torch.testing.assert_close(actual_losses[name], value, rtol=1e-4, atol=1e-5)

    model.set_channels_last(False)
    batch, _ = model.preprocess(images)
    assert batch.tensor.is_contiguous()
    assert model.backbone.body.conv1.weight.is_contiguous()
