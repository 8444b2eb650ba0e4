"""COCO evaluation (pycocotools' COCOeval) of result records and of a model on a dataset.

`evaluate_coco_results` runs COCOeval for each IoU type as pycocotools does (loadRes, evaluate,
accumulate, summarize) and returns, per IoU type:
    the 12 summary stats by name (AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl),
    floats in [0, 1]; None where COCOeval reports -1 (no ground truth in that area range);
    "per_class": {category name: AP at IoU .5:.95, area all, 100 detections}, for the categories
    with ground truth (a category without any has no AP and is left out);
    "pr": {"recall": 101 recall points, "precision": {"0.50": [...], "0.75": [...]}}, precision at
    IoU .5 and .75 (area all, 100 detections) averaged over the categories with ground truth.

COCOeval matches detections to the ground truth with `maskrcnn.evaluation.matching.CrowdedCOCOeval`:
pycocotools' own results, in numpy instead of its Python loops, so an image with thousands of
instances takes seconds, not minutes.

As in torchvision's and detectron2's evaluators, each IoU type is given only its own field of the
records: "bbox" for box AP and "segmentation" for mask AP, so pycocotools takes the area of a
detection (for APs/APm/APl) from its mask, not from its box.

Keypoint AP ("keypoints", records with "keypoints": x, y, score per keypoint, as COCO's keypoint
results): COCOeval with iouType "keypoints" and the OKS sigmas of the model or the options (see
`maskrcnn.evaluation.keypoint_eval`), on the ground-truth categories with keypoints. As for the other
types it gets only the records' "keypoints", so a detection's area is that of its keypoints' extent
(pycocotools' loadRes rule, as in torchvision's evaluator and COCO's keypoint results format). Its
stats are pycocotools' 10 (KEYPOINT_STAT_NAMES: no small objects, at most 20 detections per image);
"per_class" and "pr" are taken at that detection limit.

The metrics' names and their reports (`format_table`, `format_per_class`, `write_report`) are in
`maskrcnn.evaluation.report`; this module re-exports them.
"""

from __future__ import annotations

import contextlib
import copy
import io
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from ..data import keypoint_meta
from ..data.coco import read_json
from ..data.dataset import dataset_keypoints
from ..distributed import (
    DistInfo,
    HeldError,
    JobProgress,
    Share,
    gather_in_order,
    my_positions,
    process_device,
)
from ..errors import UserError
from ..image_limits import check_image_shape
from .keypoint_eval import check_keypoint_records, keypoint_ground_truth
from .matching import CrowdedCOCOeval
from .report import (
    IOU_TYPES,
    KEYPOINT_STAT_NAMES,
    STAT_NAMES,
    format_per_class,
    format_table,
    write_report,
)

__all__ = [
    "IOU_TYPES",
    "KEYPOINT_STAT_NAMES",
    "STAT_NAMES",
    "default_iou_types",
    "evaluate_coco_results",
    "evaluate_model",
    "format_per_class",
    "format_table",
    "load_ground_truth",
    "load_results",
    "write_report",
]

PR_IOUS = (0.5, 0.75)
_FIELD = {"bbox": "bbox", "segm": "segmentation", "keypoints": "keypoints"}


def default_iou_types(records: Sequence[dict]) -> tuple[str, ...]:
    """Instance results: bbox and segm. Keypoint results (records with "keypoints"): keypoints and
    the types whose field the records have too (bbox, segm)."""
    if not records or "keypoints" not in records[0]:
        return ("bbox", "segm")
    return tuple(t for t in IOU_TYPES if _FIELD[t] in records[0])


def _quiet(verbose: bool) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def load_ground_truth(gt: Union[COCO, str, Path]) -> COCO:
    """A pycocotools COCO object (returned as is) or a COCO instances JSON file -> COCO."""
    if isinstance(gt, COCO):
        return gt
    path = Path(gt)
    data = read_json(path, "ground-truth annotation")
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("images"), list)
        or not isinstance(data.get("categories"), list)
    ):
        raise UserError(f"{path}: a COCO ground-truth file needs 'images' and 'categories' lists")
    data.setdefault("annotations", [])
    for i, a in enumerate(data["annotations"]):
        missing = [k for k in ("id", "image_id", "category_id", "area") if k not in a]
        if missing:
            raise UserError(f"{path}: annotation {a.get('id', f'#{i}')} is missing {missing}")
    coco = COCO()
    coco.dataset = data
    with _quiet(verbose=False):
        coco.createIndex()
    return coco


