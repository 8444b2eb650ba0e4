"""Tiled inference (`maskrcnn.tiling`): the tile grid, the shift back into the image and the merge
of the pieces of cut objects on tiny hand-computed tensors; one object cut by the borders of 4 tiles
of a 6000x4000 image; and `Predictor.predict(..., tile=)` against untiled runs of the same model."""

from __future__ import annotations

import json

import pytest
import torch

import maskrcnn
from maskrcnn.errors import UserError
from maskrcnn.structures import Detections
from maskrcnn.tiling import (
    Pieces,
    TileSettings,
    assemble,
    merge_pieces,
    predict_tiled,
    shift_pieces,
    tile_grid,
)


def test_tile_grid_spreads_tiles_evenly_with_at_least_the_overlap():
    # side 10, tiles of 4, overlap 0.5 -> stride 2: starts 0, 2, 4, 6
    grid = tile_grid(4, 10, size=4, overlap=0.5)
    assert grid.tolist() == [[0, 0, 4, 4], [2, 0, 6, 4], [4, 0, 8, 4], [6, 0, 10, 4]]
    # side 11, tiles of 4, overlap 0.25 (1 px) -> stride 3: ceil(7 / 3) + 1 = 4 tiles, starts
    # round(i * 7 / 3) = 0, 2, 5, 7 (overlaps 2, 3, 2 >= 1)
    assert [t[0] for t in tile_grid(4, 11, size=4, overlap=0.25).tolist()] == [0, 2, 5, 7]
    # a side no longer than the tile is one tile, of that side; row by row
    grid = tile_grid(3, 7, size=4, overlap=0.0)
    assert grid.tolist() == [[0, 0, 4, 3], [3, 0, 7, 3]]
    assert tile_grid(2, 2, size=4, overlap=0.2).tolist() == [[0, 0, 2, 2]]


def test_shift_moves_boxes_keypoints_and_keeps_each_mask_as_its_crop():
    masks = torch.zeros(2, 4, 5, dtype=torch.bool)
    masks[0, 1:3, 2:4] = True  # rows 1-2, columns 2-3
    det = Detections(
        boxes=torch.tensor([[2.0, 1.0, 4.0, 3.0], [0.0, 0.0, 1.0, 1.0]]),
        scores=torch.tensor([0.9, 0.2]),
        labels=torch.tensor([1, 2]),
        masks=masks,  # detection 1's mask is empty
        keypoints=torch.tensor([[[2.5, 1.5, 1.0]], [[0.0, 0.0, 0.5]]]),
    )
    p = shift_pieces(det, window=(10, 20, 15, 24))
    assert p.boxes.tolist() == [[12.0, 21.0, 14.0, 23.0], [10.0, 20.0, 11.0, 21.0]]
    assert p.keypoints[:, 0].tolist() == [[12.5, 21.5, 1.0], [10.0, 20.0, 0.5]]
    assert p.rects.tolist() == [[12, 21, 14, 23], [0, 0, 0, 0]]
    assert p.crops[0].tolist() == [[True, True], [True, True]] and p.crops[1].numel() == 0
    assert p.windows.tolist() == [[10, 20, 15, 24]] * 2
    full = assemble(p, image_size=(30, 20)).masks
    assert full.shape == (2, 30, 20) and int(full[0].sum()) == 4 and bool(full[0, 21:23, 12:14].all())
    assert int(full[1].sum()) == 0


def _pieces(rects, crops, windows, scores, labels) -> Pieces:
    rects_t = torch.tensor(rects, dtype=torch.int64)
    return Pieces(
        boxes=rects_t.float(),
        scores=torch.tensor(scores),
        labels=torch.tensor(labels),
        windows=torch.tensor(windows, dtype=torch.int64),
        rects=rects_t,
        crops=[torch.tensor(c, dtype=torch.bool) for c in crops],
    )


