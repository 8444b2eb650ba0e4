"""Error analysis in the manner of TIDE (Bolya et al., ECCV 2020): where the AP of a detector goes.

Every false positive at IoU `pos_thresh` (0.5) is given one error type, and every ground truth
that no detection found and no error can fix is a miss:
    Cls   right place (IoU >= .5 with a ground truth of another class), wrong class;
    Loc   right class, box or mask off (.1 <= IoU <= .5 with a ground truth of its class);
    Dupe  right class and place, but the ground truth was already taken by a higher score;
    Bkg   background taken for an object (IoU <= .1 with every ground truth);
    Both  wrong class and off (none of the above);
    Miss  a ground truth that no detection found and no Cls / Loc error points at.
The dAP of a type is the AP (at IoU .5, in points: 0..100) gained when its errors alone are fixed:
a Cls or Loc detection becomes a true positive of the ground truth it points at (only the highest
scoring of those that point at the same free ground truth; the others and those pointing at a taken
one are removed), Dupe / Bkg / Both detections are removed, and missed ground truth is dropped from
the count. Two more: FalsePos, the AP with every false positive scored below every true positive,
and FalseNeg, the AP with every unmatched ground truth dropped.

The numbers are those of tidecv 1.0.1 (the reference of the tests) on the same records, with its
rules kept where they differ from COCOeval: at most `max_dets` (100) detections per image over all
classes, a detection matches a ground truth of its class at IoU >= pos_thresh greedily by score,
detections covering a crowd region of their class (intersection over detection area > pos_thresh)
are ignored in the AP but still typed, and a class with detections but no ground truth has AP 0 in
the mean. Box IoU and mask IoU are pycocotools' (`mask.iou`).

`analyze_errors(gt, records)` -> {iou type: `TypeErrors`}; `TypeErrors.summary()` is what
metrics.json holds under "errors": {"Cls": dAP, ..., "FalseNeg": dAP, "AP50": AP, "counts": {type:
n}, "per_class": {category: {type: dAP}}}; `.examples` the typed errors, for the gallery of errors.html.
Shapes: D detections of an image, G its ground truth.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

__all__ = ["ERROR_TYPES", "SPECIAL_TYPES", "ErrorExample", "TypeErrors", "analyze_errors", "format_errors"]

ERROR_TYPES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
SPECIAL_TYPES = ("FalsePos", "FalseNeg")
_GEOMETRY = {"bbox": "bbox", "segm": "segmentation"}
_RECALLS = np.arange(101) / 100


@dataclass(frozen=True)
class ErrorExample:
    """One typed error: the detection (index into the records; None for Miss), the ground-truth
    annotation id it is about (None for Bkg and a Both without any overlap), its score and IoU."""

    kind: str
    image_id: int
    record: Optional[int]
    annotation: Optional[int]
    score: float
    iou: float


@dataclass
class _Error:
    kind: str
    pred: Optional[int]  # record index
    cls: Optional[int]  # the class its data point is in before fixing (None: not in the AP)
    score: float
    gt: Optional[int] = None  # annotation id
    gt_cls: Optional[int] = None
    gt_free: bool = False  # Cls / Loc: the ground truth it points at was not matched


@dataclass
class TypeErrors:
    """The error analysis of one IoU type (see the module docstring)."""

    ap: float
    daps: dict[str, float]
    per_class: dict[str, dict[str, float]]
    counts: dict[str, int]
    examples: list[ErrorExample] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: self.daps[k] for k in (*ERROR_TYPES, *SPECIAL_TYPES)}
        return {**out, "AP50": self.ap, "counts": dict(self.counts), "per_class": self.per_class}


def _ap(points: dict[int, tuple[float, bool]], num_gt: int) -> float:
    """AP in points of (score, is true) data points against `num_gt`: the 101-point interpolated
    precision-recall integral, with tidecv's nearest-recall lookup (searchsorted, side left)."""
    if num_gt == 0 or not points:
        return 0.0
    scores = np.array([p[0] for p in points.values()], dtype=np.float64)
    correct = np.array([p[1] for p in points.values()], dtype=bool)[np.argsort(-scores, kind="stable")]
    tp = np.cumsum(correct)
    precision = tp / np.arange(1, len(tp) + 1)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(tp / num_gt, _RECALLS, side="left")  # (101,) the first point at each recall
    at_recalls = np.where(idx < len(precision), precision[np.minimum(idx, len(precision) - 1)], 0.0)
    return float(at_recalls.sum()) / len(_RECALLS) * 100


