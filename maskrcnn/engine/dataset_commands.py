"""`maskrcnn show-data SPEC --out DIR [--limit N]`: a dataset's ground truth drawn into PNG files;
`maskrcnn convert-dataset SPEC OUTPUT [--to coco|labelme|yolo|cvat] [--split S]`: a dataset written
in another format (`maskrcnn.data.specs.write_dataset`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError

__all__ = [
    "add_convert_dataset_arguments",
    "add_show_data_arguments",
    "cmd_convert_dataset",
    "cmd_show_data",
]


def add_show_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "spec",
        help="dataset spec, e.g. shapes:8, via:DIR, masks:DIR, labelme:DIR, yolo:DIR, coco:ANN.json:IMAGES",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--limit", type=int, default=20, help="draw the first N images (default 20)")


def cmd_show_data(args: argparse.Namespace) -> int:
    from ..data.specs import build_dataset
    from ..files import atomic_save_image
    from ..visualize import draw_targets

    if args.limit is not None and args.limit < 0:
        raise UserError(f"--limit must be >= 0, got {args.limit}")
    dataset = build_dataset(args.spec)
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for index in range(count):
        sample = dataset[index]
        name = Path(sample.file_name).stem or str(index)
        if name in used:
            name = f"{name}_{index}"
        used.add(name)
        skeleton = getattr(dataset, "skeleton", None) or ()  # keypoint datasets: points joined
        picture = draw_targets(sample.image, sample.targets, dataset.class_names, skeleton=skeleton)
        atomic_save_image(out / f"{name}.png", picture)
    print(f"wrote {count} images to {out}")
    return 0


def add_convert_dataset_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "spec", help="dataset spec, e.g. via:DIR, masks:DIR, labelme:DIR, yolo:DIR[:SPLIT], shapes:N"
    )
    p.add_argument("output", help="the COCO JSON file to write, or (--to labelme, yolo, cvat) the new folder")
    p.add_argument(
        "--to",
        choices=("coco", "labelme", "yolo", "cvat"),
        default="coco",
        help="output format (default coco); a labelme, YOLO or CVAT folder must be new or empty",
    )
    p.add_argument(
        "--split", default=None, help="--to yolo: the split to write the images as (default train)"
    )


def cmd_convert_dataset(args: argparse.Namespace) -> int:
    from ..data.specs import build_dataset, write_dataset

    dataset = build_dataset(args.spec)
    path = write_dataset(dataset, args.output, to=args.to, split=args.split)
    what = "" if args.to == "coco" else f" ({args.to} folder)"
    print(f"wrote {path}{what}: {len(dataset)} images, {dataset.num_classes} classes")
    return 0
