"""`maskrcnn predict` and the Python prediction API on real images: overlays, masks, COCO results,
skipped corrupt inputs, videos, batch-size independence, class and score filters."""

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
from maskrcnn.inputs import InputItem
from maskrcnn.predict import predict_files, run_predictions
from maskrcnn.visualize import draw_detections, instance_colors
from tests.conftest import skip_or_fail_in_ci
from tests.helpers import drawing_zones as _zones

VAL = "coco-mini/val2017"
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def weights(tiny_weights) -> Path:
    """The small random 2-class model (conftest's tiny_weights: it detects ~5 things per image)."""
    return tiny_weights


@pytest.fixture(scope="module")
def model(weights):
    return maskrcnn.load(str(weights))


def _small(path: Path, size: tuple[int, int], *, shift: int = 0) -> Image.Image:
    """A crop of a real photo, resized to `size` (w, h)."""
    with Image.open(path) as im:
        w, h = im.size
        box = (shift, shift // 2, w - shift // 2, h - shift)
        return im.convert("RGB").crop(box).resize(size, Image.Resampling.BILINEAR)


def _predict(capsys, *args: str) -> tuple[int, str, str]:
    code = cli.main(["predict", "--no-progress", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _records_by_file(path: Path) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in json.loads(path.read_text()):
        out.setdefault(r["file_name"], []).append(r)
    return out


def test_corrupt_inputs_are_skipped_and_the_rest_complete(weights, shared_data, tmp_path, capsys):
    images = sorted((shared_data / VAL).iterdir())[:2]
    folder = tmp_path / "in"
    folder.mkdir()
    png = folder / "street.png"  # lossless, so the overlay can be compared pixel for pixel
    _small(images[1], (320, 240)).save(png)
    truncated, text = folder / "cut.jpg", folder / "notes.jpg"
    data = images[0].read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    text.write_text("shopping list: eggs, milk\n")
    out = tmp_path / "out"
    code, stdout, stderr = _predict(
        capsys, "--weights", weights, "--out", out, "--save-masks", images[0], truncated, png, text
    )
    assert code == 1
    summary = stderr[stderr.index("error: 2 inputs failed") :]
    assert f"{truncated}: truncated image data" in summary
    assert f"{text}: not an image file" in summary
    assert str(png) not in summary and str(images[0]) not in summary
    assert f"wrote {out / 'predictions.json'}" in stdout and "on 2 images" in stdout

    records = _records_by_file(out / "predictions.json")
    assert set(records) == {images[0].name, "street.png"}
    assert all(len(r) == 5 for r in records.values())  # the tiny model's detections_per_image
    assert records[images[0].name][0]["image_id"] == int(images[0].stem)
    assert sorted(p.name for p in (out / "overlays").iterdir()) == sorted(
        [f"{images[0].stem}.jpg", "street.png"]
    )
    masks = sorted(p.name for p in (out / "masks").iterdir())
    assert len(masks) == 10 and "street_0_cat.png" in masks and f"{images[0].stem}_4_cat.png" in masks

    # the overlay: masks tinted, box outlines drawn, everything else untouched
    original = np.asarray(Image.open(png).convert("RGB")).astype(int)
    overlay = np.asarray(Image.open(out / "overlays" / "street.png")).astype(int)
    dets = records["street.png"]
    masks = np.stack([mask_util.decode(r["segmentation"]).astype(bool) for r in dets])
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in dets)])
    assert np.array_equal(masks[0], np.asarray(Image.open(out / "masks" / "street_0_cat.png")) == 255)
    outline, label = _zones(boxes, 240, 320)
    free = ~masks.any(0) & ~outline & ~label
    assert free.sum() > 0.2 * free.size and np.array_equal(overlay[free], original[free])
    inside = masks.any(0) & ~outline & ~label
    assert inside.sum() > 1000 and (overlay[inside] != original[inside]).any(axis=1).mean() > 0.9
    x1, y1, x2, y2 = np.round(boxes[0]).astype(int)
    bottom = overlay[min(y2, 240) - 1, x1 + 4 : x2 - 4]  # the best detection's outline is on top
    assert (bottom == instance_colors(5)[0]).all(axis=1).mean() > 0.9


def test_python_api_accepts_paths_pil_images_arrays_and_tensors(model, shared_data):
    path = sorted((shared_data / VAL).iterdir())[3]
    pil = Image.open(path)
    rgb = np.array(pil.convert("RGB"))
    tensor = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    gray = np.array(pil.convert("L"))
    dets = model.predict([path, str(path), pil, rgb, tensor, gray])
    reference = dets[4]
    assert len(reference) > 0
    assert all(len(det) == len(det.masks) > 0 for det in dets)
    for det in dets[:4]:
        assert torch.equal(det.boxes, reference.boxes) and torch.equal(det.masks, reference.masks)
    gray_boxes = model.predict([torch.from_numpy(gray).float().div(255).expand(3, -1, -1)])[0].boxes
    assert torch.allclose(dets[5].boxes, gray_boxes, atol=1e-3)  # a batch of 6 vs a single image
    # draw_detections takes the same kinds of image and draws the same picture
    drawn = np.asarray(draw_detections(tensor, reference, class_names=model.class_names))
    for image in (path, pil, rgb):
        assert np.array_equal(
            np.asarray(draw_detections(image, reference, class_names=model.class_names)), drawn
        )


