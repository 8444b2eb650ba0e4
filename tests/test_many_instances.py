"""Hundreds and thousands of instances on one image (issue 19, item 3): every dataset reader, check-data,
one training step, evaluate and predict (detections_per_image=1000), written by the test as a grid of
3x3 squares on one small image (300 squares: 72x72 px; 2000: 180x180 px).

pycocotools 2.0.11's `mask.area` of a list of 256 or more RLEs overflows a uint8 count; the readers
all went through it (`targets_from_rles`), so such an image crashed every one of them. Its other list
calls (encode, decode, merge, iou, frPyObjects, toBbox) are checked here against one call per mask.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from maskrcnn import cli
from maskrcnn.data.check import check_dataset_files
from maskrcnn.data.coco import rle_areas
from maskrcnn.data.specs import build_dataset, write_dataset
from tests.helpers import TINY_NET

CELL, SIDE = 4, 3  # one 3x3 square per 4x4 cell


def squares(n: int) -> tuple[int, list[tuple[int, int]]]:
    """(image side, the top-left corners (x, y) of n squares in a grid)."""
    grid = math.ceil(math.sqrt(n))
    corners = [(1 + CELL * (k % grid), 1 + CELL * (k // grid)) for k in range(n)]
    return grid * CELL, corners


def expected_masks(n: int) -> np.ndarray:
    """(n, H, W) bool: square k alone in plane k."""
    size, corners = squares(n)
    masks = np.zeros((n, size, size), dtype=bool)
    for k, (x, y) in enumerate(corners):
        masks[k, y : y + SIDE, x : x + SIDE] = True
    return masks


def write_coco(folder: Path, *counts: int) -> str:
    """One PNG per count n, many_<n>.png, holding n squares (2 classes, alternating), and their COCO
    file of polygons -> its spec."""
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id, n in enumerate(counts, 1):
        size, corners = squares(n)
        image = np.full((size, size, 3), 90, dtype=np.uint8)
        for k, (x, y) in enumerate(corners):
            image[y : y + SIDE, x : x + SIDE] = (230, 60, 40) if k % 2 == 0 else (40, 200, 230)
            polygon = [float(v) for v in (x, y, x + SIDE, y, x + SIDE, y + SIDE, x, y + SIDE)]
            annotation = {"id": len(annotations) + 1, "image_id": image_id, "category_id": 1 + k % 2}
            annotation.update(segmentation=[polygon], bbox=[x, y, SIDE, SIDE], area=SIDE * SIDE, iscrowd=0)
            annotations.append(annotation)
        Image.fromarray(image).save(folder / f"many_{n}.png")
        images.append({"id": image_id, "file_name": f"many_{n}.png", "height": size, "width": size})
    categories = [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (folder / "instances.json").write_text(json.dumps(coco))
    return f"coco:{folder / 'instances.json'}:{folder}"


def write_via(folder: Path, n: int) -> str:
    size, corners = squares(n)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), 90, dtype=np.uint8)).save(folder / "many.png")
    regions = [
        {
            "shape_attributes": {"name": "rect", "x": x, "y": y, "width": SIDE, "height": SIDE},
            "region_attributes": {"name": "square"},
        }
        for x, y in corners
    ]
    entry = {"filename": "many.png", "size": 0, "regions": regions, "file_attributes": {}}
    (folder / "via_region_data.json").write_text(json.dumps({"many.png": entry}))
    return f"via:{folder}"


def write_mask_folder(folder: Path, n: int) -> str:
    size, _ = squares(n)
    (folder / "many/images").mkdir(parents=True)
    (folder / "many/masks").mkdir()
    Image.fromarray(np.full((size, size, 3), 90, dtype=np.uint8)).save(folder / "many/images/many.png")
    for k, mask in enumerate(expected_masks(n)):
        Image.fromarray(mask.astype(np.uint8) * 255).save(folder / f"many/masks/{k:04d}.png")
    return f"masks:{folder}"


def assert_all_squares(dataset, n: int) -> None:
    """The one item holds the n squares exactly (in any order), and its file checks find nothing."""
    targets, _ = dataset.load_targets(0)
    assert len(targets) == n
    want = expected_masks(n)
    got = targets.masks.numpy().astype(bool)
    assert (got.sum(axis=(1, 2)) == SIDE * SIDE).all()
    assert np.array_equal(got.any(axis=0), want.any(axis=0))
    order = np.lexsort((targets.boxes[:, 0].numpy(), targets.boxes[:, 1].numpy()))  # row by row
    assert np.array_equal(got[order], want)
    corners = np.array(squares(n)[1], dtype=np.float32)
    assert np.array_equal(targets.boxes[order].numpy(), np.hstack([corners, corners + SIDE]))
    assert not check_dataset_files(dataset).problems


def test_every_reader_reads_every_instance(tmp_path):
    """300 squares (past the 255 RLEs pycocotools' area counts) in every format; 2000 go through
    the COCO reader in the commands' test below (the other readers share its code from here on)."""
    n = 300
    coco = write_coco(tmp_path / "coco", n)
    dataset = build_dataset(coco)
    assert_all_squares(dataset, n)
    write_dataset(dataset, tmp_path / "labelme", to="labelme")
    write_dataset(dataset, tmp_path / "yolo", to="yolo")
    write_dataset(dataset, tmp_path / "rle.json", to="coco")  # RLE segmentations this time
    specs = [
        f"labelme:{tmp_path / 'labelme'}",
        f"yolo:{tmp_path / 'yolo'}:train",
        f"coco:{tmp_path / 'rle.json'}:{tmp_path / 'coco'}",
        write_via(tmp_path / "via", n),
        write_mask_folder(tmp_path / "masks", n),
    ]
    for spec in specs:
        assert_all_squares(build_dataset(spec), n)


def test_pycocotools_list_calls_equal_one_call_per_mask():
    n = 300
    masks = np.asfortranarray(expected_masks(n).transpose(1, 2, 0).astype(np.uint8))
    rles = mask_util.encode(masks)
    single = [mask_util.encode(np.asfortranarray(masks[:, :, k])) for k in range(n)]
    assert rles == single
    with pytest.raises(OverflowError):  # what the readers met; rle_areas calls it in chunks
        mask_util.area(rles)
    assert rle_areas(rles).tolist() == [int(mask_util.area(r)) for r in single] == [9] * n
    assert np.array_equal(mask_util.decode(rles), masks)
    assert np.array_equal(mask_util.toBbox(rles), np.stack([mask_util.toBbox(r) for r in single]))
    assert np.array_equal(mask_util.decode(mask_util.merge(rles)), masks.max(axis=2))
    ious = mask_util.iou(rles, rles, [0] * n)
    assert np.array_equal(ious, np.eye(n))
    size = masks.shape[0]
    polygons = [[x, y, x + 3, y, x + 3, y + 3, x, y + 3] for x, y in squares(n)[1]]
    assert mask_util.frPyObjects(polygons, size, size) == [
        mask_util.frPyObjects([p], size, size)[0] for p in polygons
    ]


def test_check_data_train_evaluate_and_predict(tmp_path, capsys):
    """Two images, of 300 and 2000 squares, through every command: one training step takes both."""
    counts = (300, 2000)
    spec = write_coco(tmp_path / "data", *counts)
    assert cli.main(["check-data", spec, "--no-progress"]) == 0
    assert "2 images; 0 fatal problems, 0 fixed, 0 notes" in capsys.readouterr().out

    many = [
        "model.roi_heads.detections_per_image=1000",
        "model.rpn.pre_nms_topk_test=2000",
        "model.rpn.post_nms_topk_test=600",  # up to 600 detections per image, to keep the test short
        "model.roi_heads.score_thresh=0.0",
    ]
    run = tmp_path / "run"
    train = ["train", "--config", "shapes_demo", "--train-data", spec, "--out", str(run), "--no-progress"]
    assert cli.main([*train, *TINY_NET, "solver.max_iter=1", "solver.ims_per_batch=2", *many]) == 0
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (step,) = [r for r in logged if "loss_mask" in r]
    assert all(math.isfinite(step[k]) for k in step if k.startswith("loss"))
    weights = str(run / "model_final.pt")
    capsys.readouterr()

    report = tmp_path / "report"
    evaluate = ["evaluate", "--weights", weights, "--data", spec, "--out", str(report), "--no-progress"]
    assert cli.main(evaluate) == 0
    metrics = json.loads((report / "metrics.json").read_text())
    detections = json.loads((report / "detections.json").read_text())
    per_image = [sum(r["image_id"] == i for r in detections) for i in (1, 2)]
    assert all(256 <= d <= 1000 for d in per_image), per_image  # past pycocotools' uint8, to the limit
    assert metrics["segm"]["AP"] is not None and 0.0 <= metrics["segm"]["AP"] <= 1.0

    out = tmp_path / "predicted"
    images = [str(tmp_path / "data" / f"many_{n}.png") for n in counts]
    predict = ["predict", "--weights", weights, "--out", str(out), "--no-progress", "--save-masks"]
    assert cli.main([*predict, *images]) == 0
    records = json.loads((out / "predictions.json").read_text())
    assert [sum(r["file_name"] == f"many_{n}.png" for r in records) for n in counts] == per_image
    assert len(list((out / "masks").iterdir())) == len(records)
    for n in counts:
        size = squares(n)[0]
        rles = [r["segmentation"] for r in records if r["file_name"] == f"many_{n}.png"]
        planes = mask_util.decode([{**rle, "counts": rle["counts"].encode()} for rle in rles])
        assert planes.shape == (size, size, len(rles)) and planes.any()
        for k in (0, len(rles) // 2, len(rles) - 1):  # the RLEs are the masks --save-masks wrote
            (png,) = (out / "masks").glob(f"many_{n}_{k}_*.png")
            assert np.array_equal(np.asarray(Image.open(png)) > 0, planes[:, :, k] > 0)
        assert (out / "overlays" / f"many_{n}.png").is_file()
