"""Reading the records of a COCO file: checked, fixed, and every problem recorded.

`read_coco_records(data, where, log)` walks the parsed JSON once and returns what `CocoDataset`
serves. Nothing is skipped silently and nothing stops at the first problem: each one is added to
the `ProblemLog` (`maskrcnn.data.problems`) with the file, the image id and the annotation id.

- fatal (the record is left out, and the dataset refuses to be used until the file is fixed):
  a record that is not what COCO says (missing key, wrong type, non-finite number, an odd number
  of polygon coordinates, an RLE whose size or counts do not fit the image), a duplicate image,
  annotation or category id, an annotation of an unknown category or of an image the file does not
  list;
- fixed, the same way for training and `check-data` and as the other polygon formats do
  (`maskrcnn.data.outlines.checked_polygon`): a polygon with fewer than 3 points, without area or
  entirely outside the image is dropped, one partly outside is clipped to it (a `bbox` field
  reaching past the image is reported the same way: masks, and the boxes made from them, always
  lie inside); an annotation left without a polygon is dropped;
- note: an image without annotations (kept as a background image).

Only the top level (not a JSON object, no `images` or `categories` list) raises a UserError at once:
such a file has no records to check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real
from typing import Any, NamedTuple, Optional

import numpy as np

from maskrcnn.data.box_agreement import bbox_disagreement
from maskrcnn.data.outlines import checked_polygon
from maskrcnn.data.problems import ProblemLog
from maskrcnn.errors import UserError

__all__ = [
    "CocoAnnotation",
    "CocoRecords",
    "coordinates",
    "finite_number",
    "read_coco_records",
    "rle_string_counts",
]

MAX_SIDE = 1 << 20  # an image side beyond this is not a real image's
_JSON_NUMBERS = (int, float)  # what json.load gives for numbers (a bool is not one of them)


class CocoAnnotation(NamedTuple):
    id: Any
    category_id: int
    crowd: bool
    segmentation: Any  # polygons (checked, clipped, >= 3 points each) or a checked RLE dict
    keypoints: Optional[list]


@dataclass
class CocoRecords:
    categories: list[dict] = field(default_factory=list)  # the original category records, id order
    names: dict[int, str] = field(default_factory=dict)  # category id -> name
    images: dict[int, dict] = field(default_factory=dict)  # image id -> file_name, height, width
    annotations: dict[int, list[CocoAnnotation]] = field(default_factory=dict)  # per image id
    keypoint_names: list[str] = field(default_factory=list)
    skeleton: list[tuple[int, int]] = field(default_factory=list)
    num_keypoints: int = 0


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return type(v) in _JSON_NUMBERS or (isinstance(v, Real) and not isinstance(v, bool))


def finite_number(value: Any) -> float | None:
    """`value` as a float when it is a finite number (not a bool), else None (NaN, infinities and
    integers too large for a float included)."""
    if not _is_number(value):
        return None
    try:
        v = float(value)
    except (OverflowError, ValueError, TypeError):
        return None
    return v if math.isfinite(v) else None


def coordinates(values: Any) -> tuple[np.ndarray, str | None]:
    """A polygon's flat [x0, y0, x1, y1, ...] from a JSON file as a float64 array and None, or
    (an empty array, what is wrong with it: not a list, not finite numbers, an odd count)."""
    if not isinstance(values, list):
        return np.zeros(0), f"a polygon must be a list of coordinates, got {type(values).__name__}"
    coords = None
    if all(type(v) in _JSON_NUMBERS for v in values):  # the common case, checked in one go
        try:
            coords = np.array(values, dtype=np.float64)
        except OverflowError:  # an integer too large for a float
            coords = None
    if coords is None or not np.isfinite(coords).all():
        bad = next((v for v in values if finite_number(v) is None), None)
        return np.zeros(0), f"polygon coordinates must be finite numbers, got {bad!r:.40}"
    if len(coords) % 2:
        return np.zeros(0), f"polygon has an odd number of coordinates ({len(coords)})"
    return coords, None


def rle_string_counts(counts: str) -> list[int] | None:
    """The run lengths of a compressed RLE string (pycocotools' `rleFrString`, in Python so that a
    malformed string is reported instead of read past its end), or None when it is malformed."""
    runs: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                return None
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0:
            return None
        runs.append(x)
    return runs


def _rle_problem(seg: dict, height: int, width: int) -> str | None:
    if "counts" not in seg or "size" not in seg:
        return f"RLE segmentation needs 'counts' and 'size', has {sorted(map(str, seg))}"
    size = seg["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
        return f"RLE 'size' must be [height, width], got {size!r}"
    if size != [height, width]:
        return f"RLE size {size} does not match the image size [{height}, {width}]"
    counts = seg["counts"]
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts):
            return "uncompressed RLE counts must be non-negative integers"
        runs = counts
    elif isinstance(counts, (str, bytes)):
        text = counts.decode("latin-1") if isinstance(counts, bytes) else counts
        runs = rle_string_counts(text)
        if runs is None:
            return "compressed RLE counts are not a valid RLE string"
    else:
        return f"RLE counts must be a string or a list, got {type(counts).__name__}"
    if sum(runs) != height * width:
        return f"RLE counts sum to {sum(runs)}, expected {height * width} (height x width)"
    return None


def _keypoints_problem(kps: Any, num_keypoints: int) -> str | None:
    """What is wrong with an annotation's flat [x, y, v, ...] keypoints, or None if valid."""
    if not isinstance(kps, list) or not all(_is_number(v) for v in kps):
        return "keypoints must be a flat list of numbers [x1, y1, v1, x2, y2, v2, ...]"
    if len(kps) != 3 * num_keypoints:
        return f"keypoints has {len(kps)} values, expected {3 * num_keypoints} (x, y, v for {num_keypoints})"
    if any(finite_number(v) is None for v in kps):
        return "keypoint coordinates must be finite numbers"
    bad = [v for v in kps[2::3] if v not in (0, 1, 2)]
    if bad:
        return f"keypoint visibility must be 0, 1 or 2, got {bad[0]!r}"
    return None


