"""Datasets stored as one folder per image with one mask PNG per instance.

Layout (as in the 2018 Data Science Bowl):

    DIR/<id>/images/<id>.png
    DIR/<id>/masks/<anything>.png     one instance per file, same size as the image

Mask pixels > `threshold` (default 127, so anti-aliased edges are split at half intensity) belong
to the instance; masks left empty by the threshold are dropped. RGBA images lose their alpha
channel, grayscale images are replicated to RGB. All instances get the single class `class_name`.
Items are the image folders in sorted name order; image_id = position.

Checks (`maskrcnn.data.problems`): a folder whose `images/` holds no image or several is recorded
in `problems` (fatal: the dataset then refuses to serve items) and left out; an image without mask
files is noted. `check_item` records a missing or unreadable image or mask file, a mask of another
size than its image (fatal) and a mask left empty by the threshold (dropped).
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from maskrcnn.data.check import check_image_file
from maskrcnn.data.problems import ProblemLog
from maskrcnn.errors import UserError
from maskrcnn.files import STORED_PIXELS, ImageReadError, read_image, read_image_size
from maskrcnn.ops.boxes import masks_to_boxes
from maskrcnn.structures import Sample, Targets

__all__ = ["MaskFolderDataset"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _read_mask(path: Path, threshold: int) -> np.ndarray:
    """The mask file's pixels > `threshold` as (H, W) uint8 0/1; ImageReadError naming the file
    when it cannot be decoded."""
    try:
        with Image.open(path) as im:
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.int64)
                scale = 257 if im.mode.startswith("I;16") else 1
                return (arr > threshold * scale).astype(np.uint8)
            if im.mode != "L":
                im = im.convert("L")
            return (np.asarray(im) > threshold).astype(np.uint8)
    except Exception as e:  # Pillow raises many types for bad data
        raise ImageReadError(f"{path}: cannot be decoded as a mask ({str(e) or type(e).__name__})") from None


class MaskFolderDataset(Dataset):
    """One item per sub-folder of `directory` that contains an `images/` folder."""

    def __init__(
        self, directory: Union[str, Path], *, class_name: str = "object", threshold: int = 127
    ) -> None:
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"mask folder dataset directory not found: {self.directory}")
        self.threshold = int(threshold)
        self.class_names: list[str] = [class_name]
        self.category_ids: list[int] = [1]
        self.problems = ProblemLog()
        self._images: list[Path] = []
        self._masks: list[list[Path]] = []
        folders = sorted(p for p in self.directory.iterdir() if (p / "images").is_dir())
        for folder in folders:
            candidates = sorted(
                p for p in (folder / "images").iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES
            )
            preferred = [p for p in candidates if p.stem == folder.name]
            if preferred:
                candidates = preferred
            if len(candidates) != 1:
                kind = "missing_image" if not candidates else "malformed"
                detail = (
                    f"expected exactly one image (ideally {folder.name}.png), "
                    f"found {[p.name for p in candidates]}"
                )
                self.problems.add(kind, folder / "images", detail=detail)
                continue
            mask_dir = folder / "masks"
            masks = sorted(mask_dir.glob("*.png")) if mask_dir.is_dir() else []
            if not masks:
                self.problems.add("image_without_annotations", candidates[0], image_id=len(self._images))
            self._images.append(candidates[0])
            self._masks.append(masks)
        if not folders:
            raise UserError(f"{self.directory}: no '<id>/images/' folders found")
        self.image_ids: list[int] = list(range(len(self._images)))
        self._sizes: dict[int, tuple[int, int]] = {}

    @property
    def num_classes(self) -> int:
        return 1

    def __len__(self) -> int:
        return len(self._images)

    def file_name(self, index: int) -> str:
        return str(self._images[index].relative_to(self.directory))

    def num_annotations(self, index: int) -> int:
        """Number of mask files of item `index` (before dropping masks that are empty)."""
        return len(self._masks[index])

    def image_size(self, index: int) -> tuple[int, int]:
        if index not in self._sizes:
            path = self._images[index]
            if not path.is_file():
                raise FileNotFoundError(f"image file not found: {path} (image id {index})")
            self._sizes[index] = read_image_size(path)
        return self._sizes[index]

    def load_targets(self, index: int) -> tuple[Targets, torch.Tensor]:
        self.problems.raise_if_fatal()
        h, w = self.image_size(index)
        masks = []
        for path in self._masks[index]:
            m = _read_mask(path, self.threshold)
            if m.shape != (h, w):
                raise UserError(
                    f"mask {path} is {m.shape[0]}x{m.shape[1]} but its image (id {index}) is {h}x{w}"
                )
            if m.any():
                masks.append(m)
        if masks:
            mask_t = torch.from_numpy(np.stack(masks))
        else:
            mask_t = torch.zeros((0, h, w), dtype=torch.uint8)
        labels = torch.ones(len(masks), dtype=torch.int64)
        return Targets(masks_to_boxes(mask_t), labels, mask_t), torch.zeros((0, 4), dtype=torch.float32)

    def check_item(self, index: int, log: ProblemLog) -> None:
        """Record item `index`'s image and mask file problems (see the module docstring)."""
        size = check_image_file(self._images[index], log=log, image_id=index)
        for path in self._masks[index]:
            ids = {"image_id": index, "annotation_id": path.name}
            try:
                m = _read_mask(path, self.threshold)
            except ImageReadError as e:
                log.add("unreadable_image", path, **ids, detail=f"mask: {e}")
                continue
            if size is not None and m.shape != size:
                detail = f"the mask is {m.shape[0]}x{m.shape[1]} but its image is {size[0]}x{size[1]}"
                log.add("mask_size_mismatch", path, **ids, detail=detail)
            elif not m.any():
                log.add("zero_area", path, **ids, detail=f"no pixel above the threshold {self.threshold}")

    def __getitem__(self, index: int) -> Sample:
        self.problems.raise_if_fatal()
        path = self._images[index]
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path} (image id {index})")
        image = read_image(path, policy=STORED_PIXELS)
        self._sizes[index] = (image.shape[1], image.shape[2])
        targets, crowd = self.load_targets(index)
        return Sample(image, targets, index, self.file_name(index), crowd_boxes=crowd)

    def __repr__(self) -> str:
        return f"MaskFolderDataset({self.directory}, {len(self)} images)"
