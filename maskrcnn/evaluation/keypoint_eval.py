"""What COCO keypoint AP needs besides records: the OKS sigmas, and keypoints that pycocotools can read.

`COCOeval(..., iouType="keypoints")` scores a detection against a ground-truth instance by their
object keypoint similarity (OKS), which weighs each keypoint's distance by its sigma. The sigmas
come from the model's config (`model.keypoints.oks_sigmas`, COCO's for COCO's 17 person keypoints;
`maskrcnn.data.keypoint_meta.oks_sigmas`), or for a results file from `--oks-sigmas` or the ground
truth's keypoint names. The ground-truth categories with keypoints are the ones scored; each of
their annotations needs `keypoints` (3 J numbers) and `num_keypoints`, and each record `keypoints`
(x, y, score per keypoint, 3 J numbers), or pycocotools fails deep inside with a shape error.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Real
from typing import Any, Optional

from pycocotools.coco import COCO

from ..config import KeypointConfig
from ..data.keypoint_meta import oks_sigmas
from ..errors import UserError

__all__ = ["check_keypoint_records", "keypoint_ground_truth", "parse_sigmas"]


def _is_flat_numbers(values: Any, length: int) -> bool:
    return (
        isinstance(values, list)
        and len(values) == length
        and all(isinstance(v, Real) and not isinstance(v, bool) for v in values)
    )


def keypoint_ground_truth(
    gt: COCO, *, where: str, sigmas: Optional[Sequence[float]] = None
) -> tuple[list[int], tuple[float, ...]]:
    """(the category ids to score, the OKS sigmas) of a ground truth with keypoints.

    Categories: those with `keypoints` names, else those whose annotations carry keypoints. J: the
    names' count, else the annotations' keypoints / 3. `sigmas`: given ones (checked against J),
    else COCO's for COCO person keypoints, else a UserError asking for them."""
    named = [c for c in gt.dataset["categories"] if c.get("keypoints")]
    if named:
        cat_ids = [int(c["id"]) for c in named]
        names = list(named[0]["keypoints"])
        num = len(names)
    else:
        cat_ids = sorted({int(a["category_id"]) for a in gt.dataset["annotations"] if "keypoints" in a})
        names = []
        first = next((a for a in gt.dataset["annotations"] if "keypoints" in a), None)
        num = (
            len(first["keypoints"]) // 3 if first is not None and isinstance(first["keypoints"], list) else 0
        )
    if not cat_ids or not num:
        raise UserError(f"{where}: the ground truth has no keypoints (no category names keypoints)")
    for a in gt.loadAnns(gt.getAnnIds(catIds=cat_ids)):
        if not _is_flat_numbers(a.get("keypoints"), 3 * num) or not isinstance(a.get("num_keypoints"), int):
            raise UserError(
                f"{where}: annotation {a['id']} needs 'keypoints' ({3 * num} numbers: x, y, v for "
                f"{num} keypoints) and 'num_keypoints' for keypoint AP"
            )
    if sigmas and len(sigmas) != num:
        raise UserError(f"{where}: {len(sigmas)} OKS sigmas given for the ground truth's {num} keypoints")
    config = KeypointConfig(names=tuple(names), oks_sigmas=tuple(float(s) for s in sigmas or ()))
    try:
        return cat_ids, oks_sigmas(config, num_keypoints=num)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def check_keypoint_records(records: list[dict], num_keypoints: int, where: str) -> None:
    """Every record's `keypoints` must be 3 * `num_keypoints` numbers (x, y, score per keypoint)."""
    for i, r in enumerate(records):
        if not _is_flat_numbers(r.get("keypoints"), 3 * num_keypoints):
            raise UserError(
                f"{where}: record {i}: keypoints must be {3 * num_keypoints} numbers (x, y, score for "
                f"each of the ground truth's {num_keypoints} keypoints)"
            )


def parse_sigmas(text: str) -> tuple[float, ...]:
    """`--oks-sigmas` ("0.026,0.025,...") -> floats; a UserError naming the option otherwise."""
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise UserError(f"--oks-sigmas {text!r}: expected comma-separated numbers") from None
    if not values or min(values) <= 0:
        raise UserError(f"--oks-sigmas {text!r}: expected positive numbers")
    return values
