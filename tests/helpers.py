"""Helpers shared by test modules: where things are, the one tiny model config, a CLI runner and
small real-data builders. Test modules import from here, never from one another."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image

from maskrcnn.errors import UserError
from maskrcnn.inputs import load_image

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

# The one tiny network of the tests: ResNet-18 at a quarter width, a narrow FPN and narrow RoI heads.
# Test modules add only what their use needs (classes, input size, logging), e.g.
# `[*TINY_NET, "model.num_classes=80"]` at the default 800 px inputs.
TINY_NET = [
    "model.backbone.depth=18",
    "model.backbone.width=16",
    "model.backbone.fpn_channels=32",
    "model.roi_heads.fc_dim=64",
    "model.roi_heads.mask_head_dim=32",
    "model.roi_heads.mask_head_convs=2",
]

# TINY_NET with 2 classes on small inputs and fewer proposals: fast on CPU, ~10 MB checkpoints. With
# 2 classes its near-uniform initial scores (~1/3) exceed the 0.05 threshold, so it detects things
# (5 per image at most).
TINY = [
    *TINY_NET,
    "model.num_classes=2",
    "model.input.min_size=[128]",
    "model.input.max_size=192",
    "model.rpn.pre_nms_topk_train=300",
    "model.rpn.post_nms_topk_train=200",
    "model.rpn.pre_nms_topk_test=300",
    "model.rpn.post_nms_topk_test=100",
    "model.roi_heads.batch_size_per_image=64",
    "model.roi_heads.detections_per_image=5",
]


def train_args(out: Path, *extra: str) -> list[str]:
    """`maskrcnn train` arguments of the tests' tiny runs: TINY_NET on the shapes_demo preset (128 px
    synthetic shapes, 3 classes) on `shapes:16`, one metrics line per iteration, no progress bar;
    `extra`: more options and overrides."""
    return [
        "train",
        "--config",
        "shapes_demo",
        "--train-data",
        "shapes:16",
        "--out",
        str(out),
        "--no-progress",
        *TINY_NET,
        "train.log_period=1",
        *extra,
    ]


def single_thread_env() -> dict[str, str]:
    """This environment with OMP_NUM_THREADS=1: every run of a training subprocess then computes
    with the same thread count, so CPU results are bitwise reproducible from run to run."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m maskrcnn ARGS` in a real process (warnings silenced), its output captured as text."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "maskrcnn", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def coco2_train(shared_data: Path, label_of=lambda category_id: category_id) -> tuple[torch.Tensor, dict]:
    """The coco-2img train image and its instances, decoded directly with pycocotools (not through
    our datasets); labels are `label_of(category_id)`. -> (image, {"boxes", "labels", "masks"})."""
    ann = json.loads((shared_data / "coco-2img/annotations/instances_train2017.json").read_text())
    info = ann["images"][0]
    image = load_image(shared_data / "coco-2img/images/train2017" / info["file_name"])
    h, w = info["height"], info["width"]
    boxes, labels, masks = [], [], []
    for a in ann["annotations"]:
        rles = mask_util.frPyObjects(a["segmentation"], h, w)
        m = mask_util.decode(mask_util.merge(rles) if isinstance(rles, list) else rles)
        x, y, bw, bh = a["bbox"]
        boxes.append([x, y, x + bw, y + bh])
        labels.append(label_of(a["category_id"]))
        masks.append(m)
    target = {
        "boxes": torch.tensor(boxes, dtype=torch.float32),
        "labels": torch.tensor(labels),
        "masks": torch.from_numpy(np.stack(masks)).to(torch.uint8),
    }
    return image, target


LABEL_H, LABEL_W = 30, 220  # generous bounds on a drawn label's size at the tests' image sizes


