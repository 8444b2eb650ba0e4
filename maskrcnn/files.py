"""Reading and writing files: the one image decoder and the one atomic writer.

This module sits below every other layer (it imports only the standard library, numpy, torch and
Pillow), so datasets, prediction inputs, checkpoints and reports all read and write through it.

Image decoding takes an explicit `DecodePolicy`:

- `STORED_PIXELS` (datasets, and `maskrcnn inspect --annotations`): the pixel grid as stored in the
  file, since annotations refer to it (as in COCO): EXIF orientation is ignored and an alpha channel
  is dropped;
- `AS_DISPLAYED` (prediction): the image the way viewers show it: EXIF orientation (tag 274) is
  applied and transparency (RGBA, LA, PA, palettes or grayscale with a transparent index) is
  composited over white, so transparent pixels do not show whatever colour the encoder left there.

Both policies share the other rules: grayscale, palette, CMYK, YCbCr, 1-bit ... become RGB; 16-bit
images (`I;16*`) are scaled from 0..65535 to 0..1, not clipped at 255; 32-bit integer images (`I`)
are read as 16-bit when any value exceeds 255, else as 8-bit; float images (`F`) as [0, 1] when
their maximum is at most 1, else like `I`. 8-bit sources give uint8 pixels (so `read_image` is
exactly `uint8 / 255`), deeper ones float32. Every failure is an `ImageReadError` naming the file.

Writes are atomic (`atomic_write`): the content goes to a temporary file in the target's folder,
is flushed and fsynced, gets the permissions a plain `open()` would give, and is renamed over the
target; on any failure the temporary file is removed and an existing target is left as it was.
A folder of files (a dataset written in another format) is written the same way as a whole
(`atomic_write_folder`): into a temporary folder beside the target, renamed into place at the end.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import UserError

__all__ = [
    "AS_DISPLAYED",
    "STORED_PIXELS",
    "DecodePolicy",
    "ImageReadError",
    "NamedBytes",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_folder",
    "atomic_write_text",
    "composite_on_white",
    "decode_pil",
    "default_file_mode",
    "pixels_to_tensor",
    "pixels_to_uint8",
    "read_image",
    "read_image_size",
    "read_pixels",
    "remove_partial_writes",
]

PathLike = Union[str, "os.PathLike[str]"]
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})


class ImageReadError(UserError):
    """An input that cannot be read as an image; the message names the file and the reason."""


@dataclass(frozen=True)
class DecodePolicy:
    """How a file's pixels become an RGB image: `apply_exif` rotates/mirrors by the EXIF
    orientation tag; `alpha` is "drop" (keep the colour under transparent pixels) or "white"
    (composite over white)."""

    apply_exif: bool
    alpha: Literal["drop", "white"]

    def __post_init__(self) -> None:
        if self.alpha not in ("drop", "white"):
            raise ValueError(f"DecodePolicy.alpha must be 'drop' or 'white', got {self.alpha!r}")


STORED_PIXELS = DecodePolicy(apply_exif=False, alpha="drop")
AS_DISPLAYED = DecodePolicy(apply_exif=True, alpha="white")


class NamedBytes(io.BytesIO):
    """Image bytes in memory (an upload, an image stored in a JSON file) that read as a file for
    Pillow and show as `name` in the decoder's messages: `read_pixels(NamedBytes(data, name), ...)`
    raises an ImageReadError naming `name`."""

    def __init__(self, data: bytes, name: str):
        super().__init__(data)
        self.display_name = name

    def __str__(self) -> str:
        return self.display_name


# ---- decoding ----------------------------------------------------------------------------------


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 -> (H, W, 3) uint8: colour * alpha + white * (1 - alpha), rounded."""
    rgb, alpha = rgba[..., :3].astype(np.uint32), rgba[..., 3:].astype(np.uint32)
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def _high_depth(im: Image.Image) -> np.ndarray:
    """Single-channel `I;16*`, `I` or `F` image -> (H, W) float32 in [0, 1]."""
    values = np.asarray(im).astype(np.float32)
    if im.mode.startswith("I;16"):
        scale = 65535.0
    else:
        top = float(values.max()) if values.size else 0.0
        scale = 1.0 if im.mode == "F" and top <= 1.0 else (255.0 if top <= 255 else 65535.0)
    return np.clip(values / scale, 0.0, 1.0)


def decode_pil(im: Image.Image, *, alpha: Literal["drop", "white"] = "white") -> np.ndarray:
    """A PIL image of any mode -> (H, W, 3) RGB: uint8 for 8-bit sources, float32 in [0, 1] for
    deeper ones. `alpha` as in `DecodePolicy` (the module docstring gives the rules)."""
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = _high_depth(im)
        return np.ascontiguousarray(np.broadcast_to(gray[..., None], (*gray.shape, 3)))
    transparent = mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in im.info)
    if transparent and alpha == "white":
        return composite_on_white(np.asarray(im.convert("RGBA")))
    if mode != "RGB":
        im = im.convert("RGB")
    return _rgb_array(im)


