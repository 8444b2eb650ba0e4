"""Inference on files: COCO result records, and `run_predictions`, which writes everything that
`maskrcnn predict` produces.

A COCO result record: {"image_id", "file_name", "category_id", "bbox": [x, y, w, h], "score",
"segmentation": {"size": [H, W], "counts": str}} (RLE with string counts), what
pycocotools' `COCO.loadRes` and COCOeval read; for a model with the keypoint branch also
"keypoints": [x1, y1, s1, ..., xJ, yJ, sJ], as in COCO keypoint results, with each keypoint's
score (its heatmap logit) in the place of the visibility (COCOeval reads only x and y of results).
Keypoint coordinates are continuous pixel coordinates, as the model's (and torchvision's) are.

Output layout of `run_predictions(model, items, out)`:

    out/predictions.json               COCO results for every image input (written atomically)
    out/overlays/<name>.jpg|.png       masks, boxes, labels and keypoints (with the model's skeleton)
                                       drawn on each image (JPEG for JPEG inputs)
    out/masks/<name>_<k>_<class>.png   with save_masks: detection k's mask, 0 / 255
    out/<video>.mp4                    each video with its detections drawn on every frame
    out/<video>_frames.json            {"video", "fps", "width", "height", "frames": [{"frame",
                                       "time", "detections": [records without image_id/file_name]}]}

<name> is the input's file name (its path below a folder input) without its suffix, made unique.
An input that cannot be read is skipped and listed in the report's failures; the rest go on.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image

from .data.keypoint_meta import keypoint_skeleton
from .errors import UserError
from .files import atomic_write_json
from .inputs import ImageReadError, InputItem, as_image_tensor, load_image
from .model import MaskRCNN
from .predictor import Predictor, resolve_classes
from .structures import Detections

__all__ = [
    "PredictReport",
    "as_image_tensor",
    "detection_records",
    "detections_to_coco",
    "encode_masks",
    "image_id_for",
    "load_image",
    "model_skeleton",
    "predict_files",
    "resolve_classes",
    "run_predictions",
]


def image_id_for(path: str | Path, index: int) -> int:
    """COCO-style names (000000397133.jpg) give their number; other files their position (1-based)."""
    stem = Path(path).stem
    return int(stem) if stem.isdigit() else index + 1


def model_skeleton(config) -> tuple[tuple[int, int], ...]:
    """The skeleton (1-based keypoint pairs) overlays draw for a model's config: its
    `model.keypoints.skeleton`, COCO's for its 17 person keypoints; () without the keypoint branch."""
    heads = config.model.roi_heads if config is not None else None
    if heads is None or not heads.keypoint_on:
        return ()
    return keypoint_skeleton(config.model.keypoints, num_keypoints=heads.num_keypoints)


def encode_masks(masks: torch.Tensor) -> list[dict]:
    """(D, H, W) bool -> RLEs with string counts."""
    if len(masks) == 0:
        return []
    array = np.asfortranarray(masks.permute(1, 2, 0).cpu().numpy().astype(np.uint8))
    rles = mask_util.encode(array)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def detection_records(det: Detections, *, category_ids: Sequence[int] | None = None) -> list[dict]:
    """One {"category_id", "bbox" (xywh), "score", "segmentation" (RLE), "keypoints" ([x, y, score]
    × J)} per detection; without "segmentation" for a model that has no mask branch, without
    "keypoints" for one without the keypoint branch."""
    boxes = det.boxes.detach().cpu()
    xywh = torch.cat((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), dim=1).tolist()
    labels = det.labels.cpu().tolist()
    scores = det.scores.detach().cpu().tolist()
    records = []
    for box, label, score in zip(xywh, labels, scores):
        category = category_ids[label - 1] if category_ids else label
        records.append(
            {
                "category_id": int(category),
                "bbox": [round(v, 3) for v in box],
                "score": round(float(score), 5),
            }
        )
    if det.masks is not None:
        for record, rle in zip(records, encode_masks(det.masks)):
            record["segmentation"] = rle
    if det.keypoints is not None:
        flat = det.keypoints.detach().cpu().flatten(1).tolist()
        for record, values in zip(records, flat):
            record["keypoints"] = [round(v, 3) for v in values]
    return records


def detections_to_coco(
    det: Detections, *, image_id: int, file_name: str, category_ids: Sequence[int] | None = None
) -> list[dict]:
    return [
        {"image_id": image_id, "file_name": file_name, **r}
        for r in detection_records(det, category_ids=category_ids)
    ]


