"""Prediction inputs: decoding image files of any common kind, coercing in-memory images, and
finding the image and video files behind the paths a user names.

Files are decoded by `maskrcnn.files` under the `AS_DISPLAYED` policy: EXIF orientation applied,
transparency composited over white (the module docstring of `maskrcnn.files` gives every rule:
grayscale, palettes, 16-bit, ...). PIL images and arrays follow the same rules except EXIF, since an
in-memory image is taken as the pixel grid it is. Datasets read their files under the
`STORED_PIXELS` policy instead, because annotations refer to the stored pixel grid.

8-bit sources give uint8 pixels (so `load_image` is exactly `uint8 / 255`), deeper ones float32.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image

from .files import (
    AS_DISPLAYED,
    ImageReadError,
    composite_on_white,
    decode_pil,
    pixels_to_tensor,
    pixels_to_uint8,
    read_pixels,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "VIDEO_SUFFIXES",
    "ImageInput",
    "ImageReadError",
    "InputItem",
    "as_image_tensor",
    "as_rgb_uint8",
    "collect_inputs",
    "decode_pil",
    "load_image",
    "read_rgb",
]

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm", ".pnm"}
)
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".ts"})


# ---- decoding ----------------------------------------------------------------------------------


def load_image(path: str | os.PathLike, *, keep_uint8: bool = False) -> torch.Tensor:
    """An image file -> (3, H, W) float32 RGB in [0, 1], as displayed (EXIF orientation applied,
    transparency over white). `keep_uint8`: an 8-bit file gives its (3, H, W) uint8 pixels instead
    (a quarter of the memory; the model divides them by 255, the same float values).

    Raises ImageReadError (a ValueError) naming the file when it is missing, not an image or corrupt.
    """
    pixels = read_pixels(path, policy=AS_DISPLAYED)
    if keep_uint8 and pixels.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
    return pixels_to_tensor(pixels)


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file -> (H, W, 3) uint8 RGB, decoded as `load_image` does (16-bit scaled to 8-bit)."""
    return pixels_to_uint8(read_pixels(path, policy=AS_DISPLAYED))


# ---- in-memory images --------------------------------------------------------------------------


def _array_pixels(array: np.ndarray) -> np.ndarray:
    """An (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array -> (H, W, 3) uint8 or float32 in [0, 1]."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        raise ValueError(
            f"image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {array.shape} "
            "(pass a (3, H, W) image as a torch tensor)"
        )
    kind = array.dtype.kind
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype == np.uint16:
        array = array.astype(np.float32) / 65535.0
    elif kind == "f":
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if not (low >= 0.0 and high <= 1.0):  # also catches NaN
            raise ValueError(
                f"float image array values must be in [0, 1], found [{low:g}, {high:g}] "
                "(pass uint8 for values 0..255)"
            )
        array = array.astype(np.float32)
    elif kind in "iu" and array.dtype != np.uint8:
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if low < 0 or high > 255:
            raise ValueError(
                f"{array.dtype} image array values must be in 0..255, found {low}..{high} "
                "(pass uint16 for 16-bit images)"
            )
        array = array.astype(np.uint8)
    elif array.dtype != np.uint8:
        raise TypeError(f"unsupported image array dtype {array.dtype}")
    if array.shape[2] == 4:
        if array.dtype == np.uint8:
            return composite_on_white(array)
        rgb, alpha = array[..., :3], array[..., 3:]
        return (rgb * alpha + (1.0 - alpha)).astype(np.float32)
    if array.shape[2] == 1:
        return np.ascontiguousarray(np.broadcast_to(array, (*array.shape[:2], 3)))
    return array


def _pixels(image: ImageInput) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        return read_pixels(image, policy=AS_DISPLAYED)
    if isinstance(image, Image.Image):
        return decode_pil(image)
    if isinstance(image, np.ndarray):
        return _array_pixels(image)
    raise TypeError(
        "an image must be a file path, a PIL image, a numpy array or a (3, H, W) tensor, "
        f"got {type(image).__name__}"
    )


def as_image_tensor(image: ImageInput) -> torch.Tensor:
    """Any supported image -> a (3, H, W) tensor for `MaskRCNN.predict`.

    Tensors are returned as they are (float in [0, 1], or uint8); file paths are read with
    `load_image`; PIL images and numpy arrays ((H, W) grayscale, (H, W, 3) RGB, (H, W, 4) RGBA; uint8,
    uint16, bool, or float in [0, 1]) become float32 (3, H, W) in [0, 1].
    """
    if isinstance(image, torch.Tensor):
        return image
    return pixels_to_tensor(_pixels(image))


def as_rgb_uint8(image: ImageInput) -> np.ndarray:
    """A file path, PIL image or numpy array -> (H, W, 3) uint8 RGB, decoded as `as_image_tensor` does."""
    return pixels_to_uint8(_pixels(image))


# ---- finding inputs ----------------------------------------------------------------------------


@dataclass(frozen=True)
class InputItem:
    """One input file: `name` is its file name, or its path below the folder it was found in."""

    path: Path
    name: str
    kind: str  # "image" or "video"


def _kind(path: Path) -> str:
    return "video" if path.suffix.lower() in VIDEO_SUFFIXES else "image"


def collect_inputs(
    paths: Sequence[str | os.PathLike], *, glob: str | None = None
) -> tuple[list[InputItem], list[tuple[str, str]]]:
    """Expand the given paths into input files -> (items, problems as (path, reason)).

    A file is taken as it is (a video when its suffix is a video one, else an image, whatever its
    suffix: a wrong file is reported when it fails to decode). A folder is searched recursively for
    files matching `glob` (by default: files with an image suffix, any case), in sorted order. A folder
    with no match gives a problem message. A file reached twice is kept once. Raises
    FileNotFoundError naming every path that does not exist.
    """
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"input not found: {', '.join(missing)}")
    items: list[InputItem] = []
    problems: list[tuple[str, str]] = []
    seen: set[Path] = set()

    def add(path: Path, name: str) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            items.append(InputItem(path, name, _kind(path)))

    for given in map(Path, paths):
        if not given.is_dir():
            add(given, given.name)
            continue
        if glob:
            found = [p for p in given.rglob(glob) if p.is_file()]
        else:
            found = [p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not found:
            wanted = f"files matching {glob!r}" if glob else "image files"
            problems.append((str(given), f"folder has no {wanted}"))
        for path in sorted(found):
            add(path, path.relative_to(given).as_posix())
    return items, problems
