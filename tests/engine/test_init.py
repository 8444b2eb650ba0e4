"""Fine-tuning: `train --init W` remaps the class-specific layers by class name and loads the rest
(real coco-mini images and annotations as the training data, tiny networks), refuses another
architecture, `init_strict=false`, `--resume` over `--init`, a torchvision state dict as W, keypoint
channels by keypoint name, rank 0's initialisation on every rank of a 2-process gloo group, a W
that would run code (refused, nothing runs); `train.freeze` keeps the frozen parts bit-identical
while the rest trains."""

from __future__ import annotations

import json
import os
import pickle
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maskrcnn.checkpoints import load_model, read_checkpoint
from maskrcnn.cli import main
from maskrcnn.config import apply_overrides, get_preset
from maskrcnn.engine.checkpoint import save_model
from maskrcnn.engine.freeze import set_train_mode
from maskrcnn.engine.init import init_model
from maskrcnn.engine.train import Trainer, train
from maskrcnn.inputs import load_image
from maskrcnn.model import build_model
from tests.helpers import TINY_NET, coco_data, run, single_thread_env, train_args

NET = [*TINY_NET, "data.num_workers=0", "train.log_period=1", "solver.ims_per_batch=2"]
CLASS_SPECIFIC = (
    "roi_heads.box.predictor.cls_score.",
    "roi_heads.box.predictor.bbox_pred.",
    "roi_heads.mask.head.predictor.",
)


def tiny_cfg(*extra: str):
    return apply_overrides(get_preset("shapes_demo"), [*NET, *extra])