def _category_keypoints(out: CocoRecords, where: str, log: ProblemLog) -> None:
    """The keypoint names and skeleton of the categories that have `keypoints` (all must agree)."""
    for c in out.categories:
        if "keypoints" not in c:
            continue
        names, skeleton = c["keypoints"], c.get("skeleton") or []
        what = f"category {c['id']} ({c['name']})"
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            log.add("malformed", where, detail=f"{what}: 'keypoints' must be a list of keypoint names")
            continue
        pairs_ok = isinstance(skeleton, list) and all(
            isinstance(p, list) and len(p) == 2 and all(_is_int(v) and 1 <= v <= len(names) for v in p)
            for p in skeleton
        )
        if not pairs_ok:
            detail = f"{what}: 'skeleton' must be pairs of 1-based keypoint indices in 1..{len(names)}"
            log.add("malformed", where, detail=detail)
            continue
        if out.keypoint_names and out.keypoint_names != names:
            detail = f"{what}: keypoints {names} differ from another category's {out.keypoint_names}"
            log.add("malformed", where, detail=detail)
        elif not out.keypoint_names:
            out.keypoint_names, out.skeleton = list(names), [(a, b) for a, b in skeleton]
    out.num_keypoints = len(out.keypoint_names)


def _read_categories(records: list, out: CocoRecords, where: str, log: ProblemLog) -> None:
    for i, c in enumerate(records):
        cid = c.get("id") if isinstance(c, dict) else None
        if not _is_int(cid) or not isinstance(c.get("name"), str):
            log.add(
                "malformed",
                where,
                detail=f"categories[{i}] needs an integer 'id' and a string 'name': {c!r:.80}",
            )
        elif cid in out.names:
            detail = f"category id {cid} is used twice ({out.names[cid]!r} and {c['name']!r})"
            log.add("duplicate_category_id", where, detail=detail)
        else:
            out.names[cid] = c["name"]
            keys = ("id", "name", "supercategory", "keypoints", "skeleton")
            out.categories.append({k: c[k] for k in keys if k in c})
    out.categories.sort(key=lambda c: c["id"])
    _category_keypoints(out, where, log)


