"""Parity with detectron2 itself (its source in ../shared/detectron2): detectron2 builds each model
of its model zoo's R-CNN families from its own config, with seeded weights made decisive, and saves
it as its checkpointer does (.pth) and as the model zoo does (.pkl); ours converts the file and
runs on the same coco-mini images (already at the test size, so that neither side resizes)."""

from __future__ import annotations

import pytest
import torch

from maskrcnn.config import from_dict
from maskrcnn.convert.detectron2 import from_detectron2, is_detectron2
from maskrcnn.engine.checkpoint import model_from_checkpoint

from .d2_reference import (
    CONFIGS,
    coco_mini_val,
    d2_config,
    d2_model,
    image_at_size,
    read_pkl,
    run_d2,
    run_ours,
    save_pkl,
    save_pth,
)

# smaller proposal and detection counts than the zoo's (1000 / 1000 / 100) keep CI fast on 2 cores
# (the mask and keypoint heads' cost grows with the detections: 20 masks, 6 keypoint sets per image)
SMALL = {
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 500,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 300,
    "TEST.DETECTIONS_PER_IMAGE": 20,
}
KEYPOINT_SMALL = {**SMALL, "TEST.DETECTIONS_PER_IMAGE": 6}


class Built:
    """detectron2's model, its files, and ours converted from the .pth with its dumped config."""

    def __init__(self, tmp_path, config: str, *, min_size: int, max_size: int, seed: int = 0, **changes):
        self.config, self.min_size, self.max_size = config, min_size, max_size
        self.d2_cfg = d2_config(config, min_size=min_size, max_size=max_size, **changes)
        self.d2 = d2_model(self.d2_cfg, seed=seed)
        stem = config.split("/")[-1].replace(".yaml", "")
        self.pth = save_pth(self.d2, tmp_path / f"{stem}.pth")
        self.pkl = save_pkl(self.d2, tmp_path / f"{stem}.pkl")
        self.yaml = tmp_path / f"{stem}.config.yaml"  # what detectron2 writes as OUTPUT_DIR/config.yaml
        self.yaml.write_text(self.d2_cfg.dump())
        obj = torch.load(self.pth, map_location="cpu", weights_only=True)
        self.ckpt = from_detectron2(obj, d2_config=self.yaml, source=str(self.pth))
        self.ours = model_from_checkpoint(self.ckpt)


def assert_same_detections(ref, det, what: str) -> dict:
    """Same count and labels, boxes within 1e-2 px, scores within 1e-3, >= 99.5% mask pixels equal,
    keypoints within 1e-2 px (and their scores within 1e-3). Returns the worst differences."""
    n = len(ref)
    assert n > 0, f"{what}: detectron2 detected nothing; the comparison would be vacuous"
    assert len(det.boxes) == n, f"{what}: {len(det.boxes)} detections vs detectron2's {n}"
    assert torch.equal(det.labels, ref.pred_classes + 1), what
    worst = {
        "box": (det.boxes - ref.pred_boxes.tensor).abs().max().item(),
        "score": (det.scores - ref.scores).abs().max().item(),
    }
    assert worst["box"] <= 1e-2, (what, worst)
    assert worst["score"] <= 1e-3, (what, worst)
    if ref.has("pred_masks"):
        assert det.masks.shape == ref.pred_masks.shape, what
        worst["mask_agree"] = (det.masks == ref.pred_masks).float().mean().item()
        assert worst["mask_agree"] >= 0.995, (what, worst)
    if ref.has("pred_keypoints"):
        worst["keypoint"] = (det.keypoints[..., :2] - ref.pred_keypoints[..., :2]).abs().max().item()
        worst["keypoint_score"] = (det.keypoints[..., 2] - ref.pred_keypoints[..., 2]).abs().max().item()
        assert worst["keypoint"] <= 1e-2, (what, worst)
        assert worst["keypoint_score"] <= 1e-3, (what, worst)
    return worst


def check_parity(built: Built, images, what: str) -> None:
    for path in images:
        image = image_at_size(path, min_size=built.min_size, max_size=built.max_size)
        worst = assert_same_detections(
            run_d2(built.d2, image), run_ours(built.ours, image), f"{what} {path.name}"
        )
        print(what, path.name, tuple(image.shape[-2:]), worst)


def zoo_config_of(pkl_path, config: str | None):
    """Our config of a zoo-style .pkl converted with the zoo's own YAML (or from its tensors only)."""
    yaml = CONFIGS / config if config else None
    return from_dict(from_detectron2(read_pkl(pkl_path), d2_config=yaml)["config"]).model


