"""`check-data`'s notes on files that training reads without complaint but that are wrong: two
image records of one file (and two files of the same bytes), a `bbox` that disagrees with its
mask (box IoU below `MIN_BOX_IOU`), YOLO label files without their image, labelme files without
their image (with their instance counts). Small planted files over real coco-2img data."""

from __future__ import annotations

import json
import shutil

from PIL import Image

from maskrcnn.cli import main
from maskrcnn.data import CocoDataset
from maskrcnn.data.box_agreement import MIN_BOX_IOU, box_iou_xywh
from maskrcnn.data.check import check_dataset_files
from maskrcnn.data.labelme import LabelmeDataset
from maskrcnn.data.yolo import YoloDataset


def by_kind(log, kind: str) -> list:
    return [p for p in log.problems if p.kind == kind]


def test_duplicate_images_and_boxes_that_disagree_with_their_masks(shared_data, tmp_path, capsys):
    source = shared_data / "coco-2img"
    data = json.loads((source / "annotations/instances_val2017.json").read_text())
    images = tmp_path / "images"
    shutil.copytree(source / "images/val2017", images)
    (image,) = data["images"]
    shutil.copy(images / image["file_name"], images / "copy.jpg")  # the same bytes, another name
    data["images"] += [{**image, "id": 7}, {**image, "id": 8, "file_name": "copy.jpg"}]
    anns = data["annotations"]
    x, y, w, h = anns[0]["bbox"]
    anns[0]["bbox"] = [x, y, 0.0, 0.0]  # zero area, valid polygons
    anns[1]["bbox"] = [5000.0, 5000.0, 10.0, 10.0]  # far outside the 640x427 image
    anns[2]["bbox"] = [anns[2]["bbox"][0] + 0.2 * anns[2]["bbox"][2], *anns[2]["bbox"][1:]]  # IoU 0.8: fine
    path = tmp_path / "planted.json"
    path.write_text(json.dumps(data))

    # the real file: its 19 boxes agree with their polygons (IoU >= 0.5); nothing is noted
    real = CocoDataset(source / "annotations/instances_val2017.json", source / "images/val2017")
    assert real.problems.summary() == {}

    log = check_dataset_files(CocoDataset(path, images))
    boxes = by_kind(log, "bbox_disagrees_with_mask")
    assert [(p.image_id, p.annotation_id) for p in boxes] == [(image["id"], a["id"]) for a in anns[:2]]
    assert all(p.file == str(path) and "IoU 0.00 < 0.5" in p.detail for p in boxes)
    assert "evaluate scores box AP against the bbox" in boxes[0].detail
    (named,) = by_kind(log, "duplicate_file_name")
    said = f"file_name {image['file_name']} is also image {image['id']}'s"
    assert (named.image_id, named.detail) == (7, said)
    (same,) = by_kind(log, "duplicate_image_content")
    assert (same.file, same.image_id) == (str(images / "copy.jpg"), 8)
    assert same.detail == f"same bytes as {images / image['file_name']}"
    assert log.summary() == {  # notes only: training goes on, exit status 0
        "bbox_disagrees_with_mask": 2,
        "duplicate_file_name": 1,
        "duplicate_image_content": 1,
        "image_without_annotations": 2,  # the two records added have no annotations
    }
    assert main(["check-data", f"coco:{path}:{images}", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "note: 2 x bbox disagreeing with its mask (box IoU < 0.5) (training uses the mask's box)" in out
    # the threshold, on the numbers: the shifted box above is kept, a box half off is not
    shifted = [x + 0.2 * w, y, w, h]
    half_off = [x + w / 2, y, w, h]
    assert box_iou_xywh(shifted, [x, y, w, h]) > MIN_BOX_IOU > box_iou_xywh(half_off, [x, y, w, h])


def test_yolo_label_files_without_their_image(tmp_path):
    root = tmp_path / "yolo"
    (root / "images/train").mkdir(parents=True)
    (root / "labels/train").mkdir(parents=True)
    (root / "data.yaml").write_text("names: [cat, dog]\n")
    Image.new("RGB", (40, 30), "white").save(root / "images/train/a.png")
    square = "0.2 0.2 0.6 0.2 0.6 0.6 0.2 0.6"
    (root / "labels/train/a.txt").write_text(f"0 {square}\n")
    (root / "labels/train/gone.txt").write_text(f"0 {square}\n1 {square}\n\n1 {square}\n")  # 3 instances
    (root / "labels/train/lone.txt").write_text(f"1 {square}\n")
    log = check_dataset_files(YoloDataset(root))
    lost = by_kind(log, "label_without_image")
    assert [(p.file, p.detail) for p in lost] == [
        (str(root / "labels/train/gone.txt"), "no image for this label file (3 instances)"),
        (str(root / "labels/train/lone.txt"), "no image for this label file (1 instance)"),
    ]
    assert not log.fatal and log.summary() == {"label_without_image": 2}


def test_a_labelme_file_without_its_image_says_how_many_instances_it_holds(tmp_path):
    folder = tmp_path / "labelme"
    folder.mkdir()
    square = [[2, 2], [20, 2], [20, 20], [2, 20]]
    shapes = [{"label": "cat", "points": square, "shape_type": "polygon"} for _ in range(2)]
    record = {"imagePath": "absent.png", "imageHeight": 30, "imageWidth": 40, "shapes": shapes}
    (folder / "absent.json").write_text(json.dumps(record))
    (missing,) = check_dataset_files(LabelmeDataset(folder)).problems
    assert (missing.kind, missing.file) == ("missing_image", str(folder / "absent.png"))
    assert missing.detail == "image file not found (its labelme file absent.json has 2 instances)"
    # two labelme files naming one image: noted (the check of every format's items, not COCO's reader)
    (folder / "absent.json").unlink()
    Image.new("RGB", (40, 30), "white").save(folder / "one.png")
    for name in ("a.json", "b.json"):
        (folder / name).write_text(json.dumps({**record, "imagePath": "one.png"}))
    (twice,) = check_dataset_files(LabelmeDataset(folder)).problems
    assert (twice.kind, twice.file, twice.image_id) == ("duplicate_file_name", str(folder / "one.png"), 1)
    assert twice.detail == "also the image of image 0"