def load_results(results: Union[Sequence[dict], str, Path]) -> list[dict]:
    """COCO result records from a list or a JSON file (a list of records)."""
    if not isinstance(results, (str, Path)):
        return list(results)
    path = Path(results)
    data = read_json(path, "results")
    if not isinstance(data, list):
        raise UserError(f"{path}: COCO results must be a JSON list of records, got {type(data).__name__}")
    return data


def _check_records(records: list[dict], gt: COCO, iou_types: Sequence[str], where: str) -> list[dict]:
    """Validate records against the ground truth; polygon or list-count masks become compressed RLE."""
    need = ("image_id", "category_id", "score", *(_FIELD[t] for t in iou_types))
    out = []
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise UserError(f"{where}: record {i} is a {type(r).__name__}, not a dict")
        missing = [k for k in need if k not in r]
        if missing:
            raise UserError(f"{where}: record {i} is missing {missing}")
        if r["image_id"] not in gt.imgs:
            raise UserError(f"{where}: record {i} has image_id {r['image_id']!r}, not in the ground truth")
        if r["category_id"] not in gt.cats:
            cat = r["category_id"]
            raise UserError(f"{where}: record {i} has category_id {cat!r}, not in the ground truth")
        if "bbox" in need and (not isinstance(r["bbox"], (list, tuple)) or len(r["bbox"]) != 4):
            raise UserError(f"{where}: record {i}: bbox must be [x, y, w, h], got {r['bbox']!r}")
        seg = r.get("segmentation")
        if "segmentation" not in need:
            pass
        elif not (isinstance(seg, list) or (isinstance(seg, dict) and {"size", "counts"} <= set(seg))):
            raise UserError(f"{where}: record {i}: segmentation must be an RLE dict or polygons")
        elif isinstance(seg, list) or isinstance(seg["counts"], list):
            img = gt.imgs[r["image_id"]]
            rles = mask_utils.frPyObjects(seg, img["height"], img["width"])
            r = {**r, "segmentation": mask_utils.merge(rles) if isinstance(rles, list) else rles}
        out.append(r)
    return out


def _load_res(gt: COCO, records: list[dict]) -> COCO:
    if records:
        return gt.loadRes(records)
    res = COCO()  # loadRes cannot take an empty list
    res.dataset = {
        "images": list(gt.dataset["images"]),
        "annotations": [],
        "categories": copy.deepcopy(gt.dataset["categories"]),
    }
    with _quiet(verbose=False):
        res.createIndex()
    return res


def _evaluate_one(
    gt: COCO, records: list[dict], iou_type: str, keypoints: Optional[tuple[list[int], tuple[float, ...]]]
) -> dict:
    """COCOeval of one IoU type; `keypoints`: (category ids, OKS sigmas) for "keypoints"."""
    key = _FIELD[iou_type]
    subset = [
        {"image_id": r["image_id"], "category_id": r["category_id"], "score": r["score"], key: r[key]}
        for r in records
    ]
    coco_eval = CrowdedCOCOeval(gt, _load_res(gt, subset), iou_type)  # pycocotools' results, faster
    names = STAT_NAMES
    if iou_type == "keypoints" and keypoints is not None:
        coco_eval.params.catIds, sigmas = keypoints
        coco_eval.params.kpt_oks_sigmas = np.array(sigmas)
        names = KEYPOINT_STAT_NAMES
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    out: dict[str, Any] = {n: (float(v) if v > -1 else None) for n, v in zip(names, coco_eval.stats)}

    params = coco_eval.params
    precision = coco_eval.eval["precision"]  # (T iou thresholds, R recall points, K classes, A areas, M)
    area, dets = list(params.areaRngLbl).index("all"), len(params.maxDets) - 1  # 100 (20 for keypoints)
    per_class: dict[str, float] = {}
    for k, cat_id in enumerate(params.catIds):
        p = precision[:, :, k, area, dets]
        p = p[p > -1]
        if p.size:
            name = str(gt.cats[cat_id]["name"])
            per_class[f"{name} ({cat_id})" if name in per_class else name] = float(np.mean(p))
    out["per_class"] = per_class

    curves = {}
    for thr in PR_IOUS:
        t = int(np.argmin(np.abs(params.iouThrs - thr)))
        p = precision[t, :, :, area, dets]  # (R, K)
        valid = (p > -1).all(axis=0)
        curves[f"{thr:.2f}"] = p[:, valid].mean(axis=1).tolist() if valid.any() else []
    out["pr"] = {"recall": [float(r) for r in params.recThrs], "precision": curves}
    return out


