"""`predict --track` on a synthetic clip: two coco-mini objects (a person and a chair cut out along
their annotated masks) moved across a coco-mini photo in crossing paths, one of them missed for two
frames while they overlap. The detections are the objects' true boxes and masks, replayed by a
stand-in for the model (a random model's detections have no identity to keep); decoding, tracking,
drawing and the JSON are the real ones. Then the tiny real model on the same clip."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from PIL import Image

import maskrcnn
from maskrcnn import cli
from maskrcnn.inputs import InputItem, collect_inputs
from maskrcnn.predict import run_predictions
from maskrcnn.predictor import Predictor
from maskrcnn.structures import Detections
from maskrcnn.visualize import track_colors

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W, FRAMES = 96, 160, 12
MISSED = (6, 7)  # frames in which the chair is not detected (it is behind the person)


def _cutout(ann: dict, image: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(h, w, 3) pixels and (h, w) mask of one annotated object, scaled."""
    h, w = image.shape[:2]
    mask = mask_util.decode(mask_util.merge(mask_util.frPyObjects(ann["segmentation"], h, w)))
    x, y, bw, bh = (int(round(v)) for v in ann["bbox"])
    size = (max(1, int(bw * scale)), max(1, int(bh * scale)))
    pixels = Image.fromarray(image[y : y + bh, x : x + bw]).resize(size, Image.Resampling.BILINEAR)
    cut = Image.fromarray(mask[y : y + bh, x : x + bw] * 255).resize(size, Image.Resampling.NEAREST)
    return np.asarray(pixels), np.asarray(cut) > 127


@pytest.fixture(scope="module")
def clip(shared_data, tmp_path_factory):
    """-> (folder with clip.mp4 and frames/000.png..., per frame the objects' (box, mask) lists)."""
    ann = json.loads((shared_data / "coco-mini/annotations/instances_val2017.json").read_text())
    by_id = {a["id"]: a for a in ann["annotations"]}
    photo = np.asarray(Image.open(shared_data / "coco-mini/val2017/000000000139.jpg").convert("RGB"))
    objects = [_cutout(by_id[230831], photo, 0.35), _cutout(by_id[103487], photo, 0.35)]  # person, chair
    with Image.open(shared_data / "coco-mini/val2017/000000000802.jpg") as im:
        background = np.asarray(im.convert("RGB").resize((W, H)))
    folder = tmp_path_factory.mktemp("clip")
    (folder / "frames").mkdir()
    truth = []
    with av.open(str(folder / "clip.mp4"), "w") as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for t in range(FRAMES):
            frame, placed = background.copy(), []
            for (pixels, mask), (x, y) in zip(objects, [(5 + 10 * t, 20), (135 - 10 * t, 40)]):
                h, w = mask.shape
                frame[y : y + h, x : x + w][mask] = pixels[mask]
                full = np.zeros((H, W), dtype=bool)
                full[y : y + h, x : x + w] = mask
                ys, xs = np.nonzero(full)
                placed.append(([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], full))
            truth.append(placed)
            Image.fromarray(frame).save(folder / "frames" / f"{t:03d}.png")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return folder, truth


class Oracle(Predictor):
    """The tiny model's predictor whose `predict` hands out the objects' true detections, frame by
    frame (the chair missed in MISSED; the order of the objects alternating)."""

    def __init__(self, model, truth):
        super().__init__(model)
        self.queue = []
        for t, placed in enumerate(truth):
            keep = [k for k in ((1, 0) if t % 2 else (0, 1)) if not (k == 1 and t in MISSED)]
            self.queue.append(
                Detections(
                    boxes=torch.tensor([placed[k][0] for k in keep], dtype=torch.float32),
                    scores=torch.tensor([0.9 - 0.1 * k for k in keep]),
                    labels=torch.ones(
                        len(keep), dtype=torch.int64
                    ),  # one class: only motion tells them apart
                    masks=torch.from_numpy(np.stack([placed[k][1] for k in keep])),
                )
            )

    def predict(self, images, *, score_thresh=None, classes=None, batch_size=None):
        out, self.queue = self.queue[: len(images)], self.queue[len(images) :]
        return out


def _object_of(box: list[float], placed: list) -> int:
    """Which object (0 person, 1 chair) a detected xywh box is."""
    x, y, w, h = box
    return int(np.argmin([np.abs(np.array([x, y, x + w, y + h]) - np.array(b)).sum() for b, _ in placed]))