def source_checkpoint(path: Path, names: list[str], *, seed: int = 7, extra=()) -> dict:
    """A tiny random model of these classes, made decisive (sharp class scores, spread box deltas and
    mask logits, as a trained model's), saved as our checkpoint; -> its state dict."""
    cfg = tiny_cfg(f"model.num_classes={len(names)}", *extra)
    torch.manual_seed(seed)
    model = build_model(cfg, class_names=names)
    with torch.no_grad():
        model.roi_heads.box.predictor.cls_score.weight.mul_(40)
        model.roi_heads.box.predictor.bbox_pred.weight.mul_(30)
        if cfg.model.roi_heads.mask_on:
            model.roi_heads.mask.head.predictor.weight.mul_(10)
    save_model(model, path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def rows(name: str, tensor: torch.Tensor, slot: int, *, mask_has_background: bool = False) -> torch.Tensor:
    """The rows of class slot `slot` (0 = background, 1..K the classes) of a class-specific tensor."""
    if "bbox_pred" in name:
        return tensor[4 * slot : 4 * slot + 4]
    if "mask" in name and not mask_has_background:
        return tensor[slot - 1]
    return tensor[slot]


def test_classes_a_b_c_initialise_c_d_by_name(shared_data, tmp_path):
    src = source_checkpoint(tmp_path / "w.pt", ["dog", "bed", "Chair"])  # a, b, c (case differs)
    spec = coco_data(shared_data, tmp_path / "cd.json", ["chair", "person"])  # c, d
    cfg = tiny_cfg(f"train.init={tmp_path / 'w.pt'}")
    trainer = Trainer(cfg, train_data=spec, out_dir=tmp_path / "run", progress=False)
    try:
        assert trainer.model.class_names == ["chair", "person"]
        torch.manual_seed(cfg.train.seed)  # the fresh model of a run from scratch
        fresh = build_model(trainer.cfg, class_names=["chair", "person"]).state_dict()
        trainer.initialize()
        got = trainer.model.state_dict()
    finally:
        trainer.close()
    assert got.keys() == src.keys()
    for name, value in got.items():
        if not name.startswith(CLASS_SPECIFIC):
            assert torch.equal(value, src[name]), name
            continue
        # background: W's; chair (label 1) <- W's Chair (label 3); person (label 2): fresh
        assert "mask" in name or torch.equal(rows(name, value, 0), rows(name, src[name], 0)), name
        assert torch.equal(rows(name, value, 1), rows(name, src[name], 3)), name
        assert torch.equal(rows(name, value, 2), rows(name, fresh[name], 2)), name
        if name.endswith("weight"):  # (biases start at 0 in both)
            assert not torch.equal(rows(name, value, 2), rows(name, src[name], 2)), name
    report = json.loads((tmp_path / "run/init_report.json").read_text())
    assert report["classes"] == [
        {"name": "chair", "label": 1, "from": "Chair"},
        {"name": "person", "label": 2, "from": None},
    ]
    fates = report["tensors"]
    assert fates.keys() == got.keys()
    remapped = {k for k, v in fates.items() if v["fate"] == "remapped"}
    assert remapped == {k for k in got if k.startswith(CLASS_SPECIFIC)} and len(remapped) == 6
    assert all(fates[k]["fresh"] == ["person"] and "chair" in fates[k]["carried"] for k in remapped)
    assert {v["fate"] for k, v in fates.items() if k not in remapped} == {"loaded"}
    counts = report["counts"]
    assert (counts["loaded"], counts["remapped"], counts["classes_carried"]) == (len(got) - 6, 6, 1)
    assert counts["new"] == counts["skipped"] == counts["unused"] == 0 and report["skipped"] == []


def detections(model, images) -> list[list[tuple]]:
    """Per image: (class name, score, box, mask pixels) of every detection, best score first."""
    out = []
    with torch.no_grad():
        for det in model.predict(images):
            names = [model.class_names[int(label) - 1] for label in det.labels]
            found = zip(names, det.scores.tolist(), det.boxes, det.masks)
            out.append(sorted(found, key=lambda d: -d[1]))
    return out


def test_all_classes_shared_in_another_order_give_the_same_detections(shared_data, tmp_path):
    names = ["chair", "person", "dog"]
    source_checkpoint(tmp_path / "w.pt", names)
    spec = coco_data(shared_data, tmp_path / "perm.json", ["dog", "chair", "person"])
    out = tmp_path / "run"
    result = run(
        "train", "--config", "shapes_demo", "--train-data", spec, "--out", str(out), "--no-progress",
        "--init", str(tmp_path / "w.pt"), *NET, "solver.max_iter=0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("init:")]
    assert len(lines) == 1 and "remapped with 3 of 3 classes carried (dog, chair, person)" in lines[0]
    assert "0 newly initialised, 0 unused" in lines[0]
    source, tuned = load_model(tmp_path / "w.pt"), load_model(out / "model_final.pt")
    assert tuned.class_names == ["dog", "chair", "person"]
    folder = shared_data / "coco-mini/val2017"
    images = [load_image(p) for p in sorted(folder.glob("*.jpg"))[:4]]
    want, got = detections(source, images), detections(tuned, images)
    assert sum(len(d) for d in want) >= 20  # the decisive random model detects things
    assert len({d[0] for image in want for d in image}) >= 2  # of classes with other labels here
    for a, b in zip(want, got):
        assert [d[0] for d in a] == [d[0] for d in b]  # the same labels, by name
        for (_, score_a, box_a, mask_a), (_, score_b, box_b, mask_b) in zip(a, b):
            assert abs(score_a - score_b) < 1e-5
            assert torch.allclose(box_a, box_b, atol=1e-3)
            assert (mask_a != mask_b).float().mean() < 1e-3


def test_another_architecture_is_one_error_line_and_init_strict_false_loads_what_fits(tmp_path):
    source_checkpoint(tmp_path / "w.pt", ["square", "circle", "triangle"])  # the shapes' classes
    wider = ["model.backbone.width=32", "model.roi_heads.mask_head_convs=3"]
    result = run(
        "train", "--config", "shapes_demo", "--train-data", "shapes:8", "--out", str(tmp_path / "run"),
        "--no-progress", "--init", str(tmp_path / "w.pt"), *NET, *wider, "solver.max_iter=0",
    )  # fmt: skip
    assert result.returncode == 1
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: --init ") and "Traceback" not in result.stderr
    assert "backbone.body.conv1.weight: shape (16, 3, 7, 7) in W, (32, 3, 7, 7) here" in errors[0]
    assert "init_strict=false" in errors[0]
    assert not (tmp_path / "run/model_final.pt").exists()

    cfg = tiny_cfg(*wider, "solver.max_iter=0", f"train.init={tmp_path / 'w.pt'}", "train.init_strict=false")
    train(cfg, train_data="shapes:8", out_dir=tmp_path / "loose", progress=False)
    report = json.loads((tmp_path / "loose/init_report.json").read_text())
    fates = report["tensors"]
    assert fates["backbone.body.conv1.weight"]["fate"] == "skipped"
    assert fates["roi_heads.mask.head.convs.2.conv.weight"] == {
        "fate": "skipped",
        "shape": [32, 32, 3, 3],
        "reason": "not in W",
    }
    assert fates["backbone.fpn.output.0.conv.weight"]["fate"] == "loaded"  # 32 -> 32 channels: fits
    assert report["counts"]["skipped"] > 0 and report["counts"]["classes_carried"] == 3
    saved, src = (
        read_checkpoint(tmp_path / "loose/model_final.pt")["model"],
        read_checkpoint(tmp_path / "w.pt"),
    )
    assert torch.equal(
        saved["backbone.fpn.output.0.conv.weight"], src["model"]["backbone.fpn.output.0.conv.weight"]
    )


def test_resume_wins_over_init(tmp_path):
    w = tmp_path / "w.pt"
    source_checkpoint(w, ["square", "circle", "triangle"])
    cfg = tiny_cfg(f"train.init={w}", "solver.max_iter=1")
    out = tmp_path / "run"
    first = train(cfg, train_data="shapes:8", out_dir=out, progress=False)
    assert first["resumed_at"] is None and (out / "init_report.json").is_file()
    trained = read_checkpoint(out / "model_final.pt")["model"]
    w.unlink()  # the run resumed from RUN/checkpoint.pt never reads W
    (out / "init_report.json").unlink()
    again = train(cfg, train_data="shapes:8", out_dir=out, progress=False)  # --resume auto
    assert again["resumed_at"] == 1 and again["iterations"] == 1
    assert not (out / "init_report.json").exists()
    after = read_checkpoint(out / "model_final.pt")["model"]
    assert all(torch.equal(after[k], trained[k]) for k in trained)


def test_a_torchvision_state_dict_initialises_by_coco_name(tmp_path):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(0)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    torch.save(tv, tmp_path / "tv.pth")
    cfg = apply_overrides(get_preset("torchvision_v1"), ["model.num_classes=3"])
    model = build_model(cfg, class_names=["kite", "balloon", "Person"])
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_model(model, str(tmp_path / "tv.pth"), class_map="balloon=sports ball")
    got = model.state_dict()
    assert [c["from"] for c in report["classes"]] == ["kite", "sports ball", "person"]
    assert report["counts"]["classes_carried"] == 3 and report["counts"]["skipped"] == 0
    # torchvision's random model has trainable BatchNorms, whose counters our frozen ones lack
    assert report["unused"] and all(k.endswith("num_batches_tracked") for k in report["unused"])
    # COCO ids: kite 38, sports ball 37, person 1 (torchvision's label = COCO id; its mask
    # predictor has a background channel 0 that ours has not)
    for slot, coco_id in enumerate([0, 38, 37, 1]):
        assert torch.equal(
            got["roi_heads.box.predictor.cls_score.weight"][slot],
            tv["roi_heads.box_predictor.cls_score.weight"][coco_id],
        )
        assert torch.equal(
            got["roi_heads.box.predictor.bbox_pred.bias"][4 * slot : 4 * slot + 4],
            tv["roi_heads.box_predictor.bbox_pred.bias"][4 * coco_id : 4 * coco_id + 4],
        )
        if slot:
            assert torch.equal(
                got["roi_heads.mask.head.predictor.weight"][slot - 1],
                tv["roi_heads.mask_predictor.mask_fcn_logits.weight"][coco_id],
            )
    assert torch.equal(got["backbone.body.layer4.2.conv3.weight"], tv["backbone.body.layer4.2.conv3.weight"])
    assert torch.equal(got["rpn.head.objectness.weight"], tv["rpn.head.cls_logits.weight"])
    assert not torch.equal(
        got["backbone.body.layer4.2.conv3.weight"], fresh["backbone.body.layer4.2.conv3.weight"]
    )
    with pytest.raises(Exception, match="train.init_class_map: balloon=zeppelin: W .* has no such class"):
        init_model(model, str(tmp_path / "tv.pth"), class_map="balloon=zeppelin")


@pytest.mark.parametrize("level", ["backbone", "backbone+fpn", "backbone+fpn+rpn"])
def test_frozen_parts_stay_bit_identical_and_the_rest_trains(level, tmp_path):
    cfg = tiny_cfg(f"train.freeze={level}", "solver.ims_per_batch=2", "solver.warmup_iters=0")
    assert cfg.model.backbone.norm == "bn" and cfg.model.backbone.frozen_stages == 0
    trainer = Trainer(cfg, train_data="shapes:8", out_dir=tmp_path / "run", progress=False)
    try:
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        set_train_mode(trainer.ddp_model, level)  # as train() does
        stream = trainer.batches()
        for _ in range(3):
            assert trainer.step(*next(stream)) is not None
        optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    finally:
        trainer.close()
    prefixes = {"backbone": ("backbone.body.",), "backbone+fpn": ("backbone.",)}.get(
        level, ("backbone.", "rpn.")
    )
    after = trainer.model.state_dict()
    frozen = [k for k in after if k.startswith(prefixes)]
    assert any("running_mean" in k for k in frozen)  # BatchNorm statistics are frozen too
    assert all(torch.equal(after[k], before[k]) for k in frozen), [
        k for k in frozen if not torch.equal(after[k], before[k])
    ][:3]
    params = dict(trainer.model.named_parameters())
    trainable = [k for k in params if not k.startswith(prefixes)]
    assert all(
        not params[k].requires_grad and id(params[k]) not in optimized
        for k in params
        if k.startswith(prefixes)
    )
    unchanged = [k for k in trainable if torch.equal(after[k], before[k])]
    assert trainable and not unchanged, unchanged[:3]


DDP_SCRIPT = """
import sys, torch
from pathlib import Path
from maskrcnn.cli import main
from maskrcnn.config import apply_overrides, get_preset
from maskrcnn.distributed import init_distributed
from maskrcnn.engine.init import initialize
from maskrcnn.model import build_model
info = init_distributed("cpu")
out, w = Path(sys.argv[1]), sys.argv[2]
cfg = apply_overrides(get_preset("shapes_demo"), sys.argv[3:])
torch.manual_seed(100 + info.rank)  # other fresh weights on each rank
model = build_model(cfg, class_names=["square", "circle", "triangle"])
ddp = torch.nn.parallel.DistributedDataParallel(model)
cfg = apply_overrides(cfg, [f"train.init={w if info.rank == 0 else '/nonexistent/w.pt'}"])
initialize(model, cfg, out_dir=out, info=info, progress=False)
torch.save(model.state_dict(), out / f"rank{info.rank}.pt")
"""


def test_rank_0_initialises_every_rank(tmp_path):
    w = tmp_path / "w.pt"
    src = source_checkpoint(w, ["circle", "square", "star"])
    script = tmp_path / "ddp_init.py"
    script.write_text(DDP_SCRIPT)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(tmp_path),
        str(w),
        *TINY_NET,
    ]
    result = subprocess.run(cmd, env=single_thread_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("init: ") == 1
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert torch.equal(rank0["backbone.body.conv1.weight"], src["backbone.body.conv1.weight"])
    score = "roi_heads.box.predictor.cls_score.weight"
    assert torch.equal(rank0[score][1], src[score][2]) and torch.equal(rank0[score][2], src[score][1])


def test_keypoint_predictor_channels_follow_the_keypoint_names(tmp_path):
    """Keypoint R-CNN: the J heatmap channels (axis 1 of the transposed conv) are matched by keypoint
    name, as the classes are; a keypoint W lacks starts fresh."""
    extra = [*TINY_NET, "model.roi_heads.keypoint_head_dim=16", "model.roi_heads.keypoint_head_convs=2"]
    source_cfg = apply_overrides(get_preset("shapes_keypoints"), [*extra, "model.keypoints.names=[a,b,c,d]"])
    torch.manual_seed(1)
    source = build_model(source_cfg, class_names=["square", "circle", "triangle"])
    save_model(source, tmp_path / "kp.pt")
    target_cfg = apply_overrides(get_preset("shapes_keypoints"), [*extra, "model.keypoints.names=[D,c,e,a]"])
    torch.manual_seed(2)
    target = build_model(target_cfg, class_names=["square", "circle", "triangle"])
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    report = init_model(target, str(tmp_path / "kp.pt"))
    weight, bias = (f"roi_heads.keypoint.head.predictor.{k}" for k in ("weight", "bias"))
    assert report["tensors"][weight] == {
        "fate": "remapped",
        "shape": list(fresh[weight].shape),
        "carried": ["D", "c", "a"],
        "fresh": ["e"],
    }
    got, src = target.state_dict(), source.state_dict()
    for t, s in [(0, 3), (1, 2), (3, 0)]:
        assert torch.equal(got[weight][:, t], src[weight][:, s]) and torch.equal(got[bias][t], src[bias][s])
    assert torch.equal(got[weight][:, 2], fresh[weight][:, 2])


class Evil:
    """Unpickling it runs a shell command (the issue's payload)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".pkl"])
def test_init_from_a_file_that_would_run_code_is_refused(suffix, tmp_path, capfd):
    marker = tmp_path / "PWNED"
    payload = {"format": "maskrcnn", "version": 2, "x": Evil(f"touch {shlex.quote(str(marker))}")}
    w = tmp_path / f"evil{suffix}"
    if suffix == ".pkl":
        w.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, w, _use_new_zipfile_serialization=suffix == ".pt")
    argv = train_args(tmp_path / "run", "solver.max_iter=0", "data.num_workers=0")
    code = main([argv[0], "--init", str(w), *argv[1:]])
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"error: {w}: refused to load: it needs {os.system.__module__}.system")
    assert not marker.exists() and not (tmp_path / "run/model_final.pt").exists()
