"""Inference on files: `run_predictions`, which writes everything that `maskrcnn predict` produces.

The records it returns and writes are COCO result records (`maskrcnn.predict_records`: one per
detection, with the image's id and file name, box, score, mask RLE and keypoints).

Output layout of `run_predictions(model, items, out)`:

    out/predictions.json               COCO results for every image input (written atomically)
    out/overlays/<name>.jpg|.png       masks, boxes, labels and keypoints (with the model's skeleton)
                                       drawn on each image (JPEG for JPEG inputs)
    out/masks/<name>_<k>_<class>.png   with save_masks: detection k's mask, 0 / 255
    out/<video>.mp4                    each video with its detections drawn on every frame
    out/<video>_frames.json            {"video", "fps", "width", "height", "frames": [{"frame",
                                       "time", "detections": [records without image_id/file_name]}]}
                                       (with track: "tracks" too, see below)
    out/tracks.json                    with track and image inputs: the tracks of each folder's images

Tracking (`track=True`, `maskrcnn.tracking`): the frames of each video, and the images of each
folder (in name order: an image sequence), are linked into tracks; every detection record gets
"track_id" (0: a low-scoring detection that continues no track), overlays and videos draw each track
in its own colour, and each video's JSON (each folder's entry of tracks.json) gets "tracks": per
track its id, category_id, class, first and last frame, length, detections and mean score.

<name> is the input's file name (its path below a folder input) without its suffix, made unique
(in input order: names depend only on the inputs given, never on which of them fail).
An input that cannot be read is skipped and listed in the report's failures; the rest go on.

Under torchrun (`dist`, see `maskrcnn.distributed`) the batches of images go to the processes in
turn (batch k to rank k mod WORLD_SIZE) and whole videos likewise; each process writes the
overlays, masks and videos of its own inputs, rank 0 gathers the records and writes the one
predictions.json, the same file, byte for byte, as a single process with the same batch size,
and shards.json: which process ran which inputs, where, for how long.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from time import perf_counter

import numpy as np
import torch
from PIL import Image

from .data.keypoint_meta import keypoint_skeleton
from .distributed import (
    DistInfo,
    HeldError,
    JobProgress,
    Share,
    gather_in_order,
    my_positions,
    process_device,
)
from .errors import UserError
from .files import AS_DISPLAYED, atomic_save_image, atomic_write_json
from .image_limits import DEFAULT_MAX_PIXELS, read_checked_image
from .inputs import ImageReadError, InputItem, as_image_tensor, load_image
from .model import MaskRCNN
from .predict_records import detection_records, detections_to_coco, encode_masks, image_id_for
from .predictor import Predictor, resolve_classes
from .structures import Detections
from .tiling import TileSettings
from .tracking import Tracker

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


def model_skeleton(config) -> tuple[tuple[int, int], ...]:
    """The skeleton (1-based keypoint pairs) overlays draw for a model's config: its
    `model.keypoints.skeleton`, COCO's for its 17 person keypoints; () without the keypoint branch."""
    heads = config.model.roi_heads if config is not None else None
    if heads is None or not heads.keypoint_on:
        return ()
    return keypoint_skeleton(config.model.keypoints, num_keypoints=heads.num_keypoints)


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
    tracks: dict[str, int] = field(default_factory=dict)  # with track: video or folder -> its tracks
    shares: list[Share] = field(default_factory=list)  # under torchrun, on rank 0: each process's inputs

    def add(self, part: PredictReport) -> None:
        """Append the results of a later part of the inputs (a batch, a video)."""
        self.records += part.records
        self.images += part.images
        self.videos += part.videos
        self.failures += part.failures
        self.tracks.update(part.tracks)


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
        track: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        tile: TileSettings | None = None,
    ):
        self.predictor, self.out, self.max_pixels, self.tile = predictor, out, max_pixels, tile
        self.score_thresh, self.classes = score_thresh, classes
        self.overlays, self.save_masks, self.progress = overlays and out is not None, save_masks, progress
        self.class_names = predictor.class_names
        self.category_ids = predictor.category_ids
        self.skeleton = model_skeleton(predictor.config)
        self.names: dict[tuple[str, int], str] = {}  # ("image" | "video", index) -> output name
        self.report = PredictReport()  # of the part of the inputs being run
        self.parts: dict[int, PredictReport] = {}  # by position in the inputs' order
        self.ran: list[str] = []  # the names of the inputs this process ran
        self.track = track
        self.trackers: dict[str, Tracker] = {}  # with track: image folder -> its tracker

    def name_outputs(self, images: list[InputItem], videos: list[InputItem]) -> None:
        """Give every input that has output files its name (relative path without suffix) in input
        order, unique within the run, in every process alike."""
        used: set[str] = set()
        named = images if self.out is not None and (self.overlays or self.save_masks) else []
        keyed = [(("image", i), item) for i, item in enumerate(named)]
        keyed += [(("video", j), item) for j, item in enumerate(videos if self.out is not None else [])]
        for key, item in keyed:
            parts = PurePosixPath(item.name).with_suffix("").parts
            stem = "/".join(_path_part(p) for p in parts if p not in ("", ".", ".."))
            base, n = stem or "input", 2
            while base in used:
                base, n = f"{stem}_{n}", n + 1
            used.add(base)
            self.names[key] = base

    def start_part(self, position: int) -> None:
        self.report = self.parts[position] = PredictReport()

    def predict(self, images: list[torch.Tensor]) -> list[Detections]:
        options = {} if self.tile is None else {"tile": self.tile, "progress": self.progress}
        return self.predictor.predict(images, score_thresh=self.score_thresh, classes=self.classes, **options)

    def draw(self, image: torch.Tensor, det: Detections, track_ids=None) -> Image.Image:
        from .visualize import draw_detections

        return draw_detections(
            image, det, class_names=self.class_names, skeleton=self.skeleton, track_ids=track_ids
        )

    def tracked(self, tracker: Tracker, det: Detections, records: list[dict], **frame) -> list[int]:
        """Link `det` to `tracker`'s tracks: each record gets its "track_id"; -> the ids."""
        ids = tracker.update(det.boxes.cpu(), det.scores.cpu(), det.labels.cpu(), **frame).tolist()
        for record, track_id in zip(records, ids):
            record["track_id"] = int(track_id)
        return ids

    def track_summary(self, tracker: Tracker) -> list[dict]:
        return tracker.summary(class_names=self.class_names, category_ids=self.category_ids)

    def write_masks(self, det: Detections, prefix: str) -> None:
        assert self.out is not None
        path = self.out / "masks" / prefix
        path.parent.mkdir(parents=True, exist_ok=True)
        crops = det.mask_crops.to("cpu")  # one image-sized plane at a time, not D of them
        for k, label in enumerate(det.labels.cpu().tolist()):
            name = self.class_names[label - 1] if self.class_names else f"class{label}"
            plane = crops.plane(k).numpy()
            atomic_save_image(f"{path}_{k}_{_safe(name)}.png", Image.fromarray(plane.astype(np.uint8) * 255))

    def images(self, items: list[InputItem], batch_size: int, batches: range, bar: JobProgress) -> None:
        """Run the batches `batches` (numbers of batches of `batch_size` of `items`)."""
        for k in batches:
            self.start_part(k)
            start = k * batch_size
            self.ran += [item.name for item in items[start : start + batch_size]]
            loaded: list[tuple[int, InputItem, torch.Tensor]] = []
            for index, item in enumerate(items[start : start + batch_size], start):
                try:
                    loaded.append((index, item, self.load(item.path)))
                except ImageReadError as e:
                    self.fail(str(item.path), str(e))
            dets = self.predict([image for _, _, image in loaded]) if loaded else []
            for (index, item, image), det in zip(loaded, dets):
                self.image_outputs(index, item, image, det)
            bar.update(min(batch_size, len(items) - start))

    def load(self, path: Path) -> torch.Tensor:
        """The image file decoded as displayed, after its header's size passed the thin and
        `max_pixels` checks (`maskrcnn.image_limits`: an ImageShapeError naming the file)."""
        resize = self.predictor.input_size
        return read_checked_image(
            path, policy=AS_DISPLAYED, max_pixels=self.max_pixels, resize=resize, keep_uint8=True
        )

    def image_outputs(self, index: int, item: InputItem, image: torch.Tensor, det: Detections) -> None:
        records = detections_to_coco(
            det, image_id=image_id_for(item.path, index), file_name=item.name, category_ids=self.category_ids
        )
        ids = None
        if self.track:  # the images of one folder are a sequence, in input (name) order
            folder = str(PurePosixPath(item.path.as_posix()).parent)
            ids = self.tracked(self.trackers.setdefault(folder, Tracker()), det, records)
        self.report.records += records
        self.report.images += 1
        if self.out is None or not (self.overlays or self.save_masks):
            return
        base = self.names["image", index]
        if self.overlays:
            jpeg = item.path.suffix.lower() in (".jpg", ".jpeg", ".jfif")
            path = self.out / "overlays" / f"{base}{'.jpg' if jpeg else '.png'}"
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_save_image(path, self.draw(image, det, ids), **({"quality": 92} if jpeg else {}))
        if self.save_masks:
            self.write_masks(det, base)

    def video(self, index: int, item: InputItem, batch_size: int, *, frame_bar: bool) -> None:
        from tqdm import tqdm

        from .video import VideoReader, VideoWriter

        assert self.out is not None, "videos need an output folder"
        base = self.names["video", index]
        self.ran.append(item.name)
        video_path, json_path = self.out / f"{base}.mp4", self.out / f"{base}_frames.json"
        video_path.parent.mkdir(parents=True, exist_ok=True)
        result: dict = {"video": item.name, "fps": None, "width": None, "height": None, "frames": []}
        tracker = Tracker() if self.track else None
        try:
            with VideoReader(item.path) as reader:
                result["fps"] = float(reader.fps)
                bar = tqdm(
                    total=reader.frame_count or None,
                    desc=item.name,
                    unit="frame",
                    disable=not (self.progress and frame_bar),
                    leave=False,
                )
                with VideoWriter(video_path, fps=reader.fps) as writer, bar:
                    pending: list[tuple[int, float, np.ndarray]] = []
                    for frame in reader:
                        pending.append(frame)
                        if len(pending) == batch_size:
                            self.video_batch(pending, writer, result, base, tracker=tracker)
                            bar.update(len(pending))
                            pending = []
                    if pending:
                        self.video_batch(pending, writer, result, base, tracker=tracker)
                        bar.update(len(pending))
        except ValueError as e:
            self.fail(str(item.path), str(e))
        if result["frames"]:  # what was decoded before a failure is kept
            if self.track:
                result["tracks"] = self.track_summary(tracker)
                self.report.tracks[item.name] = len(result["tracks"])
            atomic_write_json(json_path, result)
            self.report.videos.append((video_path, json_path, len(result["frames"])))

    def video_batch(self, pending: list, writer, result: dict, base: str, *, tracker=None) -> None:
        frames = [torch.from_numpy(rgb).permute(2, 0, 1) for _, _, rgb in pending]
        dets = self.predict([f.float().div_(255.0) for f in frames])
        for (index, time, rgb), frame, det in zip(pending, frames, dets):
            result["height"], result["width"] = rgb.shape[:2]
            detections = detection_records(det, category_ids=self.category_ids)
            ids = self.tracked(tracker, det, detections, frame=index) if tracker is not None else None
            result["frames"].append({"frame": index, "time": round(time, 6), "detections": detections})
            writer.write(np.asarray(self.draw(frame, det, ids)))
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
    dist: DistInfo | None = None,
    track: bool = False,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    tile: TileSettings | None = None,
) -> PredictReport:
    """Predict on image and video inputs and write the outputs described in the module docstring
    (predictions.json included, when `out` is given). Unreadable inputs are skipped and listed in
    the returned report's failures. `score_thresh` replaces the model's own threshold for this run;
    `classes` (names or category ids) keeps only those classes. `device` moves the predictor.

    `dist` (`maskrcnn.distributed.init_distributed` under torchrun): this process runs its share
    (on `cuda:LOCAL_RANK` for a CUDA device) and returns it; rank 0 returns the whole job's report,
    with `shares`, and writes predictions.json and shards.json. Progress: one bar, on rank 0.
    `track`: link detections across video frames and folder images (module docstring); image
    sequences are tracked in one process only (under torchrun their batches would be split).

    Image files too thin for the model, or of more than `max_pixels` pixels (None: no limit), are
    skipped before they are decoded, listed in the failures (`maskrcnn.image_limits`).

    `tile`: tiled inference on every image and video frame (`maskrcnn.tiling`), with a bar over the
    tiles of large images when showing progress."""
    if batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    if score_thresh is not None and not 0.0 <= score_thresh <= 1.0:
        raise UserError(f"score threshold must be in [0, 1], got {score_thresh}")
    info = dist or DistInfo()
    if track and info.enabled and any(i.kind == "image" for i in items):
        raise UserError("tracking image sequences runs in one process: run it without torchrun")
    if device is not None:
        device = process_device(str(device), info)
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
        track=track,
        max_pixels=max_pixels,
        tile=tile,
    )
    images = [i for i in items if i.kind == "image"]
    videos = [i for i in items if i.kind == "video"]
    run.name_outputs(images, videos)
    num_batches = -(-len(images) // batch_size)
    batches, mine = my_positions(num_batches, info), my_positions(len(videos), info)  # this process's
    share, started = Share(info.rank, str(predictor.device), run.ran, 0.0), perf_counter()
    bar = JobProgress(total=len(images), desc="predict", unit="img", show=progress, info=info)
    show_videos = progress and info.enabled and bool(videos)  # one process: a bar of frames per video
    video_bar = JobProgress(total=len(videos), desc="videos", unit="video", show=show_videos, info=info)
    with torch.inference_mode(), bar, video_bar:
        with HeldError(info) as held:  # under torchrun: raised by rank 0 after the gathering
            run.images(images, batch_size, batches, bar)
            for j in mine:
                run.start_part(num_batches + j)  # videos come after the images
                run.video(j, videos[j], batch_size, frame_bar=not info.enabled)
                video_bar.update(1)
        share.seconds = perf_counter() - started
        gathered = gather_in_order(run.parts, share, info, held=held)
    report = PredictReport()
    for part in gathered[0] if gathered else [run.parts[k] for k in sorted(run.parts)]:
        report.add(part)
    if gathered is None:  # another process than rank 0: its own share
        return report
    report.shares = gathered[1] if info.enabled else []
    if out_dir is not None:
        atomic_write_json(out_dir / "predictions.json", report.records)
        if run.trackers:
            sequences = [{"sequence": k, "tracks": run.track_summary(t)} for k, t in run.trackers.items()]
            report.tracks.update({s["sequence"]: len(s["tracks"]) for s in sequences})
            atomic_write_json(out_dir / "tracks.json", sequences, indent=1)
        if info.enabled:
            atomic_write_json(out_dir / "shards.json", [s.as_dict() for s in report.shares], indent=1)
    return report
