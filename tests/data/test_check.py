"""`maskrcnn check-data` and the check `maskrcnn train` runs first, on a COCO file made from five
real coco-mini images with one planted problem of every kind: each is reported with its count and
its image and annotation ids; fatal problems give exit status 1 (and stop training with the report
and one error line), fixed ones exit 0 (1 with --strict) and are counted in training's
metrics.jsonl."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from maskrcnn import cli
from maskrcnn.data import CocoDataset
from maskrcnn.data.check import check_dataset_files
from maskrcnn.data.problems import DataProblemsError
from tests.helpers import TINY

COCO_MINI = "coco-mini/annotations/instances_train2017.json"
TRIANGLE = [[10.0, 10.0, 40.0, 10.0, 25.0, 40.0]]  # an ordinary small instance
PLANTED = range(900000, 900100)  # the ids of the annotations the tests add

FIXED = {
    "polygon_too_few_points": 1,
    "zero_area": 1,
    "box_outside_image": 1,
    "box_entirely_outside_image": 1,
}
FATAL = {
    "missing_image": 1,
    "unreadable_image": 1,
    "image_size_mismatch": 1,
    "unknown_category": 1,
    "duplicate_annotation_id": 1,
    "duplicate_image_id": 1,
    "unknown_image": 1,
    "malformed": 1,
}


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _maskrcnn(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "maskrcnn", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(),
        timeout=300,
    )


def _ann(aid: int, image_id: int, segmentation, category_id: int = 1, **extra) -> dict:
    return {"id": aid, "image_id": image_id, "category_id": category_id, "segmentation": segmentation,
            "iscrowd": 0, **extra}  # fmt: skip


@pytest.fixture(scope="module")
def planted(tmp_path_factory, shared_data) -> SimpleNamespace:
    """Two COCO files of coco-mini train images: `fixable` with one problem of each fixed kind and
    one image without annotations; `fatal` with those plus one of each fatal kind."""
    folder = tmp_path_factory.mktemp("check_data")
    source = json.loads((shared_data / COCO_MINI).read_text())
    by_id = {im["id"]: im for im in source["images"]}
    crowded = {a["image_id"] for a in source["annotations"] if a["iscrowd"]}
    ids = sorted(i for i in by_id if i not in crowded)[:6]
    images_dir = folder / "images"
    images_dir.mkdir()
    for i in ids:  # the real JPEGs, linked (not copied)
        (images_dir / by_id[i]["file_name"]).symlink_to(
            shared_data / "coco-mini/train2017" / by_id[i]["file_name"]
        )
    im0, im1, im2, im3, im4, spare = (by_id[i] for i in ids)
    kept = {im0["id"], im1["id"], im2["id"], im3["id"]}
    anns = [a for a in source["annotations"] if a["image_id"] in kept]
    first = next(a for a in anns if a["image_id"] == im0["id"] and isinstance(a["segmentation"], list))
    first["segmentation"].append([5.0, 5.0, 9.0, 9.0])  # a 2-point polygon: dropped
    w1 = im1["width"]
    fixable_anns = [
        *anns,
        _ann(
            900001, im0["id"], [[10.0, 10.0, 40.0, 10.0, 70.0, 10.0]], bbox=[10.0, 10.0, 60.0, 0.0]
        ),  # no area
        _ann(900002, im1["id"], [[-20.0, -20.0, 50.0, -20.0, 50.0, 50.0, -20.0, 50.0]]),  # partly outside
        _ann(900003, im1["id"], [[w1 + 10.0, 10.0, w1 + 50.0, 10.0, w1 + 50.0, 50.0]]),  # outside
    ]
    fixable = {
        "images": [im0, im1, im2, im3, im4],
        "annotations": fixable_anns,
        "categories": source["categories"],
    }

    truncated = images_dir / "truncated.jpg"
    truncated.write_bytes((images_dir / im2["file_name"]).read_bytes()[:4000])
    (images_dir / "resized.jpg").symlink_to(shared_data / "coco-mini/train2017" / spare["file_name"])
    extra_images = [
        {"id": 900020, "file_name": "missing.jpg", "height": 100, "width": 100},
        {"id": 900021, "file_name": "truncated.jpg", "height": im2["height"], "width": im2["width"]},
        {"id": 900022, "file_name": "resized.jpg", "height": spare["height"] + 1, "width": spare["width"]},
        {"id": im0["id"], "file_name": "again.jpg", "height": 10, "width": 10},  # duplicate image id
    ]
    fatal_anns = [
        *fixable_anns,
        *[_ann(900040 + k, image_id, TRIANGLE) for k, image_id in enumerate((900020, 900021, 900022))],
        _ann(900030, im0["id"], TRIANGLE, category_id=999),
        _ann(first["id"], im0["id"], TRIANGLE),  # duplicate annotation id
        _ann(900031, 123456789, TRIANGLE),
        _ann(900032, im2["id"], [[1.0, 2.0, "x", 4.0, 5.0, 6.0]]),
    ]
    fatal = {**fixable, "images": fixable["images"] + extra_images, "annotations": fatal_anns}
    for name, content in (("fixable", fixable), ("fatal", fatal)):
        (folder / f"{name}.json").write_text(json.dumps(content))
    return SimpleNamespace(
        folder=folder,
        fixable=f"coco:{folder / 'fixable.json'}:{images_dir}",
        fatal=f"coco:{folder / 'fatal.json'}:{images_dir}",
        ids={"im0": im0["id"], "im1": im1["id"], "im2": im2["id"], "im4": im4["id"], "first": first["id"]},
    )


def _examples(report: dict) -> dict[str, tuple]:
    """kind -> (image id, annotation id) of its first example."""
    return {
        k: (v["examples"][0]["image_id"], v["examples"][0]["annotation_id"])
        for k, v in report["kinds"].items()
    }


def test_check_data_reports_every_planted_problem(planted, tmp_path):
    out = tmp_path / "report.json"
    result = _maskrcnn("check-data", planted.fatal, "--json", str(out), "--no-progress", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: the data has fatal problems (listed above): training would stop"
    ]
    report = json.loads(out.read_text())
    assert report["fatal"] is True and report["images"] == 8  # 5 + 3 listed (the duplicate id is not)
    assert report["counts"] == {**FATAL, **FIXED, "image_without_annotations": 1}
    ids = planted.ids
    assert _examples(report) == {
        "missing_image": (900020, None),
        "unreadable_image": (900021, None),
        "image_size_mismatch": (900022, None),
        "unknown_category": (ids["im0"], 900030),
        "duplicate_annotation_id": (ids["im0"], ids["first"]),
        "duplicate_image_id": (ids["im0"], None),
        "unknown_image": (123456789, 900031),
        "malformed": (ids["im2"], 900032),
        "polygon_too_few_points": (ids["im0"], ids["first"]),
        "zero_area": (ids["im0"], 900001),
        "box_outside_image": (ids["im1"], 900002),
        "box_entirely_outside_image": (ids["im1"], 900003),
        "image_without_annotations": (ids["im4"], None),
    }
    kinds = report["kinds"]
    assert kinds["missing_image"]["examples"][0]["file"].endswith("missing.jpg")
    assert "but the annotations say" in kinds["image_size_mismatch"]["examples"][0]["detail"]
    assert kinds["polygon_too_few_points"]["action"] == "polygon dropped"
    assert kinds["box_outside_image"]["action"] == "box clipped to the image"
    # the printed report: fatal kinds first, each with its count and first example
    text = result.stdout
    assert text.index("fatal: 1 x image file missing") < text.index(
        "fixed: 1 x polygon with fewer than 3 points"
    )
    assert "unknown category id 999" in text and f"(image {ids['im1']}, annotation 900003)" in text
    assert "8 images; 8 fatal problems, 4 fixed, 1 note" in text


def test_check_data_exit_status_fixed_and_strict(planted, capsys):
    # in this process (`cli.main`, what the console script runs): the real-process run is above
    assert cli.main(["check-data", planted.fixable, "--no-progress"]) == 0
    printed = capsys.readouterr()
    assert printed.err == "" and "5 images; 0 fatal problems, 4 fixed, 1 note" in printed.out
    assert "fixed: 1 x box entirely outside the image (annotation dropped)" in printed.out
    assert cli.main(["check-data", planted.fixable, "--strict", "--no-progress"]) == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: --strict: 4 problem(s) would be fixed (listed above)"
    ]


def test_fixes_are_applied_as_reported(planted):
    """What the check says is done is what the dataset serves: the polygon outside the image is
    gone, the one partly outside is clipped to the image, the one without area is dropped."""
    _, ann, images = planted.fixable.split(":")
    ds = CocoDataset(ann, images)
    log = check_dataset_files(ds)
    assert log.summary() == {**FIXED, "image_without_annotations": 1} and not log.fatal
    source = json.loads(Path(ann).read_text())["annotations"]
    index = ds.image_ids.index(planted.ids["im1"])
    real = sum(1 for a in source if a["image_id"] == planted.ids["im1"] and a["id"] not in PLANTED)
    targets, _ = ds.load_targets(index)
    assert ds.num_annotations(index) == len(targets) == real + 1  # 900002 kept, 900003 dropped
    assert targets.boxes[-1].tolist() == [0.0, 0.0, 50.0, 50.0]  # 900002, clipped: its pixels inside
    assert int(targets.masks[-1].sum()) == 50 * 50
    index0 = ds.image_ids.index(planted.ids["im0"])
    real0 = sum(1 for a in source if a["image_id"] == planted.ids["im0"] and a["id"] not in PLANTED)
    assert len(ds.load_targets(index0)[0]) == ds.num_annotations(index0) == real0  # 900001 dropped


def test_a_dataset_with_a_fatal_problem_refuses_its_items(planted):
    _, ann, images = planted.fatal.split(":")
    ds = CocoDataset(ann, images)
    assert ds.problems.fatal and len(ds) == 8
    im0 = planted.ids["im0"]
    with pytest.raises(
        DataProblemsError, match=rf"fatal\.json \(image {im0}\): image id {im0} is listed twice"
    ):
        ds[0]
    with pytest.raises(
        DataProblemsError,
        match=r"has 5 fatal problems: .* \(and 4 more; `maskrcnn check-data` lists them all\)",
    ):
        ds.load_targets(1)


def test_train_counts_fixes_and_stops_on_fatal_problems(planted, tmp_path, capsys):
    settings = [*TINY, "solver.ims_per_batch=1", "solver.max_iter=1", "data.num_workers=0"]
    run = tmp_path / "fixable"
    assert (
        cli.main(["train", "--train-data", planted.fixable, "--out", str(run), "--no-progress", *settings])
        == 0
    )
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("data: ")]
    assert "1 x polygon with fewer than 3 points (polygon dropped)" in line
    assert "note: 1 x image without annotations (kept as a background image)" in line
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[0] == {"iteration": 0, "data_problems": {**FIXED, "image_without_annotations": 1}}
    assert records[-1]["iteration"] == 1 and "loss" in records[-1]

    stopped = tmp_path / "fatal"  # a real process: the report, one error line, no traceback
    result = _maskrcnn("train", "--train-data", planted.fatal, "--out", str(stopped), *settings, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    errors = [x for x in lines if x.startswith("error: ")]
    assert errors == [lines[-1]]
    assert lines[-1].startswith("error: the training data has 8 fatal problems: ")
    assert lines[-1].endswith("(and 7 more; see the report above)")
    assert "fatal: 1 x image file cannot be decoded" in result.stderr
    assert "truncated.jpg (image 900021)" in result.stderr
    assert not (stopped / "checkpoint.pt").exists() and not (stopped / "model_final.pt").exists()
