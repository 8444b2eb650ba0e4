"""Keypoints in the data pipeline: COCO person-keypoint reading (real coco-mini), their metadata
(flip map, OKS sigmas), every transform (resize, flip, LSJ crop) and COCO JSON export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.cocoeval import Params

from maskrcnn.config import Config, DataConfig, KeypointConfig, ModelConfig, RoIHeadsConfig, replace
from maskrcnn.data import CocoDataset, HorizontalFlip, LargeScaleJitter, ResizeShortestEdge, write_coco_json
from maskrcnn.data.dataset import dataset_keypoints
from maskrcnn.data.keypoint_meta import (
    COCO_PERSON_KEYPOINT_NAMES,
    COCO_PERSON_OKS_SIGMAS,
    flip_map_from_names,
    keypoint_flip_map,
    oks_sigmas,
    with_dataset_keypoints,
)
from maskrcnn.engine.train import build_transforms
from maskrcnn.errors import UserError
from maskrcnn.structures import Sample, Targets

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def kp_data(keypoints_json: Path, shared_data: Path) -> CocoDataset:
    return CocoDataset(keypoints_json, shared_data / "coco-mini" / "val2017")


def _hand_sample() -> Sample:
    """A 10-wide, 8-high image, one instance (mask rows 1..5, columns 2..7) with three keypoints:
    nose (5, 2) visible, left_eye (3, 1) visible, right_eye (7, 1) labelled but hidden."""
    masks = torch.zeros((1, 8, 10), dtype=torch.uint8)
    masks[0, 1:6, 2:8] = 1
    keypoints = torch.tensor([[[5.0, 2.0, 2.0], [3.0, 1.0, 2.0], [7.0, 1.0, 1.0]]])
    targets = Targets(torch.tensor([[2.0, 1.0, 8.0, 6.0]]), torch.tensor([1]), masks, keypoints)
    image = torch.rand((3, 8, 10), generator=torch.Generator().manual_seed(0))
    return Sample(image, targets, 1, "hand.png", crowd_boxes=torch.zeros((0, 4)))


# ---------------------------------------------------------------- reading COCO keypoints


def test_coco_keypoints_read_from_real_file(kp_data: CocoDataset, keypoints_json: Path) -> None:
    assert kp_data.num_keypoints == 17
    assert tuple(kp_data.keypoint_names) == COCO_PERSON_KEYPOINT_NAMES
    assert kp_data.skeleton[:3] == [(16, 14), (14, 12), (17, 15)] and len(kp_data.skeleton) == 19
    assert dataset_keypoints(kp_data) == (
        17,
        KeypointConfig(COCO_PERSON_KEYPOINT_NAMES, tuple(kp_data.skeleton)),
    )
    instances = labelled = 0
    for i in range(len(kp_data)):
        t, _ = kp_data.load_targets(i)
        assert t.keypoints.shape == (len(t), 17, 3)
        instances += len(t)
        labelled += int((t.keypoints[..., 2] > 0).any(dim=1).sum())
    # person_keypoints_val2017.json (coco-mini): 118 person annotations, 1 crowd; 68 with num_keypoints > 0
    assert (instances, labelled) == (117, 68)
    # annotation 200887 of image 397133: nose (433, 94, 2), right_eye unlabelled, left_shoulder (420, 128, 2)
    t, _ = kp_data.load_targets(kp_data.image_ids.index(397133))
    row = [k for k in range(len(t)) if t.keypoints[k, 0].tolist() == [433.0, 94.0, 2.0]]
    assert len(row) == 1
    kps = t.keypoints[row[0]]
    assert kps[2].tolist() == [0.0, 0.0, 0.0] and kps[5].tolist() == [420.0, 128.0, 2.0]
    assert kps[16].tolist() == [465.0, 334.0, 2.0]


def test_instances_file_has_no_keypoints(shared_data: Path) -> None:
    ann = shared_data / "coco-mini" / "annotations" / "instances_val2017.json"
    data = CocoDataset(ann, shared_data / "coco-mini" / "val2017")
    assert data.num_keypoints == 0 and data.keypoint_names == [] and data.load_targets(0)[0].keypoints is None
    assert dataset_keypoints(data) == (0, KeypointConfig())


def _edited(keypoints_json: Path, tmp_path: Path, edit) -> Path:
    data = json.loads(keypoints_json.read_text())
    edit(data)
    out = tmp_path / "edited.json"
    out.write_text(json.dumps(data))
    return out


def test_annotation_without_keypoints_gets_unlabelled_rows(
    keypoints_json: Path, shared_data: Path, tmp_path
) -> None:
    def drop(data: dict) -> None:
        for a in data["annotations"]:
            if a["id"] == 200887:
                del a["keypoints"], a["num_keypoints"]

    data = CocoDataset(_edited(keypoints_json, tmp_path, drop), shared_data / "coco-mini" / "val2017")
    t, _ = data.load_targets(data.image_ids.index(397133))
    assert t.keypoints.shape == (2, 17, 3)
    assert not any(r[0].tolist() == [433.0, 94.0, 2.0] for r in t.keypoints)
    assert int((t.keypoints.flatten(1) == 0).all(dim=1).sum()) == 1


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([433, 94, 2] * 16, r"keypoints has 48 values, expected 51"),
        (["433", 94, 2] + [0] * 48, r"keypoints must be a flat list of numbers"),
        ([433, 94, 3] + [0] * 48, r"keypoint visibility must be 0, 1 or 2, got 3"),
        ("nose", r"keypoints must be a flat list of numbers"),
    ],
)
def test_bad_keypoints_name_file_and_annotation(
    keypoints_json, shared_data, tmp_path, value, message
) -> None:
    def spoil(data: dict) -> None:
        next(a for a in data["annotations"] if a["id"] == 200887)["keypoints"] = value

    path = _edited(keypoints_json, tmp_path, spoil)
    data = CocoDataset(path, shared_data / "coco-mini" / "val2017")  # recorded: reading an item names it
    with pytest.raises(UserError, match=rf"edited\.json \(image 397133, annotation 200887\): {message}"):
        data.load_targets(0)


def test_write_coco_json_round_trips_keypoints(kp_data: CocoDataset, tmp_path: Path) -> None:
    path = write_coco_json(kp_data, tmp_path / "gt.json")
    written = json.loads(path.read_text())
    assert written["categories"][0]["keypoints"] == list(COCO_PERSON_KEYPOINT_NAMES)
    ann = next(a for a in written["annotations"] if a["keypoints"][:3] == [433.0, 94.0, 2])
    assert ann["num_keypoints"] == 13 and ann["keypoints"][6:9] == [0.0, 0.0, 0]
    again = CocoDataset(path, kp_data.image_dir)
    assert again.keypoint_names == kp_data.keypoint_names and again.skeleton == kp_data.skeleton
    for i in range(len(kp_data)):
        assert torch.equal(again.load_targets(i)[0].keypoints, kp_data.load_targets(i)[0].keypoints)


# ---------------------------------------------------------------- metadata


def test_flip_map_from_names() -> None:
    pairs = flip_map_from_names(COCO_PERSON_KEYPOINT_NAMES)
    order = list(range(17))
    for a, b in pairs:
        order[a], order[b] = b, a
    assert order == [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]  # torchvision's flip_inds
    assert flip_map_from_names(["top", "Left-Hand", "right-hand", "bottom_left", "bottom_right"]) == (
        (1, 2),
        (3, 4),
    )
    assert flip_map_from_names(["top", "leftover"]) == ()  # "leftover" is not the word "left"
    with pytest.raises(UserError, match=r"'left_eye' has no mirror keypoint 'right_eye'"):
        flip_map_from_names(["nose", "left_eye"])


def test_flip_map_needs_names_or_config() -> None:
    assert keypoint_flip_map(KeypointConfig(), num_keypoints=17) == flip_map_from_names(
        COCO_PERSON_KEYPOINT_NAMES
    )
    assert keypoint_flip_map(KeypointConfig(flip_map=((0, 4),)), num_keypoints=5) == ((0, 4),)
    with pytest.raises(UserError, match=r"which of the 5 keypoints swap"):
        keypoint_flip_map(KeypointConfig(), num_keypoints=5)
    with pytest.raises(UserError, match=r"flip_map pair \[0, 5\]"):
        keypoint_flip_map(KeypointConfig(flip_map=((0, 5),)), num_keypoints=5)
    # at transform construction: flips of an unnamed custom keypoint set
    cfg = Config(data=DataConfig(hflip_prob=0.5))
    with pytest.raises(UserError, match=r"model.keypoints.flip_map"):
        build_transforms(cfg, num_keypoints=5)
    flip = build_transforms(cfg, num_keypoints=17).transforms[0]
    assert flip.keypoint_flip_map == flip_map_from_names(COCO_PERSON_KEYPOINT_NAMES)
    assert build_transforms(cfg).transforms[0].keypoint_flip_map is None
    assert build_transforms(replace(cfg, data=DataConfig(hflip_prob=0.0)), num_keypoints=5) is None


def test_oks_sigmas() -> None:
    coco = oks_sigmas(KeypointConfig(), num_keypoints=17)
    assert coco == COCO_PERSON_OKS_SIGMAS and np.array_equal(
        np.array(coco), Params("keypoints").kpt_oks_sigmas
    )
    assert oks_sigmas(KeypointConfig(names=COCO_PERSON_KEYPOINT_NAMES), num_keypoints=17) == coco
    assert oks_sigmas(KeypointConfig(oks_sigmas=(0.1, 0.2, 0.3)), num_keypoints=3) == (0.1, 0.2, 0.3)
    with pytest.raises(UserError, match=r"OKS sigmas for this custom set of 4 keypoints \(a, b, c, d\)"):
        oks_sigmas(KeypointConfig(names=("a", "b", "c", "d")), num_keypoints=4)
    with pytest.raises(UserError, match=r"custom set of 17 keypoints"):  # 17, but not COCO's
        oks_sigmas(KeypointConfig(names=tuple(f"k{i}" for i in range(17))), num_keypoints=17)
    with pytest.raises(UserError, match=r"oks_sigmas has 2 values for 3 keypoints"):
        oks_sigmas(KeypointConfig(oks_sigmas=(0.1, 0.2)), num_keypoints=3)


def test_training_config_takes_the_dataset_keypoints(kp_data: CocoDataset, shared_data: Path) -> None:
    cfg = Config(model=ModelConfig(roi_heads=RoIHeadsConfig(keypoint_on=True, num_keypoints=4)))
    out = with_dataset_keypoints(cfg, kp_data)
    assert out.model.roi_heads.num_keypoints == 17
    assert out.model.keypoints.names == COCO_PERSON_KEYPOINT_NAMES
    assert out.model.keypoints.skeleton == tuple(kp_data.skeleton)
    instances = CocoDataset(
        shared_data / "coco-mini" / "annotations" / "instances_val2017.json",
        shared_data / "coco-mini" / "val2017",
    )
    with pytest.raises(UserError, match=r"keypoint_on is true but the training dataset has no keypoints"):
        with_dataset_keypoints(cfg, instances)


# ---------------------------------------------------------------- transforms


def test_flip_hand_made_swaps_left_right_once_and_twice_is_identity() -> None:
    sample = _hand_sample()
    flip = HorizontalFlip(1.0, keypoint_flip_map=flip_map_from_names(["nose", "left_eye", "right_eye"]))
    once = flip(sample)
    # x -> 10 - x; the left_eye slot now holds the mirrored right eye (still hidden), and vice versa
    assert once.targets.keypoints.tolist() == [[[5.0, 2.0, 2.0], [3.0, 1.0, 1.0], [7.0, 1.0, 2.0]]]
    assert once.targets.boxes.tolist() == [[2.0, 1.0, 8.0, 6.0]]
    twice = flip(once)
    assert torch.equal(twice.targets.keypoints, sample.targets.keypoints)
    assert torch.equal(twice.targets.masks, sample.targets.masks) and torch.equal(twice.image, sample.image)
    with pytest.raises(UserError, match=r"hand\.png: HorizontalFlip got keypoints but no keypoint_flip_map"):
        HorizontalFlip(1.0)(sample)


def test_flip_real_person(kp_data: CocoDataset) -> None:
    sample = kp_data[kp_data.image_ids.index(397133)]
    w = sample.image.shape[-1]
    assert w == 640
    flip = HorizontalFlip(1.0, keypoint_flip_map=flip_map_from_names(kp_data.keypoint_names))
    once = flip(sample)
    k = next(i for i in range(len(sample.targets)) if sample.targets.keypoints[i, 0, 0] == 433)
    kps = once.targets.keypoints[k]
    assert kps[0].tolist() == [640 - 433, 94, 2]  # nose: mirrored in place
    assert kps[5].tolist() == [640 - 474, 133, 2]  # left_shoulder <- the right one (474, 133)
    assert kps[6].tolist() == [640 - 420, 128, 2]  # right_shoulder <- the left one (420, 128)
    assert kps[2].tolist() == [640 - 434, 90, 2]  # right_eye <- the left eye (434, 90)
    assert kps[1].tolist() == [640, 0, 0]  # left_eye <- the unlabelled right eye (0, 0, 0)
    assert torch.equal(once.targets.keypoints[:, :, 2].sum(1), sample.targets.keypoints[:, :, 2].sum(1))
    twice = flip(once)
    assert torch.equal(twice.targets.keypoints, sample.targets.keypoints)
    assert torch.equal(twice.targets.boxes, sample.targets.boxes)


def test_resize_scales_keypoints() -> None:
    out = ResizeShortestEdge(16, 100)(_hand_sample())  # 8x10 -> 16x20
    assert out.image.shape[-2:] == (16, 20)
    assert out.targets.keypoints.tolist() == [[[10.0, 4.0, 2.0], [6.0, 2.0, 2.0], [14.0, 2.0, 1.0]]]
    assert out.targets.boxes.tolist() == [[4.0, 2.0, 16.0, 12.0]]


def _two_instance_sample() -> Sample:
    """100x100: instance 0 covers everything (keypoints (10, 10) visible, (90, 90) visible, (50, 50)
    hidden); instance 1 is the 10x10 square at the top left (keypoint (5, 5) visible)."""
    masks = torch.zeros((2, 100, 100), dtype=torch.uint8)
    masks[0] = 1
    masks[1, :10, :10] = 1
    keypoints = torch.tensor(
        [[[10.0, 10.0, 2.0], [90.0, 90.0, 2.0], [50.0, 50.0, 1.0]], [[5.0, 5.0, 2.0], [0, 0, 0], [0, 0, 0]]]
    )
    boxes = torch.tensor([[0.0, 0.0, 100.0, 100.0], [0.0, 0.0, 10.0, 10.0]])
    targets = Targets(boxes, torch.tensor([1, 2]), masks, keypoints)
    return Sample(torch.zeros((3, 100, 100)), targets, 1, "two.png", crowd_boxes=torch.zeros((0, 4)))


def test_lsj_crop_makes_outside_keypoints_unlabelled() -> None:
    # scale 2: the image becomes 200x200 and a 100x100 window at (x0, y0) is kept; this seed draws
    # offsets near the middle, so the 10x10 instance is cropped away and (10, 10), (90, 90) leave
    g = torch.Generator().manual_seed(2)
    _, uy, ux = (float(torch.rand((), generator=g)) for _ in range(3))
    y0, x0 = int(uy * 101), int(ux * 101)
    assert 25 < x0 < 75 and 25 < y0 < 75
    out = LargeScaleJitter(100, (2.0, 2.0))(_two_instance_sample(), torch.Generator().manual_seed(2))
    assert len(out.targets) == 1 and out.targets.labels.tolist() == [1]  # instance 1 left with its keypoints
    expected = [[20.0 - x0, 20.0 - y0, 0.0], [180.0 - x0, 180.0 - y0, 0.0], [100.0 - x0, 100.0 - y0, 1.0]]
    assert out.targets.keypoints.tolist() == [expected]


def test_lsj_pad_keeps_keypoints_visible() -> None:
    out = LargeScaleJitter(100, (0.5, 0.5))(_two_instance_sample(), torch.Generator().manual_seed(0))
    assert out.extra["valid_size"] == (50, 50) and len(out.targets) == 2
    assert out.targets.keypoints.tolist() == [
        [[5.0, 5.0, 2.0], [45.0, 45.0, 2.0], [25.0, 25.0, 1.0]],
        [[2.5, 2.5, 2.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
    ]