def drawing_zones(boxes: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(pixels within 3 px of a box edge, pixels where a box's label may be) as boolean maps of an
    (h, w) picture on which `boxes` (N, 4 xyxy) were drawn."""
    outline = np.zeros((h, w), dtype=bool)
    label = np.zeros((h, w), dtype=bool)
    for x1, y1, x2, y2 in np.round(boxes).astype(int).tolist():
        band = np.zeros((h, w), dtype=bool)
        band[max(0, y1 - 3) : y2 + 3, max(0, x1 - 3) : x2 + 3] = True
        band[y1 + 3 : max(y1 + 3, y2 - 3), x1 + 3 : max(x1 + 3, x2 - 3)] = False
        outline |= band
        lx = max(0, min(x1, w - LABEL_W))
        label[max(0, y1 - LABEL_H) : y1 + LABEL_H, max(0, lx - 2) : x1 + LABEL_W] = True
    return outline, label


PHOTO = "coco-mini/val2017/000000000139.jpg"


def small_photo(shared_data: Path, size: tuple[int, int]) -> np.ndarray:
    """A real photo resized to `size` (w, h) as (h, w, 3) uint8: small and non-square, so that a
    rotation shows in the shape."""
    from PIL import Image

    with Image.open(shared_data / PHOTO) as im:
        return np.asarray(im.convert("RGB").resize(size, Image.Resampling.BILINEAR)).copy()


class ReplayModel:
    """Stands in for a model in evaluation tests: `predict` hands out the given per-image
    Detections in order (e.g. the ground truth, for an oracle), whatever the images."""

    def __init__(self, detections: list, *, config=None) -> None:
        self.queue = list(detections)
        self.config = config

    def to(self, device: str) -> ReplayModel:
        return self

    def eval(self) -> ReplayModel:
        return self

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        return height, width

    def predict(self, images: list[torch.Tensor], *, score_thresh=None) -> list:
        out, self.queue = self.queue[: len(images)], self.queue[len(images) :]
        return out


# coco-mini val images without crowd regions (139 and 22892 each have an object of two polygons):
# the real data of the labelme and YOLO tests, which write these images' annotations in those formats.
COCO_SUBSET_IDS = (139, 802, 11813, 18575, 22192, 22892)


def coco_subset(shared_data: Path, out: Path, image_ids=COCO_SUBSET_IDS) -> tuple[Path, Path]:
    """A COCO file of these coco-mini val images and their annotations, written to `out` by the test;
    -> (the file, coco-mini's val image folder)."""
    ann = json.loads((shared_data / "coco-mini/annotations/instances_val2017.json").read_text())
    keep = set(image_ids)
    subset = {
        "images": [im for im in ann["images"] if im["id"] in keep],
        "annotations": [a for a in ann["annotations"] if a["image_id"] in keep],
        "categories": ann["categories"],
    }
    out.write_text(json.dumps(subset))
    return out, shared_data / "coco-mini/val2017"


def coco_data(shared_data: Path, out: Path, names: list[str]) -> str:
    """A COCO spec of coco-mini val images (COCO_SUBSET_IDS) and their annotations of the classes
    `names`, given category ids 1..K in that order (so the dataset's class order is `names`)."""
    ann = json.loads((shared_data / "coco-mini/annotations/instances_val2017.json").read_text())
    new_id = {c["id"]: names.index(c["name"]) + 1 for c in ann["categories"] if c["name"] in names}
    keep = set(COCO_SUBSET_IDS)
    subset = {
        "images": [im for im in ann["images"] if im["id"] in keep],
        "annotations": [
            {**a, "category_id": new_id[a["category_id"]]}
            for a in ann["annotations"]
            if a["image_id"] in keep and a["category_id"] in new_id
        ],
        "categories": [{"id": i, "name": n, "supercategory": ""} for i, n in enumerate(names, 1)],
    }
    out.write_text(json.dumps(subset))
    return f"coco:{out}:{shared_data / 'coco-mini/val2017'}"


def coco_instances(annotation_file: Path) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Image file name (without folders) -> (class name, mask) of each non-crowd annotation of a COCO
    file (polygons, or RLE as `write_coco_json` writes), decoded directly with pycocotools (not
    through our datasets)."""
    ann = json.loads(annotation_file.read_text())
    names = {c["id"]: c["name"] for c in ann["categories"]}
    images = {im["id"]: im for im in ann["images"]}
    found: dict[str, list[tuple[str, np.ndarray]]] = {Path(im["file_name"]).name: [] for im in ann["images"]}
    for a in ann["annotations"]:
        if a.get("iscrowd"):
            continue
        im = images[a["image_id"]]
        seg = a["segmentation"]
        if isinstance(seg, dict) and isinstance(seg["counts"], str):  # compressed RLE, as we write it
            rle = {"size": seg["size"], "counts": seg["counts"].encode("ascii")}
        else:
            rles = mask_util.frPyObjects(seg, im["height"], im["width"])
            rle = mask_util.merge(rles) if isinstance(rles, list) else rles
        found[Path(im["file_name"]).name].append(
            (names[a["category_id"]], mask_util.decode(rle).astype(bool))
        )
    return found


def dataset_instances(dataset) -> dict[str, list[tuple[str, np.ndarray]]]:
    """Image file name (without folders) -> (class name, mask) of each instance of a dataset."""
    found = {}
    for index in range(len(dataset)):
        targets, _ = dataset.load_targets(index)
        pairs = [
            (dataset.class_names[int(label) - 1], mask.numpy().astype(bool))
            for label, mask in zip(targets.labels.tolist(), targets.masks)
        ]
        found[Path(dataset.file_name(index)).name] = pairs
    return found


def assert_same_instances(expected: dict, got: dict, *, min_iou: float = 0.99) -> float:
    """Same images, and per image the same number of instances, matched one to one (best IoU first)
    with the same class name and mask IoU >= min_iou; returns the lowest IoU."""
    assert sorted(got) == sorted(expected)
    lowest = 1.0
    for name, want in expected.items():
        have = list(got[name])
        assert len(have) == len(want), f"{name}: {len(have)} instances, expected {len(want)}"
        for label, mask in want:
            ious = [(m & mask).sum() / max((m | mask).sum(), 1) if lab == label else -1.0 for lab, m in have]
            best = int(np.argmax(ious))
            assert ious[best] >= min_iou, f"{name}: {label} instance matched at IoU {ious[best]:.4f}"
            lowest = min(lowest, float(ious[best]))
            have.pop(best)
    return lowest


# ---- corrupted datasets: what may come out of reading them ------------------------------------

DOCUMENTED_ERRORS = (UserError, FileNotFoundError)  # what bad data may raise: a clear, named error


def assert_documented_error(
    error: BaseException, *, names: Sequence[str], numbered: str | None = None
) -> None:
    """`error` is one of DOCUMENTED_ERRORS and its message names one of `names` (the dataset's
    files); `numbered`: a text (": shape ", ".txt line ") that, where the message holds it, is
    followed by a number (the item at fault)."""
    text = str(error)
    assert isinstance(error, DOCUMENTED_ERRORS), f"{type(error).__name__}: {text}"
    assert any(name in text for name in names), f"the error names no file: {text}"
    if numbered is not None and numbered in text:
        assert text.split(numbered)[1].split(":")[0].isdigit(), f"no number after {numbered!r}: {text}"


def read_every_item(build: Callable, *, names: Sequence[str], numbered: str | None = None) -> None:
    """Build a dataset (`build()`) and read every item (its size, its targets, the sample, whose
    masks must have the image's size): either all of it works or it stops at a documented error
    (`assert_documented_error` with `names` and `numbered`)."""
    try:
        dataset = build()
        for index in range(len(dataset)):
            dataset.image_size(index)
            dataset.load_targets(index)
            sample = dataset[index]
            assert sample.targets.masks.shape[1:] == sample.image.shape[1:]
    except DOCUMENTED_ERRORS as e:
        assert_documented_error(e, names=names, numbered=numbered)


def find_chromium() -> str | None:
    """The system Chromium's executable (apt-get install chromium; .ci/run installs it), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_screenshot(chromium: str, page: Path, work: Path, *, size: tuple[int, int]) -> np.ndarray:
    """`page` (an HTML file) rendered by headless Chromium in a window of `size` (width, height),
    its own profile in `work` -> the screenshot as (height, width, 3) uint8 RGB."""
    shot = work / f"{page.stem}.png"
    cmd = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={work / 'profile'}",
        f"--screenshot={shot}",
        f"--window-size={size[0]},{size[1]}",
        f"file://{page}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.is_file(), f"no screenshot (exit {result.returncode}): {result.stderr[-2000:]}"
    with Image.open(shot) as im:
        return np.asarray(im.convert("RGB"))