def test_merge_joins_the_halves_of_a_cut_object_and_nms_keeps_the_best_half():
    # tiles [0, 6) and [4, 10) on a 1-row image, overlap strip x 4..5. One object x 2..7: tile A sees
    # x 2..5 (4 px), tile B x 4..7 (4 px); in the strip both see x 4..5: intersection over smaller
    # (and IoU) there = 2 / 2 = 1. Over the whole pieces it would be 2 / 4 only.
    a = ([2, 0, 6, 1], [[1, 1, 1, 1]])
    b = ([4, 0, 8, 1], [[1, 1, 1, 1]])
    # another object of the same class seen by tile B only, x 8..9: its rectangle does not meet A's
    c = ([8, 0, 10, 1], [[1, 1]])
    windows = [[0, 0, 6, 1], [4, 0, 10, 1], [4, 0, 10, 1]]
    p = _pieces([a[0], b[0], c[0]], [a[1], b[1], c[1]], windows, [0.6, 0.8, 0.7], [1, 1, 1])
    merged = merge_pieces(p, mode="merge")
    assert len(merged) == 2
    assert merged.scores.tolist() == pytest.approx([0.8, 0.7])  # the higher score, best first
    assert merged.rects.tolist() == [[2, 0, 8, 1], [8, 0, 10, 1]]
    assert merged.crops[0].tolist() == [[True] * 6]
    assert merged.boxes[0].tolist() == [2.0, 0.0, 8.0, 1.0]  # the union box
    kept = merge_pieces(p, mode="nms")
    assert kept.rects.tolist() == [[4, 0, 8, 1], [8, 0, 10, 1]]  # B's piece (0.8) as it was
    assert kept.crops[0].tolist() == [[True] * 4]


def test_merge_keeps_different_classes_same_window_and_disagreeing_masks_apart():
    # two neighbours in the strip x 4..5: A's piece covers x 3..4, B's x 5..6: in the strip each has
    # 1 px, no shared pixel -> 0; a third piece, of another class, on top of A's
    rects = [[3, 0, 5, 1], [5, 0, 7, 1], [3, 0, 5, 1], [3, 0, 5, 1]]
    crops = [[[1, 1]], [[1, 1]], [[1, 1]], [[1, 1]]]
    windows = [[0, 0, 6, 1], [4, 0, 10, 1], [4, 0, 10, 1], [0, 0, 6, 1]]
    p = _pieces(rects, crops, windows, [0.9, 0.8, 0.7, 0.6], [1, 1, 2, 1])
    # piece 3: same class and rectangle as piece 0 but the same window: never matched with it
    assert len(merge_pieces(p, mode="merge")) == 4
    assert len(merge_pieces(p, mode="nms")) == 4
    # IoU in the strip is stricter than intersection over the smaller piece
    sliver = _pieces([[2, 0, 6, 1], [4, 0, 5, 1]], [[[1, 1, 1, 1]], [[1]]], windows[:2], [0.9, 0.5], [1, 1])
    assert len(merge_pieces(sliver, metric="ios")) == 1  # 1 / min(2, 1)
    assert len(merge_pieces(sliver, metric="iou", thresh=0.6)) == 2  # 1 / (2 + 1 - 1) = 0.5


def test_a_group_never_holds_two_pieces_of_one_window():
    # a coarse whole-image detection (window = the image) over two objects that one tile told apart:
    # inside the tile x 0..4, by intersection over the smaller it matches both (4 / 4 and 1 / 1);
    # by IoU, 4 / 5 and 1 / 5
    rects = [[0, 0, 6, 1], [0, 0, 4, 1], [4, 0, 6, 1]]
    crops = [[[1] * 6], [[1] * 4], [[1] * 2]]
    windows = [[0, 0, 6, 1], [0, 0, 5, 1], [0, 0, 5, 1]]
    p = _pieces(rects, crops, windows, [0.3, 0.9, 0.8], [1, 1, 1])
    merged = merge_pieces(p, metric="ios")
    assert len(merged) == 2  # the blob joins the better match only, not both
    assert merged.rects.tolist() == [[0, 0, 6, 1], [4, 0, 6, 1]] and merged.scores.tolist() == pytest.approx(
        [0.9, 0.8]
    )
    assert len(merge_pieces(p, metric="iou", thresh=0.9)) == 3  # IoU 4 / 5 < 0.9: nothing matches


