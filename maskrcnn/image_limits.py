"""What image shapes the commands take: the one check of thin and too-large images.

An image (H, W) is refused, by every command, before any of its pixels are decoded, when:

- it is **too thin**: its longer side is more than `MAX_ASPECT_RATIO` (100) times its shorter side
  (a 1×20000 or 20000×1 strip, a 30×4000 line scan), or, when the model's resize is known (predict,
  serve, anything running a `Predictor`), a side would become less than 1 pixel once resized (the
  shorter side goes to `min_size` unless the longer one would exceed `max_size`; a model with a
  `max_size` under 100 meets this before the ratio). The model cannot run on a 0-pixel side; a
  strip of a few pixels holds nothing it was trained to see;
- it has **too many pixels**, when a limit is given: `maskrcnn predict --max-pixels` (default
  `DEFAULT_MAX_PIXELS`, 200 megapixels: a 12000×9000 photograph passes) and `maskrcnn serve
  --max-pixels`. The message suggests `--tile`, which runs such an image in tiles at native size.

`image_shape_problem` says which (a kind and a reason) or None; `check_image_shape` raises it as an
`ImageShapeError` (an `ImageReadError`, so what skips an unreadable input skips this one too) whose
message names the file. `read_checked_image` reads the header, checks, then decodes: under the
limit it was given, not Pillow's own decompression-bomb limit (89 megapixels warned, 179 refused),
which would otherwise refuse a photograph the limit allows.

Who uses it: `maskrcnn predict` (the file is skipped with one `error:` line, the other inputs run),
`maskrcnn serve` (422 for a thin image, 413 for too many pixels), `Predictor.predict` (in-memory
images), and `maskrcnn check-data` / `train` through `maskrcnn.data.check.check_image_file`
(the fatal kind `image_too_thin`: training stops before its first step rather than meet it).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal, Optional, Union

import torch
from PIL import Image

from .files import DecodePolicy, ImageReadError, read_image, read_image_size

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_ASPECT_RATIO",
    "ImageShapeError",
    "check_image_shape",
    "image_shape_problem",
    "pillow_pixel_limit",
    "read_checked_image",
]

MAX_ASPECT_RATIO = 100  # longer side / shorter side
DEFAULT_MAX_PIXELS = 200_000_000  # predict's --max-pixels: 12000 x 9000 = 108 MP passes

Kind = Literal["thin", "too_large"]


class ImageShapeError(ImageReadError):
    """An image refused for its shape: `kind` "thin" or "too_large"; the message names the file."""

    def __init__(self, message: str, *, kind: Kind):
        super().__init__(message)
        self.kind = kind


def image_shape_problem(
    height: int,
    width: int,
    *,
    max_pixels: Optional[int] = None,
    resized: Optional[tuple[float, float]] = None,
) -> Optional[tuple[Kind, str]]:
    """(kind, reason) when an image of `height` x `width` is refused (module docstring), else None.
    `max_pixels`: the pixel limit (None: none); `resized`: the (h, w) the model would resize it to
    (None: unknown, only the aspect ratio is checked)."""
    size = f"{width}x{height} (width x height)"
    short, long = min(height, width), max(height, width)
    if short < 1 or long > MAX_ASPECT_RATIO * short:
        ratio = "an empty side" if short < 1 else f"an aspect ratio of {long / short:.0f}:1"
        return "thin", f"image is {size}, {ratio}: too thin (the limit is {MAX_ASPECT_RATIO}:1)"
    if resized is not None and min(resized) < 1:
        rh, rw = resized
        return "thin", f"image is {size}, too thin: the model would resize it to {rw:g}x{rh:g} pixels"
    if max_pixels is not None and height * width > max_pixels:
        return "too_large", (
            f"image is {width}x{height} = {height * width} pixels, over the limit of {max_pixels} "
            "(--max-pixels; or run it in tiles with --tile)"
        )
    return None


def check_image_shape(
    height: int,
    width: int,
    *,
    name: Union[str, os.PathLike],
    max_pixels: Optional[int] = None,
    resized: Optional[tuple[float, float]] = None,
) -> None:
    """Raise an ImageShapeError "NAME: reason" when `image_shape_problem` finds one."""
    problem = image_shape_problem(height, width, max_pixels=max_pixels, resized=resized)
    if problem is not None:
        raise ImageShapeError(f"{name}: {problem[1]}", kind=problem[0])


@contextmanager
def pillow_pixel_limit(max_pixels: Optional[int]) -> Iterator[None]:
    """Within the block, Pillow warns above `max_pixels` and refuses above twice that (None: never),
    instead of its own 89 / 179 megapixels; for images whose size was already checked."""
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max(max_pixels, before or 0) if max_pixels is not None else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def read_checked_image(
    path: Union[str, os.PathLike],
    *,
    policy: DecodePolicy,
    max_pixels: Optional[int] = None,
    resize=None,
    keep_uint8: bool = False,
) -> torch.Tensor:
    """An image file -> (3, H, W) float32 in [0, 1] (`maskrcnn.files.read_image` under `policy`),
    after its header's size passed `check_image_shape` (`resize`: a function (h, w) -> the model's
    resized (h, w), or None; `keep_uint8`: as `read_image`). ImageShapeError or ImageReadError
    naming the file."""
    with pillow_pixel_limit(max_pixels):
        height, width = read_image_size(path)
        check_image_shape(
            height,
            width,
            name=path,
            max_pixels=max_pixels,
            resized=resize(height, width) if resize is not None and min(height, width) >= 1 else None,
        )
        return read_image(path, policy=policy, keep_uint8=keep_uint8)
