"""detectron2 files used directly, without `maskrcnn convert`: `maskrcnn.load(model_final.pkl)`,
`maskrcnn predict --weights model_final.pth` and `maskrcnn train --init model_final.pkl` (the files
of detectron2's own R50-FPN model, conftest.py's `r50`, read with no config: the zoo's settings)."""

from __future__ import annotations

import json

import torch
from PIL import Image

import maskrcnn
from maskrcnn import cli
from maskrcnn.checkpoints import read_checkpoint
from maskrcnn.convert.detectron2 import coco_80
from maskrcnn.predict_records import detection_records
from tests.helpers import coco_data

from .d2_reference import coco_mini_val, read_pkl


def test_load_and_predict_take_detectron2_files_as_the_converted_checkpoint(r50, tmp_path, capsys):
    converted = tmp_path / "converted.pt"
    assert cli.main(["convert", "--from", "detectron2", str(r50.pkl), str(converted)]) == 0
    # a wide strip of a real image: detectron2's resize (short side 800, long side at most 1333)
    # makes it 133×1333, an eighth of the pixels of a whole COCO image at 800 px; the score threshold
    # keeps the mask head's work (the zoo's 100 detections per image) smaller too
    strip = tmp_path / "strip.png"
    Image.open(coco_mini_val(1)[0]).convert("RGB").crop((0, 120, 640, 184)).save(strip)
    thresh = 0.5

    reference = maskrcnn.load(str(converted))
    want = reference.predict([strip], score_thresh=thresh)[0]
    assert len(want) >= 10  # the decisive random model detects things

    direct = maskrcnn.load(str(r50.pkl))  # the zoo-style .pkl, converted on the fly
    assert direct.class_names == reference.class_names and direct.category_ids == reference.category_ids
    assert direct.config == reference.config
    got = direct.predict([strip], score_thresh=thresh)[0]
    for field in ("boxes", "scores", "labels", "masks"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field

    out = tmp_path / "predicted"
    argv = ["predict", "--weights", str(r50.pth), "--out", str(out), "--no-overlays", "--no-progress"]
    assert cli.main([*argv, "--score-thresh", str(thresh), str(strip)]) == 0
    assert f"{len(want)} detections on 1 image" in capsys.readouterr().out
    records = json.loads((out / "predictions.json").read_text())
    expected = detection_records(want, category_ids=reference.category_ids)
    assert [{k: r[k] for k in expected[0]} for r in records] == expected


def test_train_init_from_a_detectron2_pkl_carries_coco_classes_by_name(r50, shared_data, tmp_path, capsys):
    """Data of the classes dog, person and balloon (in that order): dog and person take the rows of
    detectron2's COCO classes of those names, balloon (not a COCO class) starts fresh."""
    spec = coco_data(shared_data, tmp_path / "data.json", ["dog", "person", "balloon"])
    out = tmp_path / "run"
    argv = ["train", "--config", "detectron2", "--train-data", spec, "--out", str(out), "--no-progress"]
    argv += ["--init", str(r50.pkl), "data.num_workers=0", "solver.ims_per_batch=2"]
    argv += ["solver.max_iter=0"]
    assert cli.main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("init:")]
    assert len(lines) == 1 and "remapped with 2 of 3 classes carried (dog, person)" in lines[0], lines

    report = json.loads((out / "init_report.json").read_text())
    assert report["classes"] == [
        {"name": "dog", "label": 1, "from": "dog"},
        {"name": "person", "label": 2, "from": "person"},
        {"name": "balloon", "label": 3, "from": None},
    ]
    fates = report["tensors"]
    remapped = {k for k, v in fates.items() if v["fate"] == "remapped"}
    assert len(remapped) == 6 and all(fates[k]["fresh"] == ["balloon"] for k in remapped)
    assert {v["fate"] for k, v in fates.items() if k not in remapped} == {"loaded"}

    # the written model against detectron2's own tensors: rows picked by COCO name
    d2 = {k: torch.from_numpy(v) for k, v in read_pkl(r50.pkl)["model"].items()}
    final = read_checkpoint(out / "model_final.pt")
    assert final["class_names"] == ["dog", "person", "balloon"]
    state = final["model"]
    coco = coco_80()[0]
    scores = state["roi_heads.box.predictor.cls_score.weight"]
    theirs = d2["roi_heads.box_predictor.cls_score.weight"]  # background last in detectron2
    assert torch.equal(scores[0], theirs[-1])
    assert torch.equal(scores[1], theirs[coco.index("dog")])
    assert torch.equal(scores[2], theirs[coco.index("person")])
    masks = state["roi_heads.mask.head.predictor.weight"]
    assert torch.equal(masks[1], d2["roi_heads.mask_head.predictor.weight"][coco.index("person")])
    for ours, name in (
        ("backbone.body.layer3.5.conv2.weight", "backbone.bottom_up.res4.5.conv2.weight"),
        ("rpn.head.deltas.weight", "proposal_generator.rpn_head.anchor_deltas.weight"),
    ):
        assert torch.equal(state[ours], d2[name]), name