def _read_images(records: list, out: CocoRecords, where: str, log: ProblemLog) -> set:
    """Fill out.images; returns the ids of image records that were malformed (already reported)."""
    bad: set = set()
    named: dict[str, int] = {}  # file name -> the first image id listing it
    for i, im in enumerate(records):
        iid = im.get("id") if isinstance(im, dict) else None
        if not _is_int(iid):
            log.add("malformed", where, detail=f"images[{i}] needs an integer 'id': {im!r:.80}")
            continue
        name, h, w = im.get("file_name"), im.get("height"), im.get("width")
        if not (isinstance(name, str) and name) or not all(_is_int(v) and 0 < v <= MAX_SIDE for v in (h, w)):
            detail = (
                f"an image needs a 'file_name' and a 'height' and 'width' in 1..{MAX_SIDE}: "
                f"file_name={name!r}, height={h!r}, width={w!r}"
            )
            log.add("malformed", where, image_id=iid, detail=detail)
            bad.add(iid)
        elif iid in out.images:
            detail = f"image id {iid} is listed twice ({out.images[iid]['file_name']} and {name})"
            log.add("duplicate_image_id", where, image_id=iid, detail=detail)
        else:
            out.images[iid] = {"file_name": name, "height": h, "width": w}
            out.annotations[iid] = []
            if name in named:
                detail = f"file_name {name} is also image {named[name]}'s"
                log.add("duplicate_file_name", where, image_id=iid, detail=detail)
            named.setdefault(name, iid)
    return bad


def _bbox_problem(bbox: Any) -> str | None:
    ok = isinstance(bbox, list) and len(bbox) == 4 and all(finite_number(v) is not None for v in bbox)
    if not ok:
        return f"'bbox' must be 4 finite numbers [x, y, width, height], got {bbox!r:.80}"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"'bbox' width and height must be >= 0, got {bbox}"
    return None


def _polygons(seg: list, ids: dict, width: int, height: int, where: str, log: ProblemLog):
    """The polygons to rasterise (checked and repaired by `maskrcnn.data.outlines.checked_polygon`:
    fewer than 3 points, no area or nothing inside the image: dropped; partly outside: clipped), or
    None when the annotation is malformed or left without a polygon (reported either way)."""
    parsed = []
    for j, values in enumerate(seg):
        coords, problem = coordinates(values)
        if problem:
            log.add("malformed", where, **ids, detail=f"polygon {j}: {problem}")
            return None
        parsed.append(coords)
    if not seg:
        log.add("zero_area", where, **ids, detail="the segmentation is an empty list of polygons")
        return None
    kept = []
    for j, coords in enumerate(parsed):

        def report(kind: str, detail: str, j: int = j) -> None:
            log.add(kind, where, **ids, detail=f"polygon {j}: {detail}")

        points = coords.reshape(-1, 2)
        checked = checked_polygon(
            points, width, height, where=f"{where} (annotation {ids['annotation_id']})", report=report
        )
        if checked is not None:
            kept.append(checked.ravel().tolist())
    return kept or None  # none left: each polygon's fate is reported, and the annotation is dropped


