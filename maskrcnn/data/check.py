"""Checking a dataset before it is trusted: what `maskrcnn check-data` reports and `maskrcnn train`
does before its first step.

A check has two parts, both recorded in one `ProblemLog` (`maskrcnn.data.problems`):

1. what reading the annotation files found (the dataset's `problems`, filled by its constructor:
   JSON structure, categories, ids, polygons, boxes); cheap, done by every process that builds the
   dataset;
2. what only the files show, item by item (`check_items`): each dataset that has the optional method
   `check_item(index, log)` records there its image file being missing, unreadable, of another
   size than its annotations say or too thin for any model (`check_image_file`; an aspect ratio
   over 100:1, `maskrcnn.image_limits`: fatal, so training never meets it), and what rasterising
   its annotations shows (masks that cover no pixel, masks of another size than the image). Images
   are not decoded in full when their header is enough: the size is read from the header, and a
   JPEG's data is decoded at 1/8 scale (still all of it, so a truncated file is found);
3. (`check-data` only, `duplicate_images`) items sharing an image file, or files of the same bytes.

A dataset without `problems` or `check_item` (the synthetic shapes, a user's own dataset class)
has nothing to report in that part. A new format plugs in by filling `self.problems` while it
parses (`ProblemLog.add(kind, file, image_id=..., annotation_id=..., detail=...)`) and giving itself
a `check_item` that calls `check_image_file` and adds its own checks.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from PIL import Image

from maskrcnn.data.problems import ProblemLog
from maskrcnn.files import ImageReadError, read_image_size
from maskrcnn.image_limits import image_shape_problem

__all__ = ["check_dataset_files", "check_image_file", "check_items", "dataset_problems", "duplicate_images"]


def check_image_file(
    path: Path,
    *,
    log: ProblemLog,
    image_id: Any = None,
    expected: Optional[tuple[int, int]] = None,
) -> Optional[tuple[int, int]]:
    """Record in `log` whether the image file `path` is missing, cannot be decoded, is too thin
    (`maskrcnn.image_limits`), or (when `expected` (height, width) is given) has another size;
    returns its (height, width) when its header can be read (even if its data cannot be decoded),
    else None."""
    path = Path(path)
    if not path.is_file():
        log.add("missing_image", path, image_id=image_id, detail="image file not found")
        return None
    try:
        height, width = read_image_size(path)
    except ImageReadError as e:
        log.add("unreadable_image", path, image_id=image_id, detail=str(e).removeprefix(f"{path}: "))
        return None
    thin = image_shape_problem(height, width)  # the aspect-ratio limit every command applies
    if thin is not None:
        log.add("image_too_thin", path, image_id=image_id, detail=thin[1])
    if expected is not None and (height, width) != tuple(expected):
        said = f"{expected[0]}x{expected[1]}"
        detail = f"the file is {height}x{width} (height x width) but the annotations say {said}"
        log.add("image_size_mismatch", path, image_id=image_id, detail=detail)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                if im.format == "JPEG":  # decoded at 1/8 scale, but every byte is read: truncation shows
                    im.draft("RGB" if im.mode == "RGB" else None, (max(1, width // 8), max(1, height // 8)))
                im.load()
    except Exception as e:  # Pillow raises many types for bad data; all mean "cannot be decoded"
        log.add(
            "unreadable_image",
            path,
            image_id=image_id,
            detail=f"cannot be decoded ({str(e) or type(e).__name__})",
        )
    return height, width


def check_items(
    dataset: Any, indices: Optional[Sequence[int]] = None, *, progress: bool = False
) -> ProblemLog:
    """The per-item file checks (`dataset.check_item`) of `indices` (default: every item), in item
    order, with a tqdm progress bar when `progress`."""
    log = ProblemLog()
    check_item = getattr(dataset, "check_item", None)
    if check_item is None:
        return log
    from tqdm import tqdm

    indices = range(len(dataset)) if indices is None else indices
    for index in tqdm(indices, desc="check data", unit="img", disable=not progress, dynamic_ncols=True):
        check_item(index, log)
    return log


def dataset_problems(dataset: Any) -> ProblemLog:
    """A copy of what reading the dataset's annotation files found (empty when it records nothing)."""
    log = ProblemLog()
    found = getattr(dataset, "problems", None)
    if isinstance(found, ProblemLog):
        log.extend(found)
    return log


def check_dataset_files(dataset: Any, *, progress: bool = False) -> ProblemLog:
    """Every problem of `dataset`: those found reading its annotation files, then the per-item
    checks of its files (see the module docstring)."""
    log = dataset_problems(dataset)
    log.extend(check_items(dataset, progress=progress))
    log.extend(duplicate_images(dataset, known=log))
    return log


def duplicate_images(dataset: Any, *, known: Optional[ProblemLog] = None) -> ProblemLog:
    """Notes for items whose image is the file of an earlier item (unless `known` has it already:
    the COCO reader notes its records' file names) or a file of the same bytes (a sha256 of each
    file: the checks just read them, so this is one more read from the page cache). Datasets
    without `image_path(index)` have nothing to compare."""
    import hashlib

    log = ProblemLog()
    image_path = getattr(dataset, "image_path", None)
    if image_path is None:
        return log
    ids = getattr(dataset, "image_ids", None)
    noted = {p.image_id for p in (known.problems if known else []) if p.kind == "duplicate_file_name"}
    first_of_path: dict[Path, int] = {}
    first: dict[str, Path] = {}  # digest -> the first file with it
    for index in range(len(dataset)):
        path = image_path(index)
        if path is None or not Path(path).is_file():
            continue  # missing files are reported by the item checks
        path, image_id = Path(path), ids[index] if ids is not None else index
        if path in first_of_path:
            if not noted & {image_id, first_of_path[path]}:  # the reader noted this pair already
                detail = f"also the image of image {first_of_path[path]}"
                log.add("duplicate_file_name", path, image_id=image_id, detail=detail)
            continue
        first_of_path[path] = image_id
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in first:
            detail = f"same bytes as {first[digest]}"
            log.add("duplicate_image_content", path, image_id=image_id, detail=detail)
        first.setdefault(digest, path)
    return log