class _Run:
    """The matching and typing of one IoU type over all images (tidecv's rules)."""

    def __init__(
        self, gt: COCO, records: Sequence[dict], iou_type: str, pos: float, bg: float, max_dets: int
    ):
        self.pos, self.bg, self.key = pos, bg, _GEOMETRY[iou_type]
        self.points: dict[int, dict[int, tuple[float, bool]]] = defaultdict(dict)  # class -> id -> point
        self.num_gt: dict[int, int] = defaultdict(int)
        self.errors: list[_Error] = []
        self.false_negatives: dict[int, int] = defaultdict(int)
        self.ious: dict[int, float] = {}  # record index -> IoU of the error's ground truth
        self.records = records
        by_image: dict[int, list[int]] = defaultdict(list)
        for i, r in enumerate(records):
            by_image[r["image_id"]].append(i)
        for image_id in dict.fromkeys(img["id"] for img in gt.dataset["images"]):  # in file order
            anns = gt.imgToAnns.get(image_id, [])
            self._image(
                gt,
                [a for a in anns if not a.get("iscrowd")],
                [a for a in anns if a.get("iscrowd")],
                by_image.get(image_id, []),
                max_dets,
            )

    def _geometry(self, gt: COCO, ann: dict) -> Any:
        return ann["bbox"] if self.key == "bbox" else gt.annToRLE(ann)

    def _image(self, gt: COCO, truth: list[dict], crowd: list[dict], preds: list[int], max_dets: int) -> None:
        for a in truth:
            self.num_gt[a["category_id"]] += 1
        if not preds:
            for a in truth:
                self.false_negatives[a["category_id"]] += 1
                self.errors.append(_Error("Miss", None, None, 0.0, a["id"], a["category_id"]))
            return
        recs = self.records
        preds = sorted(preds, key=lambda i: -recs[i]["score"])[:max_dets]
        dets = [recs[i][self.key] for i in preds]
        pred_cls = np.array([recs[i]["category_id"] for i in preds])
        gt_cls = np.array([a["category_id"] for a in truth])
        iou = np.zeros((len(preds), len(truth)))
        if truth:
            iou = np.asarray(mask_utils.iou(dets, [self._geometry(gt, a) for a in truth], [0] * len(truth)))
            iou = iou.reshape(len(preds), len(truth))
        same = pred_cls[:, None] == gt_cls[None, :]
        cls_iou = iou * same
        used: list[Optional[bool]] = [False] * len(preds)  # None: ignored (on a crowd region)
        gt_match = [-1] * len(truth)  # the position of the detection that took it
        buffer = cls_iou.copy()
        for d in range(len(preds) if truth else 0):
            g = int(np.argmax(buffer[d]))
            if buffer[d, g] >= self.pos:
                used[d], gt_match[g] = True, d
                buffer[:, g] = 0
        for region in crowd:
            crowd_iou = np.asarray(mask_utils.iou(dets, [self._geometry(gt, region)], [1])).reshape(-1)
            for d in range(len(preds)):
                if not used[d] and crowd_iou[d] > self.pos and region["category_id"] == pred_cls[d]:
                    used[d] = None
        for d, i in enumerate(preds):
            if used[d] is not None:
                self.points[int(pred_cls[d])][i] = (float(recs[i]["score"]), bool(used[d]))
        taken = np.array([m >= 0 for m in gt_match], dtype=bool)[None, :]
        pointed: set[int] = set()
        for d, i in enumerate(preds):
            if used[d] is True:
                continue
            self._type(d, i, used[d] is None, truth, iou, same, cls_iou, taken, gt_match, preds, pointed)
        for g, a in enumerate(truth):
            if gt_match[g] < 0:
                self.false_negatives[a["category_id"]] += 1
                if g not in pointed:
                    self.errors.append(_Error("Miss", None, None, 0.0, a["id"], a["category_id"]))

    def _type(self, d, i, ignored, truth, iou, same, cls_iou, taken, gt_match, preds, pointed) -> None:
        """Type the unmatched (or ignored) detection at position d (record i)."""
        rec = self.records[i]
        cls = None if ignored else int(rec["category_id"])

        def add(kind: str, g: Optional[int] = None, value: float = 0.0) -> None:
            gt_id = truth[g]["id"] if g is not None else None
            gt_cls = truth[g]["category_id"] if g is not None else None
            free = g is not None and kind in ("Cls", "Loc") and not taken[0, g]
            if free:
                pointed.add(g)
            self.errors.append(_Error(kind, i, cls, float(rec["score"]), gt_id, gt_cls, free))
            self.ious[i] = float(value)

        if not truth:
            return add("Bkg")
        g = int(np.argmax(cls_iou[d]))
        if self.bg <= cls_iou[d, g] <= self.pos:
            return add("Loc", g, cls_iou[d, g])
        other = iou[d] * ~same[d]
        g = int(np.argmax(other))
        if other[g] >= self.pos:
            return add("Cls", g, other[g])
        dupe = iou[d] * same[d] * taken[0]
        g = int(np.argmax(dupe))
        if dupe[g] >= self.pos:
            return add("Dupe", g, dupe[g])
        g = int(np.argmax(iou[d]))
        if iou[d, g] <= self.bg:
            return add("Bkg", g if iou[d, g] > 0 else None, iou[d, g])
        return add("Both", g, iou[d, g])

    def best_of_ground_truth(self) -> dict[int, int]:
        """Annotation id -> the record of the highest-scoring Cls / Loc error pointing at it while
        free (the first of equal scores, in score order): the one a fix makes a true positive."""
        best: dict[int, tuple[float, int]] = {}
        for e in self.errors:
            if e.gt_free and (e.gt not in best or best[e.gt][0] < e.score):
                best[e.gt] = (e.score, e.pred)
        return {g: p for g, (_, p) in best.items()}

    def fixed(
        self, kinds: Sequence[str] = (), *, perfect_precision: bool = False, no_false_negatives: bool = False
    ):
        """(points, num_gt) with the errors of `kinds` fixed (see the module docstring)."""
        num_gt = dict(self.num_gt)
        points: dict[int, dict[int, tuple[float, bool]]] = defaultdict(dict)
        best = self.best_of_ground_truth() if {"Cls", "Loc"} & set(kinds) else {}
        for e in self.errors:
            cls, point = e.cls, (None if e.cls is None else (e.score, False))
            if e.kind in kinds:
                cls, point = None, None
                if e.kind == "Miss":
                    num_gt[e.gt_cls] -= 1
                elif e.gt_free and best[e.gt] == e.pred:
                    cls = e.gt_cls if e.kind == "Cls" else int(self.records[e.pred]["category_id"])
                    point = (e.score, True)
            if point is not None:
                points[cls][e.pred] = (0.0, False) if perfect_precision else point
        for k in num_gt:
            for i, (score, correct) in self.points.get(k, {}).items():
                if correct:
                    points[k][i] = (1.0, True) if perfect_precision else (score, True)
        if no_false_negatives:
            num_gt = {k: v - self.false_negatives.get(k, 0) for k, v in num_gt.items()}
        return points, num_gt


