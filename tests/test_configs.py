"""configs/: every YAML file loads, builds a model, and documents a `maskrcnn train` command whose
../shared/data specs exist; the small-data configs run one real training step on their own data; the
fine-tuning recipe starts from the COCO weights by name (served by a local mirror)."""

from __future__ import annotations

import math
import re
import shlex

import pytest
import torch

from maskrcnn.config import apply_overrides, load_config
from maskrcnn.data.specs import build_dataset
from maskrcnn.engine.train import Trainer
from maskrcnn.model import build_model
from tests.helpers import REPO_ROOT, SHARED_DATA

CONFIGS = REPO_ROOT / "configs"
FILES = sorted(p.name for p in CONFIGS.glob("*.yaml"))
SMALL_DATA = {
    "balloon.yaml": ["object"],
    "balloon_finetune.yaml": ["object"],
    "nuclei.yaml": ["object"],
}  # class names of their ../shared/data
FAST = [  # one step on the CPU in seconds: small inputs, one image, no worker processes
    "model.input.min_size=[160]",
    "model.input.max_size=192",
    "solver.ims_per_batch=1",
    "data.num_workers=0",
    "train.device=cpu",
]


def header(name: str) -> str:
    """The leading comment block of a config, without the '#' marks, continuation lines joined."""
    lines = []
    for line in (CONFIGS / name).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return re.sub(r"\\\s+", " ", "\n".join(lines))


def documented_specs(name: str) -> dict[str, str]:
    """--train-data / --val-data of the first documented `maskrcnn train` command."""
    command = next(line for line in header(name).splitlines() if "maskrcnn train" in line)
    words = shlex.split(command)
    assert words[words.index("--config") + 1] == f"configs/{name}"
    specs = {w: words[i + 1] for i, w in enumerate(words) if w in ("--train-data", "--val-data")}
    assert "--train-data" in specs and "--out" in words
    return specs


def test_the_expected_configs_are_there():
    assert FILES == [
        "balloon.yaml",
        "balloon_finetune.yaml",
        "coco_lsj.yaml",
        "coco_r50_fpn_1x.yaml",
        "nuclei.yaml",
    ]


@pytest.mark.parametrize("name", FILES)
def test_config_loads_and_builds_a_model(name):
    cfg = load_config(CONFIGS / name)
    text = (CONFIGS / name).read_text()
    assert re.search(r"^preset: \w+$", text, re.M), "a config starts from a preset"
    torch.manual_seed(0)
    model = build_model(cfg, class_names=["thing"] if name in SMALL_DATA else None)
    assert model.config == cfg
    assert sum(p.numel() for p in model.parameters()) > 20_000_000  # a ResNet-50-FPN Mask R-CNN
    documented_specs(name)  # the header shows the command line


def test_coco_schedules_are_the_published_ones():
    one_x = load_config(CONFIGS / "coco_r50_fpn_1x.yaml")
    s = one_x.solver
    assert (s.max_iter, s.base_lr, s.ims_per_batch, s.steps, s.warmup_iters) == (
        90000,
        0.02,
        16,
        (60000, 80000),
        1000,
    )
    assert one_x.model.input.min_size == (640, 672, 704, 736, 768, 800) and not one_x.data.lsj
    lsj = load_config(CONFIGS / "coco_lsj.yaml")
    s = lsj.solver
    assert (s.max_iter, s.base_lr, s.ims_per_batch, s.weight_decay) == (184375, 0.1, 64, 4e-5)
    assert s.max_iter * s.ims_per_batch / 118_287 == pytest.approx(100, abs=0.5)  # epochs of train2017
    assert lsj.data.lsj and lsj.data.lsj_size == 1024 and tuple(lsj.data.lsj_scale) == (0.1, 2.0)
    assert lsj.model.input.min_size == (1024,) and lsj.model.input.max_size == 1024
    assert lsj.model.backbone.norm == "bn" and lsj.model.backbone.frozen_stages == 0