def evaluate_coco_results(
    gt: Union[COCO, str, Path],
    results: Union[Sequence[dict], str, Path],
    *,
    iou_types: Optional[Sequence[str]] = None,
    oks_sigmas: Optional[Sequence[float]] = None,
    verbose: bool = False,
) -> dict:
    """COCO metrics of result records against ground truth (see the module docstring).

    `gt`: a COCO object or an instances JSON path; `results`: records or a results JSON path.
    `iou_types`: default `default_iou_types(records)`. `oks_sigmas`: keypoint AP's sigmas (default:
    COCO's for COCO person keypoints; required for other keypoint sets).
    Returns {iou_type: {...}, "num_images", "num_detections"}. `verbose` lets pycocotools print.
    """
    where = str(results) if isinstance(results, (str, Path)) else "results"
    raw = load_results(results)
    iou_types = default_iou_types(raw) if iou_types is None else tuple(iou_types)
    unknown = [t for t in iou_types if t not in _FIELD]
    if unknown or not iou_types:
        raise UserError(f"iou_types must be a non-empty subset of {IOU_TYPES}, got {tuple(iou_types)}")
    coco_gt = load_ground_truth(gt)
    records = _check_records(raw, coco_gt, iou_types, where)
    keypoints = None
    if "keypoints" in iou_types:
        gt_where = str(gt) if isinstance(gt, (str, Path)) else "ground truth"
        keypoints = keypoint_ground_truth(coco_gt, where=gt_where, sigmas=oks_sigmas)
        check_keypoint_records(records, len(keypoints[1]), where)
    metrics: dict[str, Any] = {}
    with _quiet(verbose):
        for iou_type in iou_types:
            metrics[iou_type] = _evaluate_one(coco_gt, records, iou_type, keypoints)
    metrics["num_images"] = len(coco_gt.getImgIds())
    metrics["num_detections"] = len(records)
    return metrics


def _ground_truth_of(dataset: Any, tmp_dir: Path) -> COCO:
    from ..data.coco import CocoDataset
    from ..data.specs import write_coco_json

    if isinstance(dataset, CocoDataset):  # the original file: crowd regions are kept for COCOeval
        return load_ground_truth(dataset.annotation_file)
    return load_ground_truth(write_coco_json(dataset, tmp_dir / "ground_truth.json"))


