"""COCO's matching of detections to ground truth, in numpy: the same results as pycocotools'
`COCOeval.evaluateImg` in a time that stays practical on crowded images.

pycocotools matches with three nested Python loops (IoU thresholds T x detections D x ground truth
G, for every image, category and area range): about 3 µs per step, so one image holding 2000
instances and 100 detections per class spends most of a minute there. `CrowdedCOCOeval` is COCOeval
with `evaluateImg` done per detection over all of G at once (T x D numpy steps), by the same rule:

- detections in score order (stable), ground truth with the regular instances before the ignored
  ones (crowd regions, instances outside the area range), the IoUs as `computeIoU` gave them;
- at each threshold t (at most 1 - 1e-10), each detection takes, among the instances not yet taken
  (crowd regions can be taken again) whose IoU with it is >= t, the regular one of highest IoU (the
  last of equal ones, as the loop's `>=` updates do), else the ignored one of highest IoU;
- a detection that matched an ignored instance, or none while outside the area range, is ignored.

Everything else (`evaluate`, `computeIoU`, `accumulate`, `summarize`) is pycocotools' own.
tests/evaluation/test_matching.py checks the per-image results equal pycocotools' on real data.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from pycocotools.cocoeval import COCOeval

__all__ = ["CrowdedCOCOeval", "match_detections"]


def match_detections(
    ious: np.ndarray,
    thresholds: np.ndarray,
    *,
    gt_ignore: np.ndarray,
    gt_crowd: np.ndarray,
    dt_ids: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy COCO matching (module docstring). `ious` (D, G): detections in score order, ground truth
    regular first; `gt_ignore`, `gt_crowd` (G,) bool; `dt_ids` (D,) the detections' ids (> 0).
    -> (matched ground-truth index per threshold and detection (T, D), -1 for none; the detection id
    each ground truth was taken by (T, G), 0 for none)."""
    num_dt, num_gt = ious.shape
    matched = np.full((len(thresholds), num_dt), -1, dtype=np.int64)
    taken_by = np.zeros((len(thresholds), num_gt))
    regular = ~gt_ignore
    reusable = gt_crowd.astype(bool)
    for t, threshold in enumerate(thresholds):
        limit = min(float(threshold), 1 - 1e-10)
        free = np.ones(num_gt, dtype=bool)
        for d in range(num_dt):
            row = ious[d]
            good = free & (row >= limit)
            if not good.any():
                continue
            section = good & regular
            if not section.any():
                section = good
            best = np.where(section, row, -np.inf)
            m = int(np.flatnonzero(best == best.max())[-1])
            matched[t, d] = m
            taken_by[t, m] = dt_ids[d]
            free[m] = bool(reusable[m])
    return matched, taken_by


class CrowdedCOCOeval(COCOeval):
    """pycocotools' COCOeval with the numpy matching of `match_detections` (module docstring)."""

    def evaluateImg(self, imgId: Any, catId: Any, aRng: list, maxDet: int) -> Optional[dict]:  # noqa: N802, N803
        params = self.params
        if params.useCats:
            gts, dts = self._gts[imgId, catId], self._dts[imgId, catId]
        else:
            gts = [g for c in params.catIds for g in self._gts[imgId, c]]
            dts = [d for c in params.catIds for d in self._dts[imgId, c]]
        if not gts and not dts:
            return None
        low, high = aRng
        for g in gts:  # pycocotools keeps this flag on the annotations; so does this
            g["_ignore"] = int(bool(g["ignore"]) or g["area"] < low or g["area"] > high)
        gt_order = np.argsort([g["_ignore"] for g in gts], kind="mergesort")
        gts = [gts[i] for i in gt_order]
        dt_order = np.argsort([-d["score"] for d in dts], kind="mergesort")[:maxDet]
        dts = [dts[i] for i in dt_order]
        gt_ignore = np.array([g["_ignore"] for g in gts], dtype=bool)
        num_t = len(params.iouThrs)
        dt_matches = np.zeros((num_t, len(dts)))
        gt_matches = np.zeros((num_t, len(gts)))
        dt_ignore = np.zeros((num_t, len(dts)), dtype=bool)
        ious = self.ious[imgId, catId]
        if len(ious):
            ious = np.asarray(ious)[:, gt_order][: len(dts)]  # computeIoU's rows follow the score order
            crowd = np.array([int(g["iscrowd"]) for g in gts], dtype=bool)
            dt_ids = np.array([d["id"] for d in dts])
            matched, gt_matches = match_detections(
                ious, params.iouThrs, gt_ignore=gt_ignore, gt_crowd=crowd, dt_ids=dt_ids
            )
            hit = matched >= 0
            gt_ids = np.array([g["id"] for g in gts])
            dt_matches[hit] = gt_ids[matched[hit]]
            dt_ignore[hit] = gt_ignore[matched[hit]]
        outside = np.array([d["area"] < low or d["area"] > high for d in dts], dtype=bool)[None, :]
        dt_ignore = dt_ignore | ((dt_matches == 0) & outside)
        return {
            "image_id": imgId,
            "category_id": catId,
            "aRng": aRng,
            "maxDet": maxDet,
            "dtIds": [d["id"] for d in dts],
            "gtIds": [g["id"] for g in gts],
            "dtMatches": dt_matches,
            "gtMatches": gt_matches,
            "dtScores": [d["score"] for d in dts],
            "gtIgnore": gt_ignore.astype(int),
            "dtIgnore": dt_ignore,
        }