def _class_aps(points: dict, num_gt: dict) -> dict[int, float]:
    """Class -> AP for the classes that have data points or ground truth."""
    classes = list(num_gt) + [k for k in points if k not in num_gt]
    return {k: _ap(points.get(k, {}), num_gt.get(k, 0)) for k in classes if points.get(k) or num_gt.get(k, 0)}


def _mean(aps: dict[int, float]) -> float:
    return sum(aps.values()) / len(aps) if aps else 0.0


def _analyze(
    gt: COCO, records: Sequence[dict], iou_type: str, pos: float, bg: float, max_dets: int
) -> TypeErrors:
    run = _Run(gt, records, iou_type, pos, bg, max_dets)
    base = _class_aps(run.points, dict(run.num_gt))
    ap = _mean(base)
    fixes = {k: _class_aps(*run.fixed((k,))) for k in ERROR_TYPES}
    fixes["FalsePos"] = _class_aps(*run.fixed(perfect_precision=True))
    fixes["FalseNeg"] = _class_aps(*run.fixed(no_false_negatives=True))
    daps = {k: (max(_mean(v) - ap, 0.0) if k in ERROR_TYPES else _mean(v) - ap) for k, v in fixes.items()}
    names: dict[int, str] = {}
    for k in base:
        name = str(gt.cats[k]["name"]) if k in gt.cats else str(k)
        names[k] = f"{name} ({k})" if name in names.values() else name
    per_class = {
        names[k]: {
            t: (max(v.get(k, 0.0) - a, 0.0) if t in ERROR_TYPES else v.get(k, 0.0) - a)
            for t, v in fixes.items()
        }
        for k, a in base.items()
    }
    counts = {t: sum(1 for e in run.errors if e.kind == t) for t in ERROR_TYPES}
    examples = [
        ErrorExample(
            e.kind,
            int(records[e.pred]["image_id"]) if e.pred is not None else int(gt.anns[e.gt]["image_id"]),
            e.pred,
            e.gt,
            e.score,
            run.ious.get(e.pred, 0.0) if e.pred is not None else 0.0,
        )
        for e in run.errors
    ]
    return TypeErrors(ap=ap, daps=daps, per_class=per_class, counts=counts, examples=examples)


def analyze_errors(
    gt: COCO,
    records: Sequence[dict],
    *,
    iou_types: Sequence[str] = ("bbox", "segm"),
    pos_thresh: float = 0.5,
    bg_thresh: float = 0.1,
    max_dets: int = 100,
) -> dict[str, TypeErrors]:
    """The error analysis of each IoU type (bbox, segm) of checked result records (see
    `maskrcnn.evaluation.coco_eval`: RLE masks) against the ground truth."""
    return {t: _analyze(gt, records, t, pos_thresh, bg_thresh, max_dets) for t in iou_types if t in _GEOMETRY}


def format_errors(errors: dict[str, dict]) -> str:
    """The short table of the printed report: one row per IoU type, dAP per error type."""
    from .report import _table

    columns = (*ERROR_TYPES, *SPECIAL_TYPES)
    rows = [["dAP (IoU .5)", "AP50", *columns]]
    rows += [[t, f"{e['AP50']:.2f}", *(f"{e[c]:.2f}" for c in columns)] for t, e in errors.items()]
    return _table(rows)
