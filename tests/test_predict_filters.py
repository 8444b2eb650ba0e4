"""`maskrcnn predict --classes/--score-thresh` with a model whose category ids differ from its labels.

The model predicts two classes, label 1 "dog" (category id 18) and label 2 "cat" (category id 17),
the dataset's ids in the other order, so a filter that confuses labels with category ids keeps the
wrong records. Each filtered run must give exactly the full run's records of that class / above
that score: same boxes, scores and masks (RLE), in the same order.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from maskrcnn import cli
from maskrcnn.config import apply_overrides, get_preset
from maskrcnn.engine.checkpoint import atomic_save, model_state
from maskrcnn.model import build_model
from tests.helpers import TINY

VAL = "coco-mini/val2017"
NAMES, CATEGORY_IDS = ["dog", "cat"], [18, 17]  # label 1 <-> 18, label 2 <-> 17


def _decisive(state: dict[str, torch.Tensor]) -> None:
    """Make the class scores depend strongly on the RoI, so both classes are predicted, with scores
    spread from ~0.1 to ~0.7: scale the class-score layer and point class 2 away from class 1."""
    (key,) = [k for k, v in state.items() if v.ndim == 2 and v.shape == (3, 64)]  # (K + 1, fc_dim)
    weight = state[key] * 30.0
    gen = torch.Generator().manual_seed(2)
    weight[2] = -weight[1] + torch.randn(64, generator=gen) * weight[1].std() * 0.5
    state[key] = weight


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = apply_overrides(get_preset("default"), [*TINY, "model.roi_heads.detections_per_image=12"])
    state = model_state(build_model(cfg, class_names=NAMES))
    _decisive(state["model"])
    state["category_ids"] = CATEGORY_IDS
    path = tmp_path_factory.mktemp("weights") / "two_classes.pt"
    atomic_save(state, path)
    return path


@pytest.fixture(scope="module")
def images(shared_data) -> list[Path]:
    return sorted((shared_data / VAL).iterdir())[:2]


def _run(weights: Path, images: list[Path], out: Path, *options: str) -> list[dict]:
    argv = ["predict", "--no-progress", "--no-overlays", "--weights", str(weights), "--out", str(out)]
    assert cli.main([*argv, *options, *map(str, images)]) == 0
    return json.loads((out / "predictions.json").read_text())


@pytest.fixture(scope="module")
def everything(weights, images, tmp_path_factory) -> list[dict]:
    records = _run(weights, images, tmp_path_factory.mktemp("all"))
    by_category = {c: sum(r["category_id"] == c for r in records) for c in CATEGORY_IDS}
    assert set({r["category_id"] for r in records}) == {17, 18}, by_category
    assert min(by_category.values()) >= 3, f"both classes must be predicted several times: {by_category}"
    assert {r["file_name"] for r in records} == {p.name for p in images}
    return records


def _score_cut(records: list[dict]) -> float:
    """A threshold between two distinct scores near the median, with records on both sides."""
    scores = sorted({r["score"] for r in records})
    middle = len(scores) // 2
    return round((scores[middle - 1] + scores[middle]) / 2, 6)


def _assert_filtered(kept: list[dict], everything: list[dict], keep) -> None:
    expected = [r for r in everything if keep(r)]
    assert 0 < len(expected) < len(everything), "the filter must keep some records and drop others"
    assert kept == expected  # boxes, scores, masks and order included


def test_the_model_scores_both_sides_of_the_cut(everything):
    cut = _score_cut(everything)
    assert 0.1 < cut < 0.9
    assert any(r["score"] < cut for r in everything) and any(r["score"] >= cut for r in everything)
    # records of both classes on both sides of the cut: the combined filter is not a plain prefix
    for category in CATEGORY_IDS:
        scores = [r["score"] for r in everything if r["category_id"] == category]
        assert min(scores) < cut <= max(scores), (category, scores, cut)


@pytest.mark.parametrize(
    "option, category",
    [
        ("18", 18),  # a category id (the dataset's id of label 1)
        ("17", 17),  # a category id that equals no label: a filter reading it as a label fails
        ("cat", 17),  # the class name of label 2
        ("CAT", 17),  # names match ignoring case
    ],
)
def test_class_filter_keeps_exactly_that_class(weights, images, everything, tmp_path, option, category):
    kept = _run(weights, images, tmp_path, "--classes", option)
    assert {r["category_id"] for r in kept} == {category}
    _assert_filtered(kept, everything, lambda r: r["category_id"] == category)


def test_score_filter_keeps_exactly_the_records_above(weights, images, everything, tmp_path):
    cut = _score_cut(everything)
    kept = _run(weights, images, tmp_path, "--score-thresh", str(cut))
    _assert_filtered(kept, everything, lambda r: r["score"] >= cut)


def test_class_and_score_filters_combined(weights, images, everything, tmp_path):
    cut = _score_cut(everything)
    kept = _run(weights, images, tmp_path, "--score-thresh", str(cut), "--classes", "cat")
    _assert_filtered(kept, everything, lambda r: r["category_id"] == 17 and r["score"] >= cut)
    # both classes by name and id, comma-separated: everything above the cut
    both = _run(weights, images, tmp_path / "both", "--score-thresh", str(cut), "--classes", "dog,17")
    _assert_filtered(both, everything, lambda r: r["score"] >= cut)


def test_unknown_class_is_a_one_line_error(weights, images, tmp_path, capsys):
    # 2 is a label of the model but not one of its category ids
    argv = ["predict", "--no-progress", "--weights", str(weights), "--out", str(tmp_path), "--classes", "2"]
    assert cli.main([*argv, str(images[0])]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "'2'" in err and "Traceback" not in err
    assert not (tmp_path / "predictions.json").exists()