@pytest.mark.parametrize("name", sorted(SMALL_DATA))
def test_small_data_config_trains_one_step_on_its_data(name, shared_data, tmp_path):
    specs = documented_specs(name)
    for spec in specs.values():
        assert "../shared/data/" in spec
        dataset = build_dataset(spec.replace("../shared/data", str(SHARED_DATA)))
        assert dataset.class_names and len(dataset) > 0
    train_spec = specs["--train-data"].replace("../shared/data", str(SHARED_DATA))
    cfg = apply_overrides(load_config(CONFIGS / name), FAST)
    trainer = Trainer(cfg, train_data=train_spec, out_dir=tmp_path / "run", progress=False)
    try:
        assert trainer.cfg.model.num_classes == 1
        assert trainer.model.class_names == list(trainer.dataset.class_names) == SMALL_DATA[name]
        before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
        images, targets = next(trainer.batches())
        assert len(images) == 1 and len(targets[0].boxes) > 0  # a real annotated image
        losses = trainer.step(images, targets)
    finally:
        trainer.close()
    assert losses is not None and set(losses) >= {"loss_mask", "loss_rpn_cls"}
    assert all(math.isfinite(v) and v > 0 for v in losses.values()), losses
    changed = [k for k, v in trainer.model.named_parameters() if not torch.equal(v, before[k])]
    if cfg.model.backbone.frozen_stages == 0:
        assert "backbone.body.conv1.weight" in changed  # nothing frozen: the stem learns too
    else:  # the fine-tuning recipe: stem and res2 frozen (frozen BN: no norm parameters at all)
        assert not any(k.startswith(("backbone.body.conv1", "backbone.body.layer1.")) for k in changed)
        assert "backbone.body.layer2.0.conv1.weight" in changed
    assert any(k.startswith("backbone.fpn") for k in changed) and any("mask" in k for k in changed)


def test_readme_mentions_configs():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "configs/" in readme and all(f"configs/{name}" in readme for name in FILES)


def test_balloon_finetune_starts_from_the_coco_weights_by_name(shared_data, tmp_path, monkeypatch):
    """The recipe's architecture is the COCO checkpoint's: every tensor loads (strict), the class
    layers are remapped (COCO has no balloon: background carried, the balloon rows fresh)."""
    import hashlib

    from torchvision.models.detection import maskrcnn_resnet50_fpn

    from maskrcnn import weights

    entry = weights.REGISTRY["maskrcnn_resnet50_fpn_coco"]
    torch.manual_seed(0)
    tv = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    # the published file's layout: frozen BatchNorms, which have no step counters
    tv = {k: v for k, v in tv.items() if not k.endswith("num_batches_tracked")}
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    torch.save(tv, mirror / entry.file_name)
    digest = hashlib.sha256((mirror / entry.file_name).read_bytes()).hexdigest()
    (mirror / "SHA256SUMS").write_text(f"{digest}  {entry.file_name}\n")
    monkeypatch.setenv("MASKRCNN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(weights.MIRROR_ENV, str(mirror))
    cfg = apply_overrides(load_config(CONFIGS / "balloon_finetune.yaml"), FAST)
    assert cfg.train.init == "maskrcnn_resnet50_fpn_coco"
    spec = documented_specs("balloon_finetune.yaml")["--train-data"].replace(
        "../shared/data", str(SHARED_DATA)
    )
    trainer = Trainer(cfg, train_data=spec, out_dir=tmp_path / "run", progress=False)
    try:
        report = trainer.initialize()
        state = trainer.model.state_dict()
    finally:
        trainer.close()
    counts = report["counts"]
    assert (counts["remapped"], counts["classes_carried"], counts["new"], counts["skipped"]) == (6, 0, 0, 0)
    assert counts["loaded"] == len(state) - 6 and counts["unused"] == 0 and report["config_differences"] == []
    assert torch.equal(
        state["backbone.body.layer3.5.conv2.weight"], tv["backbone.body.layer3.5.conv2.weight"]
    )
    score = "roi_heads.box.predictor.cls_score.weight"
    assert torch.equal(state[score][0], tv["roi_heads.box_predictor.cls_score.weight"][0])  # background
    assert (tmp_path / "run/init_report.json").is_file()