# ---------------------------------------------------------------- R50-FPN Mask R-CNN


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("d2-r50")
    return Built(
        tmp, "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", min_size=384, max_size=640, **SMALL
    )


def test_r50_fpn_mask_parity(r50, shared_data):
    check_parity(r50, coco_mini_val(2), "R50-FPN")


def test_r50_pkl_equals_pth_and_tensors_give_the_zoo_config(r50):
    pkl = read_pkl(r50.pkl)
    assert is_detectron2(pkl) and is_detectron2(torch.load(r50.pth, weights_only=True))
    from_pkl = from_detectron2(pkl, d2_config=r50.yaml)
    assert from_pkl["config"] == r50.ckpt["config"]
    assert from_pkl["model"].keys() == r50.ckpt["model"].keys()
    for key, value in r50.ckpt["model"].items():
        assert torch.equal(from_pkl["model"][key], value), key
    # COCO's 80 classes in detectron2's order, with real COCO category ids
    assert from_pkl["class_names"][:3] == ["person", "bicycle", "car"] and len(from_pkl["class_names"]) == 80
    assert from_pkl["category_ids"][-1] == 90 and from_pkl["category_ids"][11] == 13  # stop sign
    # the tensors alone give the zoo YAML's model (apart from the training sizes the YAML lists)
    config = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
    assert zoo_config_of(r50.pkl, None).backbone == zoo_config_of(r50.pkl, config).backbone
    assert zoo_config_of(r50.pkl, None).roi_heads == zoo_config_of(r50.pkl, config).roi_heads


@pytest.mark.slow
def test_r50_fpn_mask_parity_full_size(tmp_path, shared_data):
    """The zoo's settings unchanged: 800 px, 1000 proposals per level and image, 100 detections."""
    built = Built(
        tmp_path, "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", min_size=800, max_size=1333
    )
    check_parity(built, coco_mini_val(1, offset=2), "R50-FPN 800px")


# ---------------------------------------------------------------- R101 / X101-32x8d Mask R-CNN


def test_r101_fpn_mask_parity_other_class_count(tmp_path, shared_data):
    """A model a user trained with the R101 config on 3 classes of their own."""
    built = Built(
        tmp_path,
        "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml",
        min_size=320,
        max_size=512,
        seed=1,
        **{**SMALL, "MODEL.ROI_HEADS.NUM_CLASSES": 3},
    )
    check_parity(built, coco_mini_val(1, offset=3), "R101-FPN 3 classes")
    assert built.ours.config.model.backbone.depth == 101 and built.ours.class_names == [
        "class_1",
        "class_2",
        "class_3",
    ]
    named = from_detectron2(read_pkl(built.pkl), class_names=["a", "b", "c"])
    assert named["class_names"] == ["a", "b", "c"] and named["category_ids"] == [1, 2, 3]


def test_x101_32x8d_fpn_mask_parity(tmp_path, shared_data):
    config = "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml"
    built = Built(tmp_path, config, min_size=320, max_size=512, seed=2, **SMALL)
    backbone = built.ours.config.model.backbone
    assert (backbone.groups, backbone.width_per_group, backbone.stride_in_1x1) == (32, 8, False)
    check_parity(built, coco_mini_val(1, offset=5), "X101-32x8d-FPN")
    # without a config: ResNeXt groups, width, stride placement and pixel std from the tensors
    alone, with_yaml = zoo_config_of(built.pkl, None), zoo_config_of(built.pkl, config)
    assert alone.backbone == with_yaml.backbone and alone.input.pixel_std == (57.375, 57.120, 58.395)


# ---------------------------------------------------------------- Keypoint R-CNN


@pytest.mark.parametrize(
    "config, seed, images",
    [
        ("COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml", 3, 2),
        ("COCO-Keypoints/keypoint_rcnn_R_101_FPN_3x.yaml", 4, 1),
        ("COCO-Keypoints/keypoint_rcnn_X_101_32x8d_FPN_3x.yaml", 6, 1),
    ],
)
def test_keypoint_rcnn_parity(config, seed, images, tmp_path, shared_data):
    """Person boxes and 17 keypoints (detectron2's softmax keypoint scores) on people of coco-mini."""
    built = Built(tmp_path, config, min_size=320, max_size=512, seed=seed, **KEYPOINT_SMALL)
    assert built.ckpt["class_names"] == ["person"] and built.ckpt["category_ids"] == [1]
    check_parity(built, coco_mini_val(images, offset=7), config.split("/")[-1])
