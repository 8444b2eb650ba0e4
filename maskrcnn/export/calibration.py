"""Calibration images for static int8 quantisation (`maskrcnn.export.quantize`): what the user's
`--calibration SPEC` names, as the (3, H, W) float32 images in [0, 1] the exported graph takes.

    images = calibration_images_from("coco:ann.json:images", count=64)   # any dataset spec
    images = calibration_images_from("photos/", count=64)                 # or a folder of images

A SPEC that is an existing folder is searched for image files (`maskrcnn.inputs.collect_inputs`,
decoded as `predict` decodes them); anything else is a dataset spec (`maskrcnn.data.specs`, as
`train` and `evaluate` read it) and its images are used without their annotations. `count` images
are taken evenly spread over the dataset or the folder's sorted files (all of them when there are
fewer; a folder's unreadable files are skipped). Sizes may differ from image to image: the
graph's H and W are dynamic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor

from ..errors import UserError

__all__ = ["calibration_images_from", "spread"]


def spread(total: int, count: int) -> list[int]:
    """`min(count, total)` indices evenly spread over range(total), first and last included."""
    if count >= total:
        return list(range(total))
    if count == 1:
        return [0]
    return sorted({int(i) for i in np.linspace(0, total - 1, count).round()})


def _folder_images(folder: Path, count: int) -> list[Tensor]:
    from ..inputs import ImageReadError, collect_inputs, load_image

    items, _ = collect_inputs([folder])
    items = [item for item in items if item.kind == "image"]
    images: list[Tensor] = []
    for index in spread(len(items), count):
        try:
            images.append(load_image(items[index].path))
        except (ImageReadError, OSError):
            continue  # an unreadable file is skipped; none readable is the caller's error
    return images


def calibration_images_from(spec: str, *, count: int) -> list[Tensor]:
    """Up to `count` images of `spec` (a folder of images or a dataset spec: see the module
    docstring), each (3, H, W) float32 in [0, 1]. UserError when `count` < 1 or `spec` gives no
    readable image; a dataset spec's own errors (missing files, a bad spec) as `build_dataset` raises them."""
    if count < 1:
        raise UserError(f"--calibration-images must be at least 1, got {count}")
    folder = Path(spec).expanduser()
    if folder.is_dir():
        images = _folder_images(folder, count)
        where = f"folder {folder}"
    else:
        from ..data.specs import build_dataset

        dataset = build_dataset(spec)
        images = [dataset[i].image for i in spread(len(dataset), count)]
        where = f"dataset {spec!r}"
    if not images:
        raise UserError(f"--calibration {spec}: the {where} has no readable images to calibrate with")
    return [image.float().contiguous() for image in images]
