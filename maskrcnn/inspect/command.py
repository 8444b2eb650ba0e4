"""The `maskrcnn inspect` command: its arguments, finding the image's ground truth in a dataset,
and running `inspect_model` then `write_inspection` on one image file."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:  # torch loads only when the command runs, so `maskrcnn --help` stays quick
    from ..structures import Targets

__all__ = ["add_inspect_arguments", "cmd_inspect", "find_annotations"]


def find_annotations(spec: str, image_path: str | Path) -> tuple[Targets, list[str], str]:
    """Ground truth of the image named like `image_path` in the dataset `spec` (matched by file
    name) -> (targets in original-image pixels, the dataset's class names, a description)."""
    from ..data.specs import build_dataset

    dataset = build_dataset(spec)
    name = Path(image_path).name
    matches = [i for i in range(len(dataset)) if Path(dataset.file_name(i)).name == name]
    if not matches:
        raise UserError(f"no image named {name!r} in dataset {spec!r} ({len(dataset)} images)")
    index = matches[0]
    targets, _ = dataset.load_targets(index)
    where = f"{spec} item {index} ({dataset.file_name(index)})"
    if len(matches) > 1:
        where += f"; {len(matches)} items share this file name, the first is used"
    return targets, list(dataset.class_names), where


def add_inspect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="checkpoint path, URL or name (`maskrcnn weights`)")
    parser.add_argument(
        "--annotations",
        help="dataset spec holding the image's ground truth, found by file name "
        "(coco:ANN.json:IMAGE_DIR, via:DIR, masks:DIR); adds the anchor-target picture",
    )
    parser.add_argument("--out", required=True, help="output folder (PNG pictures, index.html, summary.json)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("image", help="image file")


def cmd_inspect(args: argparse.Namespace) -> int:
    from .. import load
    from ..files import AS_DISPLAYED, STORED_PIXELS, read_image

    path = Path(args.image)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    # annotations refer to the stored pixel grid (as the datasets read it); otherwise read the
    # image as `maskrcnn predict` does
    image = read_image(path, policy=STORED_PIXELS if args.annotations else AS_DISPLAYED)
    targets, gt_names, where = None, None, None
    if args.annotations:
        targets, gt_names, where = find_annotations(args.annotations, path)
        if tuple(targets.masks.shape[-2:]) != tuple(image.shape[-2:]):
            raise UserError(
                f"{where}: annotations are for a {targets.masks.shape[-2]}x{targets.masks.shape[-1]} image "
                f"but {path} is {image.shape[-2]}x{image.shape[-1]}"
            )
    model = load(args.weights, device=args.device).model
    if not hasattr(model, "backbone"):  # an ONNX graph (maskrcnn.export): its stages are not reachable
        raise UserError(f"--weights {args.weights}: inspect needs a PyTorch checkpoint, not an ONNX file")
    from .page import write_inspection
    from .stages import inspect_model

    result = inspect_model(model, image, targets=targets, gt_class_names=gt_names)
    details = {
        "image": str(path),
        "weights": str(args.weights),
        "original size (h×w)": "{}×{}".format(*result.original_size),
        "model input (h×w)": "{}×{} (padded to {}×{})".format(*result.input_size, *result.padded_size),
        "annotations": where or "none (no anchor-target picture)",
    }
    pictures = write_inspection(result, args.out, title=f"maskrcnn inspect: {path.name}", details=details)
    print(f"wrote {len(pictures)} pictures and {Path(args.out) / 'index.html'}")
    return 0