def _rgb_array(im: Image.Image) -> np.ndarray:
    """An RGB image's (H, W, 3) uint8 pixels, copied band of rows by band (16 MB each), so a
    large image costs the result and Pillow's own copy, not a third image-sized temporary."""
    out = np.empty((im.height, im.width, 3), dtype=np.uint8)
    band = max(1, (1 << 24) // max(1, 3 * im.width))
    for top in range(0, im.height, band):
        out[top : top + band] = np.asarray(im.crop((0, top, im.width, min(im.height, top + band))))
    return out


@contextmanager
def _image_errors(path: PathLike) -> Iterator[None]:
    """Turn what Pillow raises on a bad image file into an ImageReadError naming the file.

    Pillow's DecompressionBombWarning (over `Image.MAX_IMAGE_PIXELS`, 89.5 megapixels unless a
    command sets its own limit) is silenced: the images are the user's own files, a 12000 × 9000
    photograph is read without that being all the terminal shows; twice the limit is still the
    DecompressionBombError, reported as "image too large"."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise ImageReadError(f"{path}: is a folder, not an image file") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file (Pillow recognises no image format in it)") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"{path}: image too large ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError) as e:
        text = str(e) or type(e).__name__
        reason = "truncated image data" if "truncated" in text.lower() else "corrupt image data"
        raise ImageReadError(f"{path}: {reason} ({text})") from None


_EXIF_ORIENTATION = 0x0112  # EXIF tag 274


def read_pixels(path: PathLike, *, policy: DecodePolicy) -> np.ndarray:
    """Decode an image file -> (H, W, 3) RGB, uint8 or float32 in [0, 1], under `policy`.

    Raises ImageReadError (a ValueError) naming the file when it is missing, not an image or corrupt.
    """
    with _image_errors(path), Image.open(path) as im:
        im.load()  # decode now: truncated data fails here rather than half-way through a convert
        # exif_transpose copies the image even when there is nothing to turn: only call it when there is
        turn = policy.apply_exif and im.getexif().get(_EXIF_ORIENTATION, 1) not in (None, 1)
        return decode_pil(ImageOps.exif_transpose(im) if turn else im, alpha=policy.alpha)


def read_image_size(path: PathLike) -> tuple[int, int]:
    """(height, width) of an image file as stored (no EXIF rotation), read from its header without
    decoding the pixels; ImageReadError naming the file as `read_pixels`."""
    with _image_errors(path), Image.open(path) as im:
        return im.height, im.width


def pixels_to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 or float32 pixels -> (3, H, W) float32 in [0, 1]."""
    pixels = np.ascontiguousarray(pixels)
    if not pixels.flags.writeable:  # a read-only view (broadcast, or the caller's array): copy it
        pixels = pixels.copy()
    tensor = torch.from_numpy(pixels).permute(2, 0, 1)
    return tensor.float().div_(255.0) if pixels.dtype == np.uint8 else tensor.float()


def pixels_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 or float32 pixels in [0, 1] -> uint8 (rounded)."""
    if pixels.dtype == np.uint8:
        return pixels
    return np.round(pixels.astype(np.float64) * 255.0).astype(np.uint8)


def read_image(path: PathLike, *, policy: DecodePolicy) -> torch.Tensor:
    """An image file -> (3, H, W) float32 RGB in [0, 1], decoded under `policy` (ImageReadError
    naming the file when it cannot be read)."""
    return pixels_to_tensor(read_pixels(path, policy=policy))


# ---- atomic writes -----------------------------------------------------------------------------


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def default_file_mode() -> int:
    """0o666 minus the process umask: what open() would give (mkstemp gives 0o600)."""
    return 0o666 & ~_umask()


def atomic_write(path: PathLike, write: Callable[[IO[bytes]], Any]) -> Path:
    """Create or replace the file `path` atomically with what `write(file)` writes into the binary
    file object it is given; returns the path. Missing parent folders are created.

    Readers see either the old file or the complete new one, never a part; if `write` (or anything
    after it) raises, the old file is left intact and no temporary file remains.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def remove_partial_writes(path: PathLike) -> list[Path]:
    """Remove the temporary files of `atomic_write(path, ...)` calls whose process was killed before
    the rename (SIGKILL, power loss: nothing could clean up); returns them. Call it only while no
    other process writes `path`."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    prefix = f".{path.name}."  # atomic_write's mkstemp names: .NAME.RANDOM.tmp
    stale = sorted(p for p in path.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(".tmp"))
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def atomic_write_text(path: PathLike, text: str) -> Path:
    """`atomic_write` of a UTF-8 text."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_json(path: PathLike, obj: Any, *, indent: int | None = None) -> Path:
    """`atomic_write` of `obj` as JSON (UTF-8). The JSON is built before the file is touched, so an
    object that cannot be serialised leaves the old file as it was."""
    return atomic_write_text(path, json.dumps(obj, indent=indent))


@contextmanager
def atomic_write_folder(path: PathLike) -> Iterator[Path]:
    """Create the folder `path` with everything written into the folder this yields, all at once:
    the content goes to a temporary folder beside `path`, which is renamed to `path` when the block
    ends without an exception (and removed when it raises), so `path` never holds half a dataset.

    An existing `path` must be an empty folder: anything else is refused with a UserError before
    anything is written (nothing is ever overwritten).
    """
    path = Path(path)
    if path.exists() and not (path.is_dir() and not any(path.iterdir())):
        what = "folder is not empty" if path.is_dir() else "is a file"
        raise UserError(f"{path}: {what}; refusing to overwrite it (choose a new or empty folder)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp gives 0o700; this is what mkdir would give
        try:
            os.replace(tmp, path)  # replaces an empty folder, refuses a non-empty one
        except OSError as e:
            raise UserError(f"{path}: could not move the written folder into place ({e.strerror})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