def predict_files(
    model, paths: list[str | Path], *, batch_size: int = 1, device: str = "cpu", progress: bool = True
) -> list[dict]:
    """Run the model over image files; return all COCO result records (no other outputs)."""
    items = [InputItem(Path(p), Path(p).name, "image") for p in paths]
    report = run_predictions(
        model, items, None, batch_size=batch_size, device=device, overlays=False, progress=progress
    )
    if report.failures:
        raise ImageReadError("; ".join(reason for _, reason in report.failures))
    return report.records


# ---- the prediction run ------------------------------------------------------------------------


@dataclass
class PredictReport:
    records: list[dict] = field(default_factory=list)  # COCO results of the images
    images: int = 0  # images predicted
    videos: list[tuple[Path, Path, int]] = field(default_factory=list)  # (video, frames JSON, frames)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)


def _safe(text: str) -> str:
    """A class name as part of a file name: word characters, dots and dashes ("traffic-light")."""
    return re.sub(r"[^\w.-]+", "-", text).strip("-.") or "x"


def _path_part(text: str) -> str:
    """A file or folder name kept as it is, less characters that some file systems refuse."""
    return re.sub(r'[\x00-\x1f\\:*?"<>|]+', "_", text).strip(" .") or "_"


class _Run:
    """State of one run: the model, output folder, options and the names already handed out."""

    def __init__(
        self,
        predictor: Predictor,
        out: Path | None,
        *,
        score_thresh: float | None,
        classes: list[str] | None,
        overlays: bool,
        save_masks: bool,
        progress: bool,
    ):
        self.predictor, self.out = predictor, out
        self.score_thresh, self.classes = score_thresh, classes
        self.overlays, self.save_masks, self.progress = overlays and out is not None, save_masks, progress
        self.class_names = predictor.class_names
        self.category_ids = predictor.category_ids
        self.skeleton = model_skeleton(predictor.config)
        self.used: set[str] = set()
        self.report = PredictReport()

    def base(self, name: str) -> str:
        """Output name for an input: its relative path without suffix, unique within the run."""
        parts = PurePosixPath(name).with_suffix("").parts
        stem = "/".join(_path_part(p) for p in parts if p not in ("", ".", ".."))
        base, n = stem or "input", 2
        while base in self.used:
            base, n = f"{stem}_{n}", n + 1
        self.used.add(base)
        return base

    def predict(self, images: list[torch.Tensor]) -> list[Detections]:
        return self.predictor.predict(images, score_thresh=self.score_thresh, classes=self.classes)

    def draw(self, image: torch.Tensor, det: Detections) -> Image.Image:
        from .visualize import draw_detections

        return draw_detections(image, det, class_names=self.class_names, skeleton=self.skeleton)

    def write_masks(self, det: Detections, prefix: str) -> None:
        assert self.out is not None
        path = self.out / "masks" / prefix
        path.parent.mkdir(parents=True, exist_ok=True)
        masks = det.masks.cpu().numpy()
        for k, label in enumerate(det.labels.cpu().tolist()):
            name = self.class_names[label - 1] if self.class_names else f"class{label}"
            Image.fromarray(masks[k].astype(np.uint8) * 255).save(f"{path}_{k}_{_safe(name)}.png")

    def images(self, items: list[InputItem], batch_size: int) -> None:
        from tqdm import tqdm

        with tqdm(total=len(items), desc="predict", unit="img", disable=not self.progress) as bar:
            for start in range(0, len(items), batch_size):
                loaded: list[tuple[int, InputItem, torch.Tensor]] = []
                for index, item in enumerate(items[start : start + batch_size], start):
                    try:
                        loaded.append((index, item, load_image(item.path)))
                    except ImageReadError as e:
                        self.fail(str(item.path), str(e))
                dets = self.predict([image for _, _, image in loaded]) if loaded else []
                for (index, item, image), det in zip(loaded, dets):
                    self.image_outputs(index, item, image, det)
                bar.update(min(batch_size, len(items) - start))

    def image_outputs(self, index: int, item: InputItem, image: torch.Tensor, det: Detections) -> None:
        self.report.records += detections_to_coco(
            det, image_id=image_id_for(item.path, index), file_name=item.name, category_ids=self.category_ids
        )
        self.report.images += 1
        if self.out is None or not (self.overlays or self.save_masks):
            return
        base = self.base(item.name)
        if self.overlays:
            jpeg = item.path.suffix.lower() in (".jpg", ".jpeg", ".jfif")
            path = self.out / "overlays" / f"{base}{'.jpg' if jpeg else '.png'}"
            path.parent.mkdir(parents=True, exist_ok=True)
            self.draw(image, det).save(path, **({"quality": 92} if jpeg else {}))
        if self.save_masks:
            self.write_masks(det, base)

    def video(self, item: InputItem, batch_size: int) -> None:
        from tqdm import tqdm

        from .video import VideoReader, VideoWriter

        assert self.out is not None, "videos need an output folder"
        base = self.base(item.name)
        video_path, json_path = self.out / f"{base}.mp4", self.out / f"{base}_frames.json"
        video_path.parent.mkdir(parents=True, exist_ok=True)
        result: dict = {"video": item.name, "fps": None, "width": None, "height": None, "frames": []}
        try:
            with VideoReader(item.path) as reader:
                result["fps"] = float(reader.fps)
                bar = tqdm(
                    total=reader.frame_count or None,
                    desc=item.name,
                    unit="frame",
                    disable=not self.progress,
                    leave=False,
                )
                with VideoWriter(video_path, fps=reader.fps) as writer, bar:
                    pending: list[tuple[int, float, np.ndarray]] = []
                    for frame in reader:
                        pending.append(frame)
                        if len(pending) == batch_size:
                            self.video_batch(pending, writer, result, base)
                            bar.update(len(pending))
                            pending = []
                    if pending:
                        self.video_batch(pending, writer, result, base)
                        bar.update(len(pending))
        except ValueError as e:
            self.fail(str(item.path), str(e))
        if result["frames"]:  # what was decoded before a failure is kept
            atomic_write_json(json_path, result)
            self.report.videos.append((video_path, json_path, len(result["frames"])))

    def video_batch(self, pending: list, writer, result: dict, base: str) -> None:
        frames = [torch.from_numpy(rgb).permute(2, 0, 1) for _, _, rgb in pending]
        dets = self.predict([f.float().div_(255.0) for f in frames])
        for (index, time, rgb), frame, det in zip(pending, frames, dets):
            result["height"], result["width"] = rgb.shape[:2]
            detections = detection_records(det, category_ids=self.category_ids)
            result["frames"].append({"frame": index, "time": round(time, 6), "detections": detections})
            writer.write(np.asarray(self.draw(frame, det)))
            if self.save_masks:
                self.write_masks(det, f"{base}/{index:06d}")

    def fail(self, name: str, reason: str) -> None:
        """Record a skipped input; say so at once on stderr when showing progress."""
        from tqdm import tqdm

        self.report.failures.append((name, reason))
        if self.progress:
            message = reason if reason.startswith(name) else f"{name}: {reason}"
            tqdm.write(f"skipped {message}", file=sys.stderr)


