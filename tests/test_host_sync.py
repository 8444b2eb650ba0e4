"""GPU readiness without a GPU (issue 18, item 5): the host-sync counter on hand-written functions,
and the syncs of one `MaskRCNN.predict` call on a batch of 2 real images, per stage, held to today's
count as a ceiling.

Updating the ceilings: when a change removes syncs, lower the numbers in CEILINGS to what the test
now prints (`pytest tests/test_host_sync.py -s` prints the table); when one adds syncs on purpose,
raise them in the same commit and say why. A failure prints the table with the source lines.
"""

from __future__ import annotations

import pytest
import torch

from maskrcnn.config import apply_overrides, get_preset
from maskrcnn.inputs import load_image
from maskrcnn.inspect.host_sync import STAGES, count_host_syncs, run_counted
from maskrcnn.model import build_model
from tests.helpers import TINY

# two landscape coco-mini images: one padded size (as `Predictor` batches them), and under 1000
# RPN boxes per image, so that torchvision's batched_nms takes the path it takes on a GPU
IMAGES = ("000000000139.jpg", "000000018575.jpg")
KEYPOINTS = [
    "model.roi_heads.mask_on=false",
    "model.roi_heads.keypoint_on=true",
    "model.roi_heads.keypoint_head_dim=32",
    "model.roi_heads.keypoint_head_convs=2",
]
# today's counts for the batch of 2 (see the module docstring to update them); where they come from:
#   rpn 3:  one .tolist() of the kept counts (size and score filters as one mask), one NMS per image
#   box 5:  per image, one where (score above the threshold and a nonempty box as one mask) and one
#           NMS; + 1 for the pooler (the per-level box counts, one .tolist())
#   mask 1: the pooler's one .tolist();  pasting 2: per image, one .tolist() of the masks' crop
#           sizes (each kept as the crop inside its box: a ragged output the host must size)
#   keypoint 2: the same 1, plus decode_keypoints' one .tolist()
#           of the detections' output sizes
CEILINGS = {
    "mask": {"rpn": 3, "box": 5, "mask": 1, "pasting": 2},
    "keypoint": {"rpn": 3, "box": 5, "keypoint": 2},
}


# ---- the counter ----------------------------------------------------------------------------------


def kinds(fn, *args) -> list[tuple[str, str]]:
    return [(e.kind, e.op) for e in count_host_syncs(fn, *args).events]


def test_counter_on_hand_written_functions() -> None:
    x = torch.arange(6.0)
    mask = x > 2
    assert kinds(lambda: x[1].item()) == [("scalar", "aten::_local_scalar_dense (item)")]
    assert kinds(lambda: int(x.max())) == [("scalar", "aten::_local_scalar_dense (__int__)")]
    assert kinds(lambda: bool(mask.any())) == [("scalar", "aten::_local_scalar_dense (__bool__)")]
    assert kinds(lambda: torch.where(mask)) == [("nonzero", "aten::nonzero")]
    assert kinds(lambda: mask.nonzero()) == [("nonzero", "aten::nonzero")]
    assert kinds(lambda: x[mask]) == [("bool-idx", "aten::index")]
    assert kinds(lambda: x.clone().masked_fill_(mask, 0)) == []  # fixed size: no wait
    assert kinds(lambda: x.clone().__setitem__(mask, 0.0)) == [("bool-idx", "aten::index_put_")]
    assert kinds(lambda: x.masked_select(mask)) == [("bool-idx", "aten::masked_select")]
    assert kinds(lambda: x.tolist()) == [("download", "Tensor.tolist()")]
    assert kinds(lambda: x.cpu()) == [("download", "Tensor.cpu()")]
    assert kinds(lambda: x.to("cpu")) == [("download", 'Tensor.to("cpu")')]
    assert kinds(lambda: torch.tensor([1.0, 2.0], device=x.device)) == [
        ("upload", "torch.tensor(host data, device=)")
    ]
    assert kinds(lambda: torch.unique(x)) == [("shape", "aten::_unique2")]
    assert kinds(lambda: x.repeat_interleave(torch.tensor([1, 2, 1, 1, 1, 1]))) == [
        ("shape", "aten::repeat_interleave")
    ]
    assert kinds(lambda: x.repeat_interleave(2)) == []


def test_pure_tensor_code_counts_nothing() -> None:
    x = torch.rand(50, 4)
    index = torch.tensor([3, 1, 4])  # made outside: a host tensor without a device is no upload

    def arithmetic():
        y = (x * 2 + 1).sigmoid().topk(5, dim=0).values
        z = torch.where(x > 0.5, x, torch.zeros_like(x))  # three arguments: elementwise
        return y.sum(), z[index], x.sort(dim=0).indices, len(x), x.shape[0]

    report, result = run_counted(arithmetic)
    assert report.total == 0, report.table()
    assert result[3] == 50


def test_events_carry_the_source_line() -> None:
    def two_syncs(t):
        keep = torch.where(t > 0)[0]
        return t[keep].sum().item()

    report = count_host_syncs(two_syncs, torch.randn(10))
    assert [e.kind for e in report.events] == ["nonzero", "scalar"]
    lines = [e.where for e in report.events]
    assert all(w.startswith("test_host_sync.py:") and w.endswith(" two_syncs") for w in lines), lines
    assert int(lines[1].split(":")[1].split()[0]) == int(lines[0].split(":")[1].split()[0]) + 1
    assert report.by_stage()["other"] == 2 and report.total == 2


# ---- one predict call ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(shared_data) -> list[torch.Tensor]:
    return [load_image(shared_data / "coco-mini/val2017" / name) for name in IMAGES]


def tiny_model(kind: str):
    torch.manual_seed(0)
    extra = KEYPOINTS if kind == "keypoint" else []
    cfg = apply_overrides(get_preset("default"), [*TINY, *extra])
    return build_model(cfg, class_names=["cat", "dog"]).eval()


@pytest.mark.parametrize("kind", ["mask", "keypoint"])
def test_predict_host_syncs_per_stage_stay_under_todays_count(kind, images) -> None:
    model = tiny_model(kind)
    expected = model.predict(images)
    report, detections = run_counted(model.predict, images)
    print(f"\n{kind} model, batch of {len(images)}:\n{report.table()}")
    # the counter changes nothing: same detections as without it
    assert [len(d.boxes) for d in detections] == [len(d.boxes) for d in expected]
    assert all(len(d.boxes) > 0 for d in detections), "no detections: the branches would not run"
    for got, want in zip(detections, expected):
        assert torch.equal(got.boxes, want.boxes) and torch.equal(got.labels, want.labels)
    # counts as a GPU would run this: no CPU-only branch took part, every event has its stage
    assert report.cpu_only == [], report.table()
    stages = report.by_stage()
    assert stages["other"] == 0, report.table()
    # NMS waits for the host by nature (its output size): at least one in the RPN and box stages
    # (today one per image; one per batch with ops.nms.batched_nms_over_images)
    nms = [e.stage for e in report.events if e.op == "torchvision::nms"]
    assert 1 <= nms.count("rpn") <= len(images) and 1 <= nms.count("box") <= len(images), report.table()
    ceilings = CEILINGS[kind]
    over = {s: (stages[s], ceilings.get(s, 0)) for s in STAGES if stages[s] > ceilings.get(s, 0)}
    assert not over, f"host syncs over the ceiling (count, ceiling): {over}\n{report.table()}"
    branch_stage = "mask" if kind == "mask" else "keypoint"
    assert stages[branch_stage] > 0, "the branch's pooler ran without being counted"