def evaluate_model(
    model: Any,
    dataset: Any,
    *,
    batch_size: int = 1,
    device: str = "cpu",
    progress: bool = True,
    iou_types: Optional[Sequence[str]] = None,
    dist: Optional[DistInfo] = None,
    shares: Optional[list[Share]] = None,
    tile: Optional[Any] = None,
) -> tuple[dict, list[dict]]:
    """Predict over `dataset` with `model.predict` and COCO-evaluate; returns (metrics, result records).

    Record image ids are the samples' image ids; category ids are `dataset.category_ids[label - 1]`
    when the dataset has them, else the labels. Ground truth: a CocoDataset's own annotation file,
    for other datasets the file `maskrcnn.data.write_coco_json` writes (in a temporary folder).
    `iou_types` (default): bbox, segm when the model has masks, keypoints when it has the keypoint
    branch and the dataset has keypoints (with the OKS sigmas of the model's config).

    `dist` (`maskrcnn.distributed.init_distributed` under torchrun): the batches go to the processes
    in turn, each predicts its own (on `cuda:LOCAL_RANK` for a CUDA device), and rank 0 gathers the
    records in dataset order and evaluates them, the same records and metrics as one process with
    the same batch size; the other processes return (None, None). `shares`, a list, receives on
    rank 0 what each process ran (`maskrcnn.distributed.Share`). `tile`: tiled inference
    (`maskrcnn.tiling.TileSettings`).
    """
    import time

    import torch

    from ..data.dataset import check_dataset
    from ..predictor import Predictor

    if batch_size < 1:
        raise UserError(f"batch_size must be >= 1, got {batch_size}")
    dataset = check_dataset(dataset, what="the evaluation dataset")
    sigmas = _keypoint_sigmas(model, dataset)
    category_ids: Optional[list[int]] = list(dataset.category_ids) or None
    model_names, data_names = getattr(model, "class_names", None), dataset.class_names
    if model_names and data_names and list(model_names) != list(data_names):
        warnings.warn(
            f"the model's classes {list(model_names)[:5]}... differ from the dataset's "
            f"{list(data_names)[:5]}...; labels are mapped by position",
            stacklevel=2,
        )
    info = dist or DistInfo()
    device = process_device(str(device), info)
    predictor = model.to(device) if isinstance(model, Predictor) else Predictor(model, device=device)
    n = len(dataset)
    parts: dict[int, list[dict]] = {}  # records by batch
    share, started = Share(info.rank, device, [], 0.0), time.perf_counter()
    batches = my_positions(-(-n // batch_size), info)  # this process's share
    with torch.no_grad(), JobProgress(total=n, desc="evaluate", unit="img", show=progress, info=info) as bar:
        with HeldError(info) as held:  # under torchrun: raised by rank 0 after the gathering
            for k in batches:
                parts[k] = []  # the part being run: where a held error stands in the input order
                samples = [dataset[i] for i in range(k * batch_size, min(n, (k + 1) * batch_size))]
                share.inputs += [s.file_name for s in samples]
                parts[k] = _records(predictor, samples, category_ids, tile=tile)
                bar.update(len(samples))
        share.seconds = time.perf_counter() - started
        gathered = gather_in_order(parts, share, info, held=held)
    if gathered is None:  # not rank 0
        return None, None  # type: ignore[return-value]
    records = [record for part in gathered[0] for record in part]
    if shares is not None and info.enabled:
        shares.extend(gathered[1])
    with tempfile.TemporaryDirectory(prefix="maskrcnn-eval-") as tmp:
        gt = _ground_truth_of(dataset, Path(tmp))
    if iou_types is None:
        iou_types = ["bbox", "segm"] + (["keypoints"] if sigmas is not None else [])
    if records and "segmentation" not in records[0]:  # a model without a mask branch
        iou_types = [t for t in iou_types if _FIELD[t] != "segmentation"] or list(iou_types)
    return evaluate_coco_results(gt, records, iou_types=iou_types, oks_sigmas=sigmas), records


def _records(
    predictor: Any, samples: list, category_ids: Optional[list[int]], *, tile: Optional[Any] = None
) -> list[dict]:
    """The result records of one batch of dataset samples (`tile`: tiled inference)."""
    from ..predict_records import detections_to_coco

    records: list[dict] = []
    num_labels = len(category_ids) if category_ids else None
    input_size = getattr(predictor, "input_size", None)
    for sample in samples:  # an image too thin for the model: an error naming its file
        h, w = (int(v) for v in sample.image.shape[-2:])
        resized = input_size(h, w) if input_size is not None and min(h, w) > 0 else None
        check_image_shape(h, w, name=sample.file_name, resized=resized)
    options = {} if tile is None else {"tile": tile}
    for sample, det in zip(samples, predictor.predict([s.image for s in samples], **options)):
        labels = det.labels.cpu()
        if len(labels) and (labels.min() < 1 or (num_labels and labels.max() > num_labels)):
            allowed = f"1..{num_labels}" if num_labels else ">= 1"
            raise UserError(
                f"model predicted labels {labels.min().item()}..{labels.max().item()} on "
                f"{sample.file_name}; the dataset's labels are {allowed}"
            )
        records += detections_to_coco(
            det, image_id=int(sample.image_id), file_name=sample.file_name, category_ids=category_ids
        )
    return records


def _keypoint_sigmas(model: Any, dataset: Any) -> Optional[tuple[float, ...]]:
    """The OKS sigmas when the model has the keypoint branch and the dataset keypoints (resolved
    before predicting, so that a custom keypoint set without sigmas fails at once); else None."""
    cfg = getattr(model, "config", None)
    if cfg is None or not cfg.model.roi_heads.keypoint_on:
        return None
    num_data, num_model = dataset_keypoints(dataset)[0], cfg.model.roi_heads.num_keypoints
    if not num_data:
        warnings.warn("the evaluation dataset has no keypoints: no keypoint AP", stacklevel=3)
        return None
    if num_data != num_model:
        raise UserError(f"the model predicts {num_model} keypoints, the evaluation dataset has {num_data}")
    return keypoint_meta.oks_sigmas(cfg.model.keypoints, num_keypoints=num_model)