def test_identities_never_switch_in_the_video(clip, tiny_weights, tmp_path):
    folder, truth = clip
    model = maskrcnn.load(str(tiny_weights)).model
    item = InputItem(folder / "clip.mp4", "clip.mp4", "video")
    report = run_predictions(Oracle(model, truth), [item], tmp_path, batch_size=4, progress=False, track=True)
    assert report.tracks == {"clip.mp4": 2}
    result = json.loads((tmp_path / "clip_frames.json").read_text())
    ids: dict[int, set] = {0: set(), 1: set()}
    for t, frame in enumerate(result["frames"]):
        assert len(frame["detections"]) == (1 if t in MISSED else 2)
        for det in frame["detections"]:
            ids[_object_of(det["bbox"], truth[t])].add(det["track_id"])
    assert ids == {0: {1}, 1: {2}}  # the person is track 1, the chair track 2, in every frame
    assert result["tracks"] == [
        {"track_id": 1, "first_frame": 0, "last_frame": 11, "length": 12, "detections": 12, "mean_score": 0.9}
        | {"category_id": 1, "class": "cat"},
        {"track_id": 2, "first_frame": 0, "last_frame": 11, "length": 12, "detections": 10, "mean_score": 0.8}
        | {"category_id": 1, "class": "cat"},
    ]
    with av.open(str(tmp_path / "clip.mp4")) as container:
        drawn = [f.to_ndarray(format="rgb24").astype(int) for f in container.decode(video=0)]
    colors = track_colors([1, 2]).astype(int)
    for t in (0, 1, 2, 10, 11):  # apart: each object's box outline is drawn in its track's colour
        for k in (0, 1):
            x1, y1, x2, _ = truth[t][k][0]
            edge = drawn[t][y1, x1 + 2 : x2 - 2].mean(0)  # the top edge of the box
            assert np.abs(edge - colors[k]).sum() < np.abs(edge - colors[1 - k]).sum(), (t, k)


def test_an_image_folder_is_a_sequence(clip, tiny_weights, tmp_path):
    folder, truth = clip
    model = maskrcnn.load(str(tiny_weights)).model
    items, _ = collect_inputs([folder / "frames"])
    report = run_predictions(Oracle(model, truth), items, tmp_path, batch_size=3, progress=False, track=True)
    records = json.loads((tmp_path / "predictions.json").read_text())
    ids: dict[int, set] = {0: set(), 1: set()}
    for r in records:
        ids[_object_of(r["bbox"], truth[int(Path(r["file_name"]).stem)])].add(r["track_id"])
    assert ids == {0: {1}, 1: {2}}
    (sequence,) = json.loads((tmp_path / "tracks.json").read_text())
    assert sequence["sequence"] == str(folder / "frames") and report.tracks == {sequence["sequence"]: 2}
    assert [(t["track_id"], t["length"], t["detections"]) for t in sequence["tracks"]] == [
        (1, 12, 12),
        (2, 12, 10),
    ]
    colors = track_colors([1, 2])
    for t in (0, 11):  # lossless overlays: the outline is exactly the track's colour
        overlay = np.asarray(Image.open(tmp_path / "overlays" / f"{t:03d}.png"))
        for k in (0, 1):
            x1, y1, x2, _ = truth[t][k][0]
            assert (overlay[y1, x1 + 2 : x2 - 2] == colors[k]).all(axis=1).mean() > 0.5, (t, k)


def test_cli_track_with_a_real_model(clip, tiny_weights, tmp_path, capsys):
    folder, _ = clip
    frames = tmp_path / "frames"
    frames.mkdir()
    for t in range(4):  # a short image sequence: the tiny model is slow enough on a busy CPU
        (frames / f"{t:03d}.png").symlink_to(folder / "frames" / f"{t:03d}.png")
    out = tmp_path / "out"
    args = ["predict", "--no-progress", "--track", "--weights", str(tiny_weights), "--out", str(out)]
    assert cli.main([*args, str(frames)]) == 0
    (sequence,) = json.loads((out / "tracks.json").read_text())
    tracks = sequence["tracks"]
    assert f"tracked {frames}: {len(tracks)} track" in capsys.readouterr().out
    seen: dict[int, list[int]] = {}
    records = json.loads((out / "predictions.json").read_text())
    assert len(records) == 20  # the tiny model's 5 per image
    for r in records:
        assert isinstance(r["track_id"], int)
        if r["track_id"]:
            seen.setdefault(r["track_id"], []).append(int(Path(r["file_name"]).stem))
    assert sorted(seen) == [t["track_id"] for t in tracks]
    for t in tracks:  # the summary is what the records say
        frames_of = seen[t["track_id"]]
        assert (t["first_frame"], t["last_frame"], t["detections"]) == (
            min(frames_of),
            max(frames_of),
            len(frames_of),
        )
        assert t["class"] in ("cat", "dog") and len(set(frames_of)) == len(frames_of)  # one detection a frame