def _read_annotation(
    i: int, a: Any, out: CocoRecords, seen: set, bad_images: set, where: str, log: ProblemLog
) -> None:
    if not isinstance(a, dict):
        log.add("malformed", where, detail=f"annotations[{i}] is not an object: {a!r:.80}")
        return
    aid = a.get("id")
    ids: dict = {"annotation_id": aid if _is_int(aid) or isinstance(aid, str) else f"#{i}"}
    image_id = a.get("image_id")
    if _is_int(image_id):
        ids["image_id"] = image_id
    missing = [k for k in ("image_id", "category_id", "segmentation") if k not in a]
    if missing:
        log.add("malformed", where, **ids, detail=f"the annotation has no {', '.join(map(repr, missing))}")
        return
    if "id" in a and not (_is_int(aid) or isinstance(aid, str)):
        log.add("malformed", where, **ids, detail=f"'id' must be an integer, got {aid!r:.40}")
        return
    if aid is not None and aid in seen:
        log.add("duplicate_annotation_id", where, **ids, detail=f"annotation id {aid} is used twice")
        return
    seen.add(aid)
    cid = a["category_id"]
    if not _is_int(image_id) or not _is_int(cid):
        detail = f"'image_id' and 'category_id' must be integers, got {image_id!r:.40} and {cid!r:.40}"
        log.add("malformed", where, **ids, detail=detail)
        return
    if image_id in bad_images:
        return  # its image record is malformed, and reported
    img = out.images.get(image_id)
    if img is None:
        log.add("unknown_image", where, **ids, detail=f"unknown image id {image_id}")
        return
    if cid not in out.names:
        log.add("unknown_category", where, **ids, detail=f"unknown category id {cid}")
        return
    crowd = a.get("iscrowd", 0)
    if crowd not in (0, 1):
        log.add("malformed", where, **ids, detail=f"'iscrowd' must be 0 or 1, got {crowd!r:.40}")
        return
    problem = _bbox_problem(a["bbox"]) if "bbox" in a else None
    if problem:
        log.add("malformed", where, **ids, detail=problem)
        return
    h, w = img["height"], img["width"]
    seg = a["segmentation"]
    if isinstance(seg, dict):
        problem = _rle_problem(seg, h, w)
        if problem:
            log.add("malformed", where, **ids, detail=problem)
            return
    elif isinstance(seg, list):
        seg = _polygons(seg, ids, w, h, where, log)
        if seg is None:
            return
    else:
        detail = f"segmentation must be a polygon list or an RLE dict, got {type(seg).__name__}"
        log.add("malformed", where, **ids, detail=detail)
        return
    disagreement = bbox_disagreement(a["bbox"], seg, h, w) if "bbox" in a and not crowd else None
    if disagreement:
        log.add("bbox_disagrees_with_mask", where, **ids, detail=disagreement)
    if "bbox" in a and isinstance(a["segmentation"], dict):  # a polygon outside is reported above
        x, y, bw, bh = a["bbox"]
        if x < 0 or y < 0 or x + bw > w or y + bh > h:
            detail = f"bbox {a['bbox']} reaches past the {w}x{h} image (the mask and its box lie inside)"
            log.add("box_outside_image", where, **ids, detail=detail)
    kps = a.get("keypoints")
    if kps == [] and not out.num_keypoints:  # an empty list in a file without keypoints
        kps = None
    if kps is not None:
        if not out.num_keypoints and isinstance(kps, list) and len(kps) >= 3:
            out.num_keypoints = len(kps) // 3
        problem = _keypoints_problem(kps, out.num_keypoints)
        if problem:
            log.add("malformed", where, **ids, detail=problem)
            return
    out.annotations[image_id].append(CocoAnnotation(aid, cid, bool(crowd), seg, kps))


def read_coco_records(data: Any, where: str, log: ProblemLog) -> CocoRecords:
    """The categories, images and annotations of a parsed COCO file (see the module docstring)."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: a COCO file is a JSON object with 'images' and 'categories' lists")
    for key in ("images", "categories"):
        if not isinstance(data.get(key), list):
            raise UserError(f"{where}: a COCO file needs an '{key}' list")
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise UserError(f"{where}: 'annotations' must be a list, got {type(annotations).__name__}")
    out = CocoRecords()
    _read_categories(data["categories"], out, where, log)
    bad_images = _read_images(data["images"], out, where, log)
    seen: set = set()
    for i, a in enumerate(annotations):
        _read_annotation(i, a, out, seen, bad_images, where, log)
    listed = {a.get("image_id") for a in annotations if isinstance(a, dict) and _is_int(a.get("image_id"))}
    for iid in out.images:
        if iid not in listed:
            log.add("image_without_annotations", where, image_id=iid, detail=out.images[iid]["file_name"])
    return out
