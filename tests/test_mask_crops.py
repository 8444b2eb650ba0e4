"""Masks kept as crops (`MaskCrops`): the same masks, RLEs, overlays and mask files as full planes.

`paste_mask_crops` against `paste_masks` (itself bit-matched to torchvision's paste_masks_in_image)
and against torchvision directly, boxes inside, across and outside the image, chunked or not, both
paste modes; `MaskCrops.rle` against pycocotools' encoding of the planes; `Detections` keeping
crops through select / replace / to; and `maskrcnn predict` on coco-mini val photos giving byte
for byte the same predictions.json, overlays and --save-masks files with crops as with planes.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from PIL import Image
from torchvision.models.detection.roi_heads import paste_masks_in_image

from maskrcnn import cli
from maskrcnn.inputs import load_image
from maskrcnn.model.mask_branch import MaskBranch
from maskrcnn.model.mask_paste import paste_mask_crops, paste_masks
from maskrcnn.model.preprocess import Preprocessor
from maskrcnn.predict_records import encode_masks
from maskrcnn.structures import Detections, MaskCrops
from tests.helpers import TINY

VAL = "coco-mini/val2017"


def _boxes(n: int, height: int, width: int, seed: int) -> torch.Tensor:
    """`n` boxes of every size from sub-pixel to larger than the image, some across its edges and
    some wholly outside it."""
    g = torch.Generator().manual_seed(seed)
    corner = torch.rand(n, 2, generator=g) * torch.tensor([width * 1.3, height * 1.3]) - 0.15 * width
    size = torch.rand(n, 2, generator=g) ** 3 * torch.tensor([width * 1.2, height * 1.2]) + 0.2
    return torch.cat((corner, corner + size), dim=1)


@pytest.mark.parametrize("mode", ["torchvision", "detectron2"])
def test_crops_equal_full_planes(mode):
    for seed, (height, width) in enumerate([(240, 320), (97, 401)]):
        boxes = _boxes(40, height, width, seed)
        # probabilities near the threshold: a pixel off by one rounding step would flip
        probs = 0.5 + 0.02 * (torch.rand(40, 28, 28, generator=torch.Generator().manual_seed(seed)) - 0.5)
        planes = paste_masks(probs, boxes, (height, width), mode=mode)
        assert 0 < int(planes.sum()) < planes.numel()
        for budget in (1 << 28, 30_000):  # one chunk; many chunks and row bands
            crops = paste_mask_crops(probs, boxes, (height, width), mode=mode, max_chunk_bytes=budget)
            assert len(crops) == 40 and crops.image_size == (height, width)
            assert torch.equal(crops.full(), planes)
            assert torch.equal(crops.area(), planes.sum((1, 2)))
            x0, y0, x1, y1 = crops.boxes().unbind(1)
            assert bool((x0 >= 0).all() and (y0 >= 0).all() and (x1 <= width).all() and (y1 <= height).all())
            if mode == "torchvision":  # each crop is at most its box: memory follows the boxes
                assert int(((x1 - x0) * (y1 - y0)).sum()) < 40 * height * width


def test_crops_equal_torchvision_paste_masks_in_image():
    height, width = 210, 280
    boxes = _boxes(60, height, width, 7)
    # torchvision's paste fails on a box wholly outside the image: only boxes that reach into it
    x0, y0, x1, y1 = boxes.unbind(1)
    boxes = boxes[(x1 > 2) & (y1 > 2) & (x0 < width - 2) & (y0 < height - 2)]
    assert len(boxes) >= 30
    probs = torch.rand(len(boxes), 28, 28, generator=torch.Generator().manual_seed(3))
    expected = paste_masks_in_image(probs[:, None], boxes, (height, width))[:, 0] > 0.5
    assert torch.equal(paste_mask_crops(probs, boxes, (height, width)).full(), expected)


def test_rle_from_crops_is_pycocotools_encoding_of_the_planes():
    height, width = 50, 37
    boxes = _boxes(30, height, width, 11)
    probs = torch.rand(30, 28, 28, generator=torch.Generator().manual_seed(5))
    crops = paste_mask_crops(probs, boxes, (height, width), threshold=0.3)
    planes = crops.full()
    assert crops.rle() == encode_masks(planes)
    # whole columns (runs that go on into the next column), the first and last pixel, all, none
    edges = torch.zeros(5, height, width, dtype=torch.bool)
    edges[0, :, 3:9] = True
    edges[1, 0, 0] = edges[1, -1, -1] = True
    edges[2] = True
    edges[4, height - 2 :, :] = True
    assert MaskCrops.from_full(edges).rle() == encode_masks(edges)
    whole = MaskCrops([edges[0, :, 3:9]], torch.tensor([[3, 0]]), (height, width))
    assert whole.rle() == encode_masks(edges[:1])


def test_detections_keep_crops_through_select_replace_and_to():
    height, width = 120, 90
    boxes = _boxes(8, height, width, 2)
    crops = paste_mask_crops(torch.rand(8, 28, 28), boxes, (height, width), threshold=0.2)
    planes = crops.full()
    det = Detections(boxes, torch.linspace(0.9, 0.2, 8), torch.arange(1, 9), crops)
    assert torch.equal(det.masks, planes) and det.mask_crops is crops
    picked = det.select(torch.tensor([5, 0, 5]))
    assert isinstance(picked.mask_crops, MaskCrops) and torch.equal(picked.masks, planes[[5, 0, 5]])
    kept = det.select(det.scores > 0.5)
    assert torch.equal(kept.masks, planes[det.scores > 0.5])
    moved = det.to("cpu").replace(scores=torch.zeros(8))
    assert isinstance(moved.__dict__["_masks"], MaskCrops) and torch.equal(moved.masks, planes)
    assert set(det.tensor_fields()) == {"boxes", "scores", "labels"}  # crops are not a tensor field
    # planes given by a caller stay planes, and read as crops at (0, 0)
    plain = Detections(boxes, det.scores, det.labels, planes)
    assert plain.masks is planes and torch.equal(plain.mask_crops.full(), planes)


def test_uint8_images_are_preprocessed_to_the_same_values(monkeypatch):
    """A uint8 image gives exactly the float image's input; past BY_CHANNEL_PIXELS an image is
    normalized and resized one channel at a time: the same values but for the last bit of the
    bilinear resize (at one thread a 1-channel resize rounds unlike a 3-channel one)."""
    from maskrcnn.model import preprocess

    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 301, 419), dtype=torch.uint8, generator=g)
    rgb = dict(
        pixel_mean=(0.485, 0.456, 0.406), pixel_std=(0.229, 0.224, 0.225), min_size=(200,), max_size=333
    )
    bgr = dict(
        pixel_mean=(103.53, 116.28, 123.675),
        pixel_std=(57.375, 57.12, 58.395),
        min_size=(250,),
        max_size=400,
        channel_order="bgr",
        pixel_scale=255.0,
        resize="detectron2",
    )
    for settings in (rgb, bgr):
        pre = Preprocessor(**settings)
        whole, size = pre.resize_image(image.float() / 255.0)
        from_uint8, same = pre.resize_image(image)
        assert same == size and torch.equal(from_uint8, whole)
        monkeypatch.setattr(preprocess, "BY_CHANNEL_PIXELS", 1000)
        by_channel, same = pre.resize_image(image)
        monkeypatch.setattr(preprocess, "BY_CHANNEL_PIXELS", 1 << 24)
        assert same == size and (by_channel - whole).abs().max() <= 1e-5 * whole.abs().max()


def test_decoder_reads_images_over_pillows_limit_without_its_warning(tmp_path, monkeypatch):
    path = tmp_path / "wide.png"
    Image.new("RGB", (300, 200), (10, 200, 30)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40_000)  # 60 000 pixels: over it, under twice it
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = load_image(path, keep_uint8=True)
    assert image.dtype == torch.uint8 and image.shape == (3, 200, 300) and int(image[1, 5, 5]) == 200
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


@pytest.fixture(scope="module")
def many_weights(tmp_path_factory):
    """The tests' tiny random 2-class model (TINY) keeping up to 40 detections per image."""
    from maskrcnn.config import apply_overrides, get_preset
    from maskrcnn.engine.checkpoint import save_model
    from maskrcnn.model import build_model

    torch.manual_seed(0)
    overrides = [*TINY, "model.roi_heads.detections_per_image=40"]
    model = build_model(apply_overrides(get_preset("default"), overrides), class_names=["cat", "dog"])
    path = tmp_path_factory.mktemp("many-weights") / "many.pt"
    save_model(model, path)
    return path


def _predict_outputs(weights, photos, out, capsys) -> dict[str, bytes]:
    args = ["--weights", str(weights), "--out", str(out), "--score-thresh", "0", "--save-masks"]
    code = cli.main(["predict", "--no-progress", *args, *map(str, photos)])
    capsys.readouterr()
    assert code == 0
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_predict_with_crops_writes_the_same_bytes_as_with_planes(
    many_weights, shared_data, tmp_path, capsys, monkeypatch
):
    photos = sorted((shared_data / VAL).glob("*.jpg"))[:2]
    crops = _predict_outputs(many_weights, photos, tmp_path / "crops", capsys)
    monkeypatch.setattr(MaskBranch, "paste_crops", False)  # the full-plane path
    planes = _predict_outputs(many_weights, photos, tmp_path / "planes", capsys)
    assert sorted(crops) == sorted(planes)
    assert sum(name.startswith("masks/") for name in crops) >= 60  # many detections, a file each
    assert sum(name.startswith("overlays/") for name in crops) == 2
    for name in crops:
        assert crops[name] == planes[name], name
