"""Keypoints in the outputs: COCO result records, overlays with skeletons (pixel checks), `maskrcnn
predict` with a converted torchvision Keypoint R-CNN (records COCO.loadRes and COCOeval accept), the
inspect page's heatmap picture, and the corner keypoints of the synthetic shapes."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import maskrcnn
from maskrcnn.cli import main
from maskrcnn.config import resolve
from maskrcnn.data.keypoint_meta import COCO_PERSON_SKELETON
from maskrcnn.data.shapes import KEYPOINT_NAMES, ShapesDataset, corner_angle, corner_keypoints
from maskrcnn.inspect import inspect_model, write_inspection
from maskrcnn.inspect.keypoint_pictures import heatmap_probabilities
from maskrcnn.model.keypoint_branch import decode_keypoints
from maskrcnn.predict import model_skeleton
from maskrcnn.predict_records import detection_records
from maskrcnn.safe_load import load_weights_file
from maskrcnn.structures import Detections, Targets
from maskrcnn.visualize import (
    KEYPOINT_RADIUS,
    draw_detections,
    draw_targets,
    instance_colors,
    text_color_for,
    to_rgb_array,
)
from tests.model.tv_reference import torchvision_model

PERSONS = ["000000183709.jpg", "000000311002.jpg"]  # coco-mini val: 4 and 3 people with keypoints
KEYPOINT_GT = "coco-mini/annotations/person_keypoints_val2017.json"


def _detection(keypoints: list[list[float]], box=(100.0, 100.0, 300.0, 300.0)) -> Detections:
    return Detections(
        torch.tensor([box]),
        torch.tensor([0.9]),
        torch.tensor([1]),
        keypoints=torch.tensor([keypoints], dtype=torch.float32),
    )


# ---- records ----------------------------------------------------------------------------------


def test_records_carry_keypoints_as_coco_results() -> None:
    det = Detections(
        torch.tensor([[10.0, 20.0, 50.0, 80.0], [0.0, 0.0, 5.0, 5.0]]),
        torch.tensor([0.9, 0.4]),
        torch.tensor([1, 1]),
        keypoints=torch.tensor(
            [[[12.25, 30.5, 3.14159], [40.0, 70.125, -1.5]], [[1.0, 2.0, 0.5], [3.0, 4.0, 0.25]]]
        ),
    )
    records = detection_records(det, category_ids=[7])
    assert records[0]["keypoints"] == [12.25, 30.5, 3.142, 40.0, 70.125, -1.5]
    assert records[1]["keypoints"] == [1.0, 2.0, 0.5, 3.0, 4.0, 0.25]
    assert records[0]["category_id"] == 7 and records[0]["bbox"] == [10.0, 20.0, 40.0, 60.0]
    plain = Detections(det.boxes, det.scores, det.labels)  # no keypoint branch: no field
    assert all("keypoints" not in r for r in detection_records(plain))


# ---- overlays -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def photo(shared_data: Path) -> np.ndarray:
    return to_rgb_array(shared_data / "coco-mini/val2017" / PERSONS[0])


def test_skeleton_lines_and_points_are_drawn_in_the_instance_colour(photo: np.ndarray) -> None:
    # keypoints 1 and 2 are shown, 3 scores below the threshold; skeleton 1-2 and 2-3
    det = _detection([[150.0, 150.0, 2.0], [250.0, 150.0, 1.0], [250.0, 250.0, -3.0]])
    skeleton = [(1, 2), (2, 3)]
    plain = np.asarray(draw_detections(photo, Detections(det.boxes, det.scores, det.labels)))
    drawn = np.asarray(draw_detections(photo, det, skeleton=skeleton, keypoint_thresh=0.0))
    color = instance_colors(1)[0]
    # the line 1-2 (y = 150, x 150..250), away from the discs: the instance colour, 2 px wide
    assert (drawn[150:152, 160:240] == color).all()
    assert np.array_equal(drawn[146, 160:240], plain[146, 160:240])
    # no line to keypoint 3, which is not shown, and no disc there
    assert np.array_equal(drawn[160:240, 248:253], plain[160:240, 248:253])
    assert np.array_equal(drawn[247:254, 247:254], plain[247:254, 247:254])
    # discs: the instance colour inside, outlined in black or white (the label text colour)
    assert (drawn[149:152, 249:252] == color).all() and (drawn[149:152, 149:152] == color).all()
    assert tuple(drawn[150 - KEYPOINT_RADIUS, 150]) == text_color_for(color)
    # everything else of the picture is the plain drawing of the detection
    changed = np.abs(drawn.astype(int) - plain.astype(int)).max(axis=2) > 0
    ys, xs = np.nonzero(changed)
    assert ys.min() >= 150 - KEYPOINT_RADIUS - 1 and ys.max() <= 150 + KEYPOINT_RADIUS + 1
    assert xs.min() >= 150 - KEYPOINT_RADIUS - 1 and xs.max() <= 250 + KEYPOINT_RADIUS + 1
    # without a threshold every keypoint is drawn, and the line 2-3 with it
    every = np.asarray(draw_detections(photo, det, skeleton=skeleton))
    assert (every[170:230, 250:252] == color).all()


def test_ground_truth_draws_only_labelled_keypoints(photo: np.ndarray) -> None:
    keypoints = torch.tensor([[[150.0, 150.0, 2.0], [250.0, 150.0, 1.0], [250.0, 250.0, 0.0]]])
    targets = Targets(torch.tensor([[100.0, 100.0, 300.0, 300.0]]), torch.tensor([1]), keypoints=keypoints)
    plain = np.asarray(draw_targets(photo, Targets(targets.boxes, targets.labels)))
    drawn = np.asarray(draw_targets(photo, targets, skeleton=[(1, 2), (2, 3)]))
    color = instance_colors(1)[0]
    assert (drawn[150:152, 160:240] == color).all()  # v = 2 and v = 1 are labelled: joined
    assert np.array_equal(drawn[160:254, 245:255], plain[160:254, 245:255])  # v = 0: nothing
    with pytest.raises(ValueError, match="skeleton pair"):
        draw_targets(photo, targets, skeleton=[(1, 4)])


# ---- predict with a converted torchvision Keypoint R-CNN ------------------------------------------


@pytest.fixture(scope="module")
def keypoint_weights(tmp_path_factory) -> Path:
    """torchvision's keypointrcnn_resnet50_fpn (seeded, decisive) converted with `maskrcnn convert`,
    its checkpoint's inputs then made smaller (shorter side 320) and its detections fewer (25 per
    image: the keypoint head runs on each) to keep the test fast on the CPU."""
    folder = tmp_path_factory.mktemp("keypoint_model")
    torch.save(torchvision_model("keypoint").state_dict(), folder / "tv.pth")
    assert (
        main(["convert", "--from", "torchvision-keypoint", str(folder / "tv.pth"), str(folder / "kp.pt")])
        == 0
    )
    ckpt = load_weights_file(folder / "kp.pt")
    ckpt["config"]["model"]["input"].update(min_size=[320], max_size=544)
    ckpt["config"]["model"]["roi_heads"]["detections_per_image"] = 25
    torch.save(ckpt, folder / "kp.pt")
    return folder / "kp.pt"


def test_predict_writes_keypoint_records_coco_accepts_and_skeleton_overlays(
    keypoint_weights: Path, shared_data: Path, tmp_path: Path
) -> None:
    # the second image as a PNG copy (the same pixels), so that its overlay is a lossless PNG
    images = [
        shared_data / "coco-mini/val2017" / PERSONS[0],
        tmp_path / Path(PERSONS[1]).with_suffix(".png").name,
    ]
    with Image.open(shared_data / "coco-mini/val2017" / PERSONS[1]) as im:
        im.save(images[1])
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                "--weights",
                str(keypoint_weights),
                "--out",
                str(out),
                "--no-progress",
                *map(str, images),
            ]
        )
        == 0
    )
    records = json.loads((out / "predictions.json").read_text())
    assert records and all(len(r["keypoints"]) == 17 * 3 for r in records)
    assert {r["category_id"] for r in records} == {1}  # person

    # the records hold the predictor's keypoints (x, y, score), rounded to 3 decimals
    model = maskrcnn.load(keypoint_weights)
    dets = model.predict(images)
    for image, det in zip(images, dets):
        mine = [r for r in records if r["file_name"] == image.name]
        assert len(mine) == len(det)
        got = torch.tensor([r["keypoints"] for r in mine]).reshape(len(det), 17, 3)
        assert torch.allclose(got, det.keypoints, atol=6e-4, rtol=0)  # 3 decimals, float32 pixels

    # pycocotools reads them against COCO's person keypoint ground truth and evaluates keypoint AP
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(shared_data / KEYPOINT_GT))
        results = gt.loadRes(
            [{k: r[k] for k in ("image_id", "category_id", "keypoints", "score")} for r in records]
        )
        evaluation = COCOeval(gt, results, "keypoints")
        evaluation.params.imgIds = sorted({r["image_id"] for r in records})
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert len(results.anns) == len(records) and all(0 <= s <= 1 or s == -1 for s in evaluation.stats)
    assert evaluation.stats[0] >= 0  # the images have people with keypoints: AP is defined

    # the overlay: the detections drawn with COCO's person skeleton, as draw_detections draws them
    assert model_skeleton(model.config) == COCO_PERSON_SKELETON
    overlay = np.asarray(Image.open(out / "overlays" / images[1].name))
    with_skeleton = draw_detections(
        images[1], dets[1], class_names=model.class_names, skeleton=COCO_PERSON_SKELETON
    )
    assert np.array_equal(overlay, np.asarray(with_skeleton))
    without = np.asarray(draw_detections(images[1], dets[1], class_names=model.class_names))
    assert (np.abs(overlay.astype(int) - without).max(axis=2) > 0).sum() > 500  # the skeletons' pixels
    # the top detection (drawn over the others): its limbs' midpoints have its colour
    xy = dets[1].keypoints[0, :, :2]
    middles = [((xy[a - 1] + xy[b - 1]) / 2).round().long().tolist() for a, b in COCO_PERSON_SKELETON]
    coloured = [tuple(overlay[y, x]) == tuple(instance_colors(len(dets[1]))[0]) for x, y in middles]
    assert sum(coloured) >= len(middles) // 2


# ---- inspect ------------------------------------------------------------------------------------


def test_inspect_draws_the_heatmaps_of_the_top_detections(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = resolve("shapes_keypoints", ["model.keypoints.names=[a_corner, b_corner, c_corner, d_corner]"])
    model = maskrcnn.build_model(cfg).eval()
    sample = ShapesDataset(1, seed=4, keypoints=True)[0]
    ins = inspect_model(model, sample.image)
    det = ins.detections
    assert len(det) > 0 and ins.keypoint_heatmaps.shape == (len(det), 4, 56, 56)
    assert ins.keypoint_names == ["a_corner", "b_corner", "c_corner", "d_corner"]
    # the heatmaps are the branch's own: decoding them gives the detections' keypoints (the 128 px
    # image is the model's input frame: no rescaling)
    assert ins.input_size == ins.original_size == (128, 128)
    assert torch.equal(decode_keypoints(ins.keypoint_heatmaps, ins.det_input_boxes), det.keypoints)
    probs = heatmap_probabilities(ins.keypoint_heatmaps)
    assert torch.allclose(probs.sum(dim=(-2, -1)), torch.ones(len(det), 4), atol=1e-5)
    write_inspection(ins, tmp_path, title="shapes")
    summary = json.loads((tmp_path / "summary.json").read_text())
    shown = summary["keypoint_heatmaps"]["shown"]
    assert len(shown) == min(4, len(det)) and [s["rank"] for s in shown] == list(range(1, len(shown) + 1))
    assert shown[0]["keypoints"] == [[round(v, 2) for v in p] for p in det.keypoints[0].tolist()]
    with Image.open(tmp_path / "keypoint_heatmaps.png") as picture:
        assert picture.width >= 4 * 112 and picture.height >= len(shown) * 112
    assert "keypoint_heatmaps.png" in (tmp_path / "index.html").read_text()


# ---- the synthetic shapes' corners ---------------------------------------------------------------


def test_corner_keypoints_by_direction_hand_computed() -> None:
    # a square at angle 0 has its corners straight right, down, left and up of its centre
    r = 10 * math.sqrt(2)
    square = np.array([[50 + r, 50], [50, 50 + r], [50 - r, 50], [50, 50 - r]])
    hidden = np.zeros((128, 128), dtype=bool)
    kp = corner_keypoints(square, hidden, 128, 128)  # order: top, right, bottom, left
    expected = [[50, 50 - r, 2], [50 + r, 50, 2], [50, 50 + r, 2], [50 - r, 50, 2]]
    assert np.allclose(kp, expected, atol=1e-5)
    hidden[int(50 + r), 50] = True  # a later shape over the bottom corner: unlabelled
    assert np.array_equal(corner_keypoints(square, hidden, 128, 128)[2], [0, 0, 0])
    # a triangle squeezed to 55°: corners at 55° (bottom), 175° (left), 295° (top); no right corner
    assert math.degrees(corner_angle(2, 0.0)) == pytest.approx(55.0)
    angles = np.radians([55.0, 175.0, 295.0])
    triangle = np.stack([60 + 10 * np.cos(angles), 60 + 10 * np.sin(angles)], axis=1)
    kp = corner_keypoints(triangle, np.zeros((128, 128), dtype=bool), 128, 128)
    assert np.array_equal(kp[1], [0, 0, 0]) and (kp[[0, 2, 3], 2] == 2).all()
    assert np.allclose(kp[2, :2], triangle[0]) and np.allclose(kp[3, :2], triangle[1])


@pytest.mark.parametrize("kind, corners", [(0, 4), (2, 3)])
def test_every_corner_is_at_least_the_margin_from_a_sector_boundary(kind: int, corners: int) -> None:
    for angle in np.linspace(0, 2 * math.pi, 721):
        squeezed = math.degrees(corner_angle(kind, float(angle)))
        for k in range(corners):
            offset = (squeezed + 360.0 * k / corners) % 90.0  # sector boundaries at 45° mod 90°
            assert abs(offset - 45.0) >= 10.0 - 1e-9


def test_shapes_dataset_keypoints() -> None:
    ds = ShapesDataset(40, seed=2, keypoints=True)
    assert ds.num_keypoints == 4 and ds.keypoint_names == list(KEYPOINT_NAMES)
    labelled = {1: [], 2: [], 3: []}
    for i in range(len(ds)):
        t = ds[i].targets
        assert t.keypoints.shape == (len(t), 4, 3)
        for box, label, kp in zip(t.boxes, t.labels.tolist(), t.keypoints):
            on = kp[:, 2] > 0
            assert set(kp[:, 2].tolist()) <= {0.0, 2.0} and (kp[~on] == 0).all()
            # labelled corners lie in the instance's box
            assert (kp[on, 0] >= box[0]).all() and (kp[on, 0] <= box[2]).all()
            assert (kp[on, 1] >= box[1]).all() and (kp[on, 1] <= box[3]).all()
            labelled[label].append(int(on.sum()))
    assert (
        max(labelled[1]) == 4 and max(labelled[3]) == 3 and max(labelled[2]) == 0
    )  # squares, triangles, circles
    assert np.mean(labelled[1]) > 3.2  # most corners are visible
    # without keypoints the dataset is the plain shapes dataset
    plain = ShapesDataset(3, seed=2)
    assert plain[0].targets.keypoints is None and plain.num_keypoints == 0 and plain.skeleton == []