def test_boxes_alone_match_inside_the_shared_window():
    # no masks (a keypoint model): the boxes clipped to the strip x 4..6 are compared
    p = Pieces(
        boxes=torch.tensor([[1.0, 0.0, 6.0, 2.0], [4.0, 0.0, 9.0, 2.0]]),
        scores=torch.tensor([0.5, 0.9]),
        labels=torch.tensor([1, 1]),
        windows=torch.tensor([[0, 0, 6, 2], [4, 0, 10, 2]]),
        keypoints=torch.tensor([[[1.0, 1.0, 1.0]], [[8.0, 1.0, 2.0]]]),
    )
    merged = merge_pieces(p)
    assert merged.boxes.tolist() == [[1.0, 0.0, 9.0, 2.0]] and merged.keypoints[0, 0].tolist() == [
        8.0,
        1.0,
        2.0,
    ]
    assert assemble(merged, image_size=(2, 10)).masks is None


def test_settings_are_checked():
    for bad in ({"size": 16}, {"size": 512, "overlap": 0.95}, {"size": 512, "merge": "union"}):
        with pytest.raises(UserError, match="tile"):
            TileSettings(**bad)


class ThresholdSegmenter:
    """A detector that really looks at its input: each tile's bright pixels (> 0.5) are one
    detection of class 1, scored by how much of the tile they cover (so the largest piece is best)."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, int]] = []

    def __call__(self, images: list[torch.Tensor]) -> list[Detections]:
        out = []
        for image in images:
            self.shapes.append(tuple(image.shape[-2:]))
            mask = image[0] > 0.5
            if not mask.any():
                out.append(
                    Detections(
                        torch.zeros(0, 4),
                        torch.zeros(0),
                        torch.zeros(0, dtype=torch.int64),
                        masks=torch.zeros(0, *mask.shape, dtype=torch.bool),
                    )
                )
                continue
            ys, xs = mask.nonzero(as_tuple=True)
            box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()[None]
            score = torch.tensor([mask.sum().item() / mask.numel() * 10])
            out.append(Detections(box, score, torch.tensor([1]), masks=mask[None]))
        return out


def test_one_object_cut_by_four_tiles_of_a_6000x4000_image():
    h, w = 4000, 6000
    settings = TileSettings(1024, overlap=0.2)
    grid = tile_grid(h, w, size=1024, overlap=0.2)
    # a disc of radius 300 around a point of the strips between tile columns 0, 1 and rows 0, 1
    cx, cy, r = 868, 884, 300
    ys = torch.arange(cy - r, cy + r, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(cx - r, cx + r, dtype=torch.float32)[None, :] + 0.5
    disc = torch.zeros(h, w, dtype=torch.bool)
    disc[cy - r : cy + r, cx - r : cx + r] = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
    cut = [t for t in grid.tolist() if t[0] < cx + r and cx - r < t[2] and t[1] < cy + r and cy - r < t[3]]
    assert len(cut) == 4 and all(not disc[t[1] : t[3], t[0] : t[2]].all() for t in cut)  # 4 pieces, each cut
    image = disc.float()[None].expand(3, h, w)  # a view: no 3-channel copy
    segmenter = ThresholdSegmenter()
    merged = predict_tiled(segmenter, image, settings, batch_size=8)
    assert set(segmenter.shapes) == {(1024, 1024)} and len(segmenter.shapes) == len(grid)
    assert len(merged) == 1
    assert tuple(merged.mask_crops.crops[0].shape) == (
        2 * r,
        2 * r,
    )  # the union as a crop, no 6000x4000 plane
    inter = (merged.masks[0] & disc).sum().item()
    iou = inter / (merged.masks[0] | disc).sum().item()
    assert iou >= 0.9
    x0, y0, x1, y1 = merged.boxes[0].tolist()
    assert (x0, y0, x1, y1) == (cx - r, cy - r, cx + r, cy + r)  # the union of the 4 pieces' boxes
    kept = predict_tiled(ThresholdSegmenter(), image, TileSettings(1024, merge="nms"), batch_size=8)
    assert len(kept) == 1
    piece = kept.masks[0]
    assert (piece & ~disc).sum() == 0 and 0.1 < piece.sum().item() / disc.sum().item() < 0.9  # one piece
    # the best piece: the largest of the 4
    largest = max(disc[t[1] : t[3], t[0] : t[2]].sum().item() for t in cut)
    assert piece.sum().item() == largest


@pytest.fixture(scope="module")
def predictor(tiny_weights):
    return maskrcnn.load(str(tiny_weights))


def _photo(shared_data, size):
    from tests.helpers import small_photo

    return torch.from_numpy(small_photo(shared_data, size)).permute(2, 0, 1).float() / 255


def test_one_tile_covering_the_image_is_the_untiled_prediction(predictor, shared_data):
    image = _photo(shared_data, (160, 120))
    plain = predictor.predict([image])[0]
    tiled = predictor.predict([image], tile=TileSettings(256))[0]
    assert len(plain) > 0
    assert torch.equal(tiled.boxes, plain.boxes) and torch.equal(tiled.scores, plain.scores)
    assert torch.equal(tiled.labels, plain.labels) and torch.equal(tiled.masks, plain.masks)


def test_tiles_without_overlap_are_the_model_on_each_tile_shifted(predictor, shared_data):
    image = _photo(shared_data, (256, 128))
    left, right = image[:, :, :128], image[:, :, 128:]
    tiled = predictor.predict([image], tile=TileSettings(128, overlap=0.0), score_thresh=0.05)[0]
    parts = predictor.predict([left, right], score_thresh=0.05)
    expected = torch.cat([parts[0].boxes, parts[1].boxes + torch.tensor([128.0, 0, 128, 0])])
    scores = torch.cat([parts[0].scores, parts[1].scores])
    order = torch.argsort(scores, descending=True, stable=True)
    assert len(tiled) == len(expected) > 0  # no shared pixels: nothing to merge
    assert torch.equal(tiled.boxes, expected[order]) and torch.equal(tiled.scores, scores[order])
    right_masks = tiled.masks[:, :, 128:][order >= len(parts[0])]
    assert torch.equal(right_masks, parts[1].masks[order[order >= len(parts[0])] - len(parts[0])])


def test_predict_command_and_evaluation_tile(predictor, tiny_weights, shared_data, tmp_path, capsys):
    from maskrcnn import cli
    from maskrcnn.data.shapes import ShapesDataset
    from maskrcnn.evaluation.coco_eval import evaluate_model
    from maskrcnn.predict_records import detections_to_coco

    photo = shared_data / "coco-mini/val2017/000000000139.jpg"
    args = ["predict", "--no-progress", "--no-overlays", "--weights", str(tiny_weights), str(photo)]
    tiled = ["--tile", "480", "--tile-overlap", "0.25", "--tile-merge", "nms"]  # 2 tiles of 480 x 480
    assert cli.main([*args, "--out", str(tmp_path / "tiled"), *tiled]) == 0
    det = predictor.predict([photo], tile=TileSettings(480, overlap=0.25, merge="nms"))[0]
    ids = predictor.category_ids
    expected = detections_to_coco(det, image_id=139, file_name=photo.name, category_ids=ids)
    assert json.loads((tmp_path / "tiled" / "predictions.json").read_text()) == expected
    assert len(det) > len(predictor.predict([photo])[0])  # 2 tiles find more than the 5 of one image
    # the tile options without --tile, and a bad size: one error line each, nothing written
    for bad, message in (
        (["--tile-merge", "nms"], "--tile-merge needs --tile SIZE"),
        (["--tile", "8"], "tile size"),
    ):
        capsys.readouterr()
        assert cli.main([*args, "--out", str(tmp_path / "bad"), *bad]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()
    # evaluate with a tile (what `evaluate --tile` passes): the records are the tiled predictions
    settings = TileSettings(100, full_image=True)  # 4 tiles of 100 x 100 and the whole 128 x 128 image
    dataset = ShapesDataset(1, seed=5)
    _, records = evaluate_model(predictor, dataset, tile=settings, progress=False)
    det = predictor.predict([dataset[0].image], tile=settings)[0]
    assert len(records) == len(det) > 5
    assert [r["score"] for r in records] == [round(s, 5) for s in det.scores.tolist()]
    # `evaluate --tile ...` parses into those settings
    from maskrcnn.tiling import tile_settings

    parsed = cli.build_parser().parse_args(
        [
            "evaluate",
            "--weights",
            "w.pt",
            "--data",
            "shapes:1",
            "--out",
            "o",
            "--tile",
            "100",
            "--tile-full-image",
        ]
    )
    assert tile_settings(parsed) == settings