def test_video_gives_one_result_and_one_output_frame_per_input_frame(weights, shared_data, tmp_path, capsys):
    photo = np.asarray(_small(sorted((shared_data / VAL).iterdir())[0], (160, 120)))
    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("mpeg4", rate=12)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for i in range(7):  # a slow pan
            frame = np.ascontiguousarray(photo[20 + i * 3 : 84 + i * 3, 30 + i * 4 : 126 + i * 4])
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    out = tmp_path / "out"
    code, stdout, stderr = _predict(capsys, "--weights", weights, "--out", out, "--batch-size", 3, clip)
    assert code == 0, stderr
    assert f"wrote {out / 'clip.mp4'} and {out / 'clip_frames.json'}: 7 frames" in stdout
    with av.open(str(out / "clip.mp4")) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 7 and decoded[0].shape == (64, 96, 3)
    result = json.loads((out / "clip_frames.json").read_text())
    assert (result["video"], result["fps"], result["width"], result["height"]) == ("clip.mp4", 12.0, 96, 64)
    assert [f["frame"] for f in result["frames"]] == list(range(7))
    assert [f["time"] for f in result["frames"]] == pytest.approx([i / 12 for i in range(7)], abs=1e-6)
    assert all(len(f["detections"]) == 5 for f in result["frames"])
    first = result["frames"][0]["detections"][0]
    assert first.keys() == {"category_id", "bbox", "score", "segmentation"}
    assert first["segmentation"]["size"] == [64, 96]
    assert json.loads((out / "predictions.json").read_text()) == []


def test_batch_size_does_not_change_results(weights, shared_data, tmp_path, capsys, model):
    sources = sorted((shared_data / VAL).iterdir())[:20]
    # sizes that share padded input sizes (so batches of 4 really run several images at once)
    sizes = [(160, 120), (200, 150), (120, 160), (96, 96), (150, 100)]
    folder = tmp_path / "images"
    for i, source in enumerate(sources):
        sub = folder / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        _small(source, sizes[i % len(sizes)], shift=3 * i).save(sub / f"img{i:02d}.png")
    padded = [model.model.padded_size(h, w) for w, h in sizes]
    assert len(set(padded)) < len(padded)
    results = {}
    for batch in (1, 4):
        out = tmp_path / f"out{batch}"
        code, _, stderr = _predict(
            capsys, "--weights", weights, "--out", out, "--batch-size", batch, "--no-overlays", folder
        )
        assert code == 0, stderr
        results[batch] = json.loads((out / "predictions.json").read_text())
    one, four = results[1], results[4]
    assert len({r["file_name"] for r in one}) == 20 and len(one) == len(four) > 50
    for a, b in zip(one, four):
        assert (a["image_id"], a["file_name"], a["category_id"]) == (
            b["image_id"],
            b["file_name"],
            b["category_id"],
        )
        assert np.allclose(a["bbox"], b["bbox"], atol=1e-3) and abs(a["score"] - b["score"]) <= 1e-4
        assert a["segmentation"] == b["segmentation"]


def test_class_and_score_filters(model, shared_data, tmp_path):
    paths = sorted((shared_data / VAL).iterdir())[:2]
    items = [InputItem(p, p.name, "image") for p in paths]
    everything = run_predictions(model, items, None, progress=False).records
    assert len(everything) == 10 and {r["category_id"] for r in everything} == {1}
    assert predict_files(model, paths, batch_size=2, progress=False) == everything
    assert run_predictions(model, items, None, classes=["Cat"], progress=False).records == everything
    assert run_predictions(model, items, None, classes=["dog,2"], progress=False).records == []
    scores = sorted(r["score"] for r in everything)
    cut = (scores[4] + scores[5]) / 2
    high = run_predictions(model, items, None, score_thresh=cut, progress=False).records
    assert len(high) == 5 and all(r["score"] >= cut for r in high)
    assert model.model.roi_heads.box.score_thresh == 0.05  # a per-call option: the model is unchanged
    with pytest.raises(ValueError, match=r"no class 'horse'; its classes: cat \(1\), dog \(2\)"):
        run_predictions(model, items, tmp_path / "x", classes=["cat", "horse"], progress=False)


def test_video_rotation_metadata_is_applied(tmp_path):
    from maskrcnn.video import VideoReader

    clip = tmp_path / "phone.mp4"
    frame = np.zeros((48, 64, 3), np.uint8)
    frame[:16, :16] = 255  # a white block top left as stored
    with av.open(str(clip), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        if not hasattr(stream, "set_display_rotation"):
            skip_or_fail_in_ci("this PyAV cannot write a display matrix")
        stream.set_display_rotation(
            -90
        )  # players turn it 90 degrees clockwise, as for a portrait phone video
        for _ in range(2):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    with VideoReader(clip) as reader:
        frames = [rgb for _, _, rgb in reader]
    assert len(frames) == 2 and frames[0].shape == (64, 48, 3)
    assert frames[0][:16, -16:].mean() > 200 and frames[0][:16, :16].mean() < 50  # the block is top right