def run_predictions(
    model: Predictor | MaskRCNN,
    items: Sequence[InputItem],
    out: str | Path | None,
    *,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    score_thresh: float | None = None,
    classes: Iterable[str] | None = None,
    save_masks: bool = False,
    overlays: bool = True,
    progress: bool = True,
) -> PredictReport:
    """Predict on image and video inputs and write the outputs described in the module docstring
    (predictions.json included, when `out` is given). Unreadable inputs are skipped and listed in
    the returned report's failures. `score_thresh` replaces the model's own threshold for this run;
    `classes` (names or category ids) keeps only those classes. `device` moves the predictor."""
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    if score_thresh is not None and not 0.0 <= score_thresh <= 1.0:
        raise UserError(f"score threshold must be in [0, 1], got {score_thresh}")
    predictor = model if isinstance(model, Predictor) else Predictor(model, device=device or "cpu")
    if device is not None:
        predictor.to(device)
    wanted = None
    if classes is not None:
        wanted = list(classes)
        predictor.labels_for(wanted)  # unknown classes fail here, before any work
    out_dir = Path(out) if out is not None else None
    run = _Run(
        predictor,
        out_dir,
        score_thresh=score_thresh,
        classes=wanted,
        overlays=overlays,
        save_masks=save_masks,
        progress=progress,
    )
    with torch.inference_mode():
        run.images([i for i in items if i.kind == "image"], batch_size)
        for item in (i for i in items if i.kind == "video"):
            run.video(item, batch_size)
    if out_dir is not None:
        atomic_write_json(out_dir / "predictions.json", run.report.records)
    return run.report
