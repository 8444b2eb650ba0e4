"""Configuration: frozen dataclasses, presets, YAML load/save and `key=value` overrides.

Only `maskrcnn.model.build_model(cfg)` (and the training engine) read a Config; every module
takes explicit keyword arguments.

Presets
- `torchvision_v1`: reproduces torchvision's `maskrcnn_resnet50_fpn` (the 2017 paper's model).
- `torchvision_v2`: reproduces torchvision's `maskrcnn_resnet50_fpn_v2` (BN everywhere, conv box head).
- `default`: our recommendation: v1 plus pixel-aligned RoIAlign (no half-pixel shift) with adaptive
  sampling, as in detectron2.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from .errors import UserError, UserKeyError


@dataclass(frozen=True)
class InputConfig:
    min_size: tuple[int, ...] = (800,)  # shorter side; several values = random choice while training
    max_size: int = 1333  # cap on the longer side
    size_divisible: int = 32
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneConfig:
    depth: int = 50  # 18, 34, 50 or 101
    norm: str = "frozen_bn"  # frozen_bn | bn | gn
    frozen_stages: int = 1  # 0: nothing frozen; 1: stem; 2: stem + res2; ... 5: everything
    fpn_channels: int = 256
    fpn_norm: str = "none"  # none | bn | gn
    width: int = 64  # channels of the stem (scales every stage)
    # ImageNet weights `maskrcnn train` starts the ResNet from: a name (resnet50_imagenet, ...: see
    # `maskrcnn weights`), a path or a URL; "" = random initialisation. build_model does not read it.
    weights: str = ""
    frozen_bn_eps: float = 1e-5  # torchvision's published COCO checkpoints were trained with 0.0


@dataclass(frozen=True)
class AnchorConfig:
    sizes: tuple[int, ...] = (32, 64, 128, 256, 512)  # one size per level P2..P6
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)  # height / width
    # torchvision's rule: stride = padded image size // feature size (not 64 on P6 for odd multiples of 32)
    image_size_strides: bool = False


@dataclass(frozen=True)
class RPNConfig:
    num_convs: int = 1
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.3
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    pre_nms_topk_train: int = 2000  # per level and image
    pre_nms_topk_test: int = 1000
    post_nms_topk_train: int = 2000  # per image
    post_nms_topk_test: int = 1000
    nms_thresh: float = 0.7
    min_size: float = 1e-3
    score_thresh: float = 0.0
    box_loss: str = "smooth_l1"  # smooth_l1 | l1
    smooth_l1_beta: float = 1.0 / 9


@dataclass(frozen=True)
class RoIHeadsConfig:
    pooler: str = "roi_align"  # roi_align | roi_pool
    aligned: bool = False
    sampling_ratio: int = 2  # 0 = adaptive
    roi_align_impl: str = "auto"  # auto: sparse on CPU fp32, else torchvision | torchvision | sparse
    canonical_box_size: int = 224
    canonical_level: int = 4
    box_head: str = "fc"  # fc: 2 FC (paper) | conv: 4 conv + 1 FC (torchvision v2)
    box_head_norm: str = "none"  # none | bn | gn (conv head only)
    fc_dim: int = 1024
    box_conv_dim: int = 256  # conv box head only
    fg_iou_thresh: float = 0.5
    bg_iou_thresh: float = 0.5
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25
    box_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    box_loss: str = "smooth_l1"  # smooth_l1 | l1
    smooth_l1_beta: float = 1.0 / 9
    score_thresh: float = 0.05
    nms_thresh: float = 0.5
    detections_per_image: int = 100
    mask_on: bool = True  # the mask branch (False: Faster R-CNN, boxes only)
    mask_head_norm: str = "none"
    mask_head_dim: int = 256
    mask_head_convs: int = 4
    mask_pool_size: int = 14  # mask logits are 2x this (28)
    class_agnostic_mask: bool = False
    mask_loss: str = "sigmoid"  # sigmoid (paper) | softmax (the paper's ablation)
    mask_threshold: float = 0.5
    keypoint_on: bool = False  # the keypoint branch (Mask R-CNN §5, human pose)
    num_keypoints: int = 17
    keypoint_pool_size: int = 14  # heatmaps are 4x this (56)
    keypoint_head_dim: int = 512
    keypoint_head_convs: int = 8


@dataclass(frozen=True)
class KeypointConfig:
    """What the keypoints of a model with the keypoint branch are (its metadata, like class names).
    Empty fields take COCO's person keypoints when roi_heads.num_keypoints is 17."""

    names: tuple[str, ...] = ()  # J names, e.g. nose, left_eye, ...
    skeleton: tuple[tuple[int, int], ...] = ()  # pairs of 1-based keypoint indices (COCO's convention)
    oks_sigmas: tuple[float, ...] = ()  # per-keypoint OKS sigmas of COCO keypoint AP
    flip_map: tuple[tuple[int, int], ...] = ()  # 0-based pairs a horizontal flip swaps; empty: left_*/right_*


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int = 90  # foreground classes K (COCO with torchvision's 91-slot label space: 90)
    input: InputConfig = field(default_factory=InputConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_heads: RoIHeadsConfig = field(default_factory=RoIHeadsConfig)
    keypoints: KeypointConfig = field(default_factory=KeypointConfig)


@dataclass(frozen=True)
class SolverConfig:
    optimizer: str = "sgd"  # sgd | adamw
    base_lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_norm: float = 0.0
    no_decay_on_norm_and_bias: bool = False
    ims_per_batch: int = 16
    max_iter: int = 90000
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    schedule: str = "multistep"  # multistep | cosine
    steps: tuple[int, ...] = (60000, 80000)
    gamma: float = 0.1
    clip_grad_norm: float = 0.0  # 0 = off
    amp: bool = False  # bf16 autocast on GPU
    max_nonfinite_steps: int = 5


@dataclass(frozen=True)
class DataConfig:
    hflip_prob: float = 0.5
    lsj: bool = False  # large-scale jitter
    lsj_size: int = 1024
    lsj_scale: tuple[float, float] = (0.1, 2.0)
    num_workers: int = 2
    aspect_ratio_grouping: bool = True


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    checkpoint_period: int = 5000
    eval_period: int = 0  # 0 = only at the end
    log_period: int = 20
    device: str = "auto"


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def replace(cfg: Any, **changes: Any) -> Any:
    return dataclasses.replace(cfg, **changes)


def _with_heads(cfg: Config, **roi_changes: Any) -> Config:
    model = replace(cfg.model, roi_heads=replace(cfg.model.roi_heads, **roi_changes))
    return replace(cfg, model=model)


def torchvision_v1() -> Config:
    """torchvision `maskrcnn_resnet50_fpn` (pretrained layout: frozen BN, stem + res2 frozen).

    The torchvision presets pool with torchvision's RoIAlign kernels, so outputs are bit-identical.
    """
    return Config(
        model=ModelConfig(
            backbone=BackboneConfig(frozen_stages=2),
            anchors=AnchorConfig(image_size_strides=True),
            roi_heads=RoIHeadsConfig(roi_align_impl="torchvision"),
        )
    )


def torchvision_v2() -> Config:
    """torchvision `maskrcnn_resnet50_fpn_v2`: BN in backbone, FPN and heads; 2-conv RPN head."""
    model = ModelConfig(
        backbone=BackboneConfig(norm="bn", fpn_norm="bn", frozen_stages=2),
        anchors=AnchorConfig(image_size_strides=True),
        rpn=RPNConfig(num_convs=2),
        roi_heads=RoIHeadsConfig(
            box_head="conv", box_head_norm="bn", mask_head_norm="bn", roi_align_impl="torchvision"
        ),
    )
    return Config(model=model)


def torchvision_keypoint() -> Config:
    """torchvision `keypointrcnn_resnet50_fpn`: person + background, 17 COCO keypoints, no mask
    branch; trained on shorter sides 640..800 (800 at inference)."""
    cfg = torchvision_v1()
    model = replace(
        cfg.model,
        num_classes=1,
        input=InputConfig(min_size=(640, 672, 704, 736, 768, 800)),
        roi_heads=replace(cfg.model.roi_heads, mask_on=False, keypoint_on=True),
    )
    return replace(cfg, model=model)


def default() -> Config:
    cfg = torchvision_v1()
    cfg = replace(cfg, model=replace(cfg.model, anchors=AnchorConfig()))
    return _with_heads(cfg, aligned=True, sampling_ratio=0, roi_align_impl="auto")


def shapes_demo() -> Config:
    """A small ResNet-18-FPN for the built-in demo: 128×128 synthetic shapes, trained on 2 CPU cores."""
    model = ModelConfig(
        num_classes=3,
        input=InputConfig(min_size=(128,), max_size=128),
        backbone=BackboneConfig(depth=18, norm="bn", frozen_stages=0, fpn_channels=64, width=32),
        anchors=AnchorConfig(sizes=(12, 24, 48, 96, 192)),
        rpn=RPNConfig(
            pre_nms_topk_train=600,
            post_nms_topk_train=300,
            pre_nms_topk_test=300,
            post_nms_topk_test=100,
            batch_size_per_image=128,
        ),
        roi_heads=RoIHeadsConfig(
            aligned=True,
            sampling_ratio=2,
            fc_dim=256,
            batch_size_per_image=64,
            mask_head_dim=64,
            detections_per_image=20,
        ),
    )
    # AdamW reaches in 250 iterations the loss SGD (lr 0.02) reaches in 400 when training from scratch
    solver = SolverConfig(
        optimizer="adamw",
        base_lr=0.001,
        weight_decay=0.05,
        ims_per_batch=8,
        max_iter=500,
        warmup_iters=30,
        steps=(400, 470),
        clip_grad_norm=10.0,
    )
    data = DataConfig(num_workers=1)
    train = TrainConfig(checkpoint_period=200, log_period=10, device="cpu")
    return Config(model=model, solver=solver, data=data, train=train)


def shapes_keypoints() -> Config:
    """The keypoint demo (`maskrcnn demo --keypoints`): shapes_demo's network with a small keypoint
    branch instead of the mask branch, for the 4 corner keypoints of the synthetic shapes (names and
    skeleton come from the dataset). OKS sigma 0.1 for each corner, about COCO's largest (the hips'
    0.107): the corners are sharp, but the shapes are small (20 to 60 px), so that one pixel is
    already 2 to 5 % of their scale."""
    cfg = shapes_demo()
    heads = replace(
        cfg.model.roi_heads,
        mask_on=False,
        keypoint_on=True,
        num_keypoints=4,
        keypoint_head_dim=64,
        keypoint_head_convs=4,
    )
    keypoints = KeypointConfig(oks_sigmas=(0.1, 0.1, 0.1, 0.1))
    return replace(cfg, model=replace(cfg.model, roi_heads=heads, keypoints=keypoints))


PRESETS = {
    "default": default,
    "torchvision_v1": torchvision_v1,
    "torchvision_v2": torchvision_v2,
    "torchvision_keypoint": torchvision_keypoint,
    "shapes_demo": shapes_demo,
    "shapes_keypoints": shapes_keypoints,
}


def get_preset(name: str) -> Config:
    if name not in PRESETS:
        raise UserKeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


# ---------------------------------------------------------------- dict / YAML conversion


def to_dict(cfg: Any) -> dict:
    out = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            out[f.name] = to_dict(value)
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


# PyYAML follows YAML 1.1, which reads `1e-3` (no dot) as a string: such strings count as numbers
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _as_number(value: Any) -> Any:
    if isinstance(value, str) and _NUMBER.match(value.strip()):
        return float(value)
    return value


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    if get_origin(annotation) is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        args = get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[int, ...]: any length
            element_types = [args[0]] * len(value)
        else:  # tuple[float, float]: exactly that many
            if len(value) != len(args):
                raise UserError(f"{where}: expected a list of {len(args)} values, got {list(value)!r}")
            element_types = list(args)
        return tuple(_coerce(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, element_types)))
    if annotation is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        value = _as_number(value)
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (isinstance(value, float) and not value.is_integer())
        ):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if annotation is float:
        value = _as_number(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def from_dict(data: dict, cls: type = Config, base: Any = None, where: str = "") -> Any:
    """Build `cls` from a (possibly partial) dict on top of `base` (default: cls())."""
    base = cls() if base is None else base
    if not isinstance(data, dict):
        raise UserError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    changes = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in names:
            raise UserKeyError(f"unknown config key {path!r}; valid keys here: {sorted(names)}")
        current = getattr(base, key)
        if is_dataclass(current):
            changes[key] = from_dict(value, type(current), current, path)
        else:
            changes[key] = _coerce(value, hints[key], path)
    return dataclasses.replace(base, **changes)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply `a.b.c=value` strings; values are parsed as YAML (numbers, lists, booleans)."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override {item!r} must look like key=value (e.g. solver.base_lr=0.01)")
        key, raw = item.split("=", 1)
        nested: dict = {}
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise UserError(f"override {item!r}: the value is not valid YAML ({_yaml_problem(e)})") from e
        cfg = from_dict(nested, Config, cfg)
    return cfg


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML parse error on one line: what is wrong and where."""
    mark = getattr(error, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{getattr(error, 'problem', None) or error}{where}"


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load a YAML file. A top-level `preset:` key picks the base the file's keys change."""
    with open(path) as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise UserError(f"config file {path} is not valid YAML: {_yaml_problem(e)}") from e
    preset = data.pop("preset", "default") if isinstance(data, dict) else "default"
    cfg = from_dict(data, Config, get_preset(preset))
    return apply_overrides(cfg, overrides or [])


def config_yaml(cfg: Config) -> str:
    """The YAML text of a config (what `save_config` writes, `load_config` reads)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(config_yaml(cfg))


def resolve(spec: str | None, overrides: list[str] | None = None) -> Config:
    """A preset name or a YAML path, plus overrides."""
    spec = spec or "default"
    if spec not in PRESETS and not Path(spec).is_file():
        raise FileNotFoundError(f"config {spec!r} is neither a preset {sorted(PRESETS)} nor a YAML file")
    cfg = get_preset(spec) if spec in PRESETS else load_config(spec)
    return apply_overrides(cfg, overrides or [])
