"""Configuration: presets, YAML round trips, `key=value` overrides and their errors."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from maskrcnn.config import (
    PRESETS,
    Config,
    apply_overrides,
    from_dict,
    get_preset,
    load_config,
    rename_key,
    resolve,
    save_config,
    to_dict,
    upgrade_config,
)
from maskrcnn.errors import UserError


def differences(a, b, prefix: str = "") -> dict:
    """Leaf paths where two configs differ -> (a value, b value)."""
    out = {}
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if dataclasses.is_dataclass(x):
            out.update(differences(x, y, f"{prefix}{f.name}."))
        elif x != y:
            out[f"{prefix}{f.name}"] = (x, y)
    return out


def test_presets_differ_as_documented():
    v1, v2, default = get_preset("torchvision_v1"), get_preset("torchvision_v2"), get_preset("default")
    # v1 -> v2: BN in backbone, FPN and heads; the conv box head; two RPN convs
    assert differences(v1, v2) == {
        "model.backbone.norm": ("frozen_bn", "bn"),
        "model.backbone.fpn_norm": ("none", "bn"),
        "model.rpn.num_convs": (1, 2),
        "model.roi_heads.box_head": ("fc", "conv"),
        "model.roi_heads.box_head_norm": ("none", "bn"),
        "model.roi_heads.mask_head_norm": ("none", "bn"),
    }
    # v1 -> default: pixel-aligned RoIAlign with adaptive sampling, true anchor strides, and the
    # sparse CPU RoIAlign allowed (torchvision presets keep torchvision's kernels: bit-identical outputs)
    assert differences(v1, default) == {
        "model.anchors.image_size_strides": (True, False),
        "model.roi_heads.aligned": (False, True),
        "model.roi_heads.sampling_ratio": (2, 0),
        "model.roi_heads.roi_align_impl": ("torchvision", "auto"),
    }
    # v1 itself is torchvision's maskrcnn_resnet50_fpn: ResNet-50, frozen BN, stem + res2 frozen
    assert (v1.model.backbone.depth, v1.model.backbone.frozen_stages, v1.model.num_classes) == (50, 2, 90)
    assert v1.model.input.min_size == (800,) and v1.model.input.max_size == 1333
    # presets are fresh objects each time, and frozen
    assert get_preset("default") == default
    with pytest.raises(dataclasses.FrozenInstanceError):
        default.model.num_classes = 3  # type: ignore[misc]
    with pytest.raises(KeyError, match="unknown preset 'v3'"):
        get_preset("v3")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_yaml_round_trip(preset, tmp_path):
    cfg = apply_overrides(
        get_preset(preset), ["solver.base_lr=0.0125", "model.input.min_size=[640, 672, 800]"]
    )
    path = tmp_path / "cfg.yaml"
    save_config(cfg, path)
    data = yaml.safe_load(path.read_text())
    assert data["model"]["input"]["min_size"] == [640, 672, 800]  # tuples are written as plain lists
    loaded = load_config(path)
    assert loaded == cfg
    assert isinstance(loaded.model.input.min_size, tuple)
    assert from_dict(to_dict(cfg)) == cfg
    assert resolve(str(path)) == cfg


def test_yaml_file_with_preset_and_partial_keys(tmp_path):
    path = tmp_path / "small.yaml"
    path.write_text(
        "preset: torchvision_v2\n"
        "model:\n"
        "  num_classes: 1\n"
        "  input: {min_size: [512, 640], max_size: 1024}\n"
        "solver:\n"
        "  base_lr: 1e-3\n"  # YAML 1.1 reads this as a string; it must still count as a number
        "  max_iter: 300\n"
    )
    cfg = load_config(path, overrides=["solver.max_iter=500"])
    expected = apply_overrides(
        get_preset("torchvision_v2"),
        [
            "model.num_classes=1",
            "model.input.min_size=[512, 640]",
            "model.input.max_size=1024",
            "solver.base_lr=0.001",
            "solver.max_iter=500",
        ],
    )
    assert cfg == expected
    assert cfg.model.rpn.num_convs == 2  # untouched v2 values stay
    # resolve: a preset name or a path, then overrides
    assert resolve("torchvision_v1", ["model.num_classes=5"]).model.num_classes == 5
    assert resolve(None) == get_preset("default")
    # a misspelt preset is neither a preset nor a file: the error lists the presets
    with pytest.raises(FileNotFoundError, match=r"'torchvision-v1' is neither a preset .*'torchvision_v1'"):
        resolve("torchvision-v1")


def test_overrides_of_nested_keys_with_types():
    cfg = apply_overrides(
        get_preset("default"),
        [
            "model.input.min_size=[640, 800]",  # list -> tuple of int
            "model.input.pixel_mean=[0.5, 0.5, 0.5]",  # list -> tuple of float
            "model.roi_heads.box_reg_weights=[10, 10, 5, 5]",  # ints into a float tuple
            "model.num_classes=3",  # int
            "solver.base_lr=0.01",  # float
            "solver.weight_decay=1e-5",  # float written without a dot (a YAML 1.1 string)
            "solver.max_iter=2e4",  # an integral number in exponent form
            "model.rpn.nms_thresh=1",  # an int into a float field
            "solver.amp=true",  # bool
            "model.roi_heads.class_agnostic_mask=false",
            "model.backbone.norm=gn",  # str
            " train.device = cpu ",  # whitespace around the key; the value is YAML-parsed
            "model.input.max_size=1000",
            "model.input.min_size=700",  # a scalar for a tuple field -> a 1-tuple
        ],
    )
    assert cfg.model.input.min_size == (700,)
    assert cfg.model.input.pixel_mean == (0.5, 0.5, 0.5)
    assert cfg.model.roi_heads.box_reg_weights == (10.0, 10.0, 5.0, 5.0)
    assert all(isinstance(v, float) for v in cfg.model.roi_heads.box_reg_weights)
    assert cfg.model.num_classes == 3 and isinstance(cfg.model.num_classes, int)
    assert cfg.solver.base_lr == 0.01
    assert cfg.solver.weight_decay == 1e-5 and isinstance(cfg.solver.weight_decay, float)
    assert cfg.solver.max_iter == 20000 and isinstance(cfg.solver.max_iter, int)
    assert cfg.model.rpn.nms_thresh == 1.0 and isinstance(cfg.model.rpn.nms_thresh, float)
    assert cfg.solver.amp is True and cfg.model.roi_heads.class_agnostic_mask is False
    assert cfg.model.backbone.norm == "gn" and cfg.train.device == "cpu"
    assert cfg.model.input.max_size == 1000
    # everything else is untouched
    assert set(differences(get_preset("default"), cfg)) == {
        "model.input.min_size",
        "model.input.pixel_mean",
        "model.num_classes",
        "solver.base_lr",
        "solver.weight_decay",
        "solver.max_iter",
        "model.rpn.nms_thresh",
        "solver.amp",
        "model.backbone.norm",
        "train.device",
        "model.input.max_size",
    }  # box_reg_weights and class_agnostic_mask were set to their current values
    # a later override wins
    assert apply_overrides(cfg, ["model.num_classes=4", "model.num_classes=7"]).model.num_classes == 7


@pytest.mark.parametrize(
    "override, error, match",
    [
        ("model.num_clases=3", KeyError, r"unknown config key 'model\.num_clases'.*num_classes"),
        ("model.backbone.depht=18", KeyError, r"unknown config key 'model\.backbone\.depht'"),
        ("modle.num_classes=3", KeyError, r"unknown config key 'modle'"),
        ("model.num_classes=three", ValueError, r"model\.num_classes: expected an integer, got 'three'"),
        ("model.num_classes=2.5", ValueError, r"model\.num_classes: expected an integer, got 2\.5"),
        ("model.num_classes=true", ValueError, r"model\.num_classes: expected an integer, got True"),
        ("solver.base_lr=fast", ValueError, r"solver\.base_lr: expected a number, got 'fast'"),
        ("solver.amp=1", ValueError, r"solver\.amp: expected true/false, got 1"),
        ("model.backbone.norm=3", ValueError, r"model\.backbone\.norm: expected a string, got 3"),
        ("model.input.min_size=[800, big]", ValueError, r"model\.input\.min_size\[1\]: expected an integer"),
        ("model.input.min_size=[640.5]", ValueError, r"model\.input\.min_size\[0\]: expected an integer"),
        (
            "model.input.pixel_mean=[0.5]",
            ValueError,
            r"model\.input\.pixel_mean: expected a list of 3 values",
        ),
        (
            "model.roi_heads.box_reg_weights=[1, x, 1, 1]",
            ValueError,
            r"box_reg_weights\[1\]: expected a number",
        ),
        ("model.input=3", ValueError, r"model\.input: expected a mapping, got int"),
        ("model.num_classes", ValueError, r"must look like key=value"),
    ],
)
def test_bad_overrides_raise_errors_naming_the_key(override, error, match):
    with pytest.raises(error, match=match):
        apply_overrides(get_preset("default"), [override])


def test_bad_yaml_file_names_the_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  roi_heads:\n    nms_tresh: 0.4\n")
    with pytest.raises(KeyError, match=r"model\.roi_heads\.nms_tresh"):
        load_config(path)
    path.write_text("preset: v9\n")
    with pytest.raises(KeyError, match="unknown preset 'v9'"):
        load_config(path)


def test_to_dict_is_plain_yaml_data():
    data = to_dict(Config())
    assert yaml.safe_load(yaml.safe_dump(data)) == data  # lists, not tuples: the round trip is exact
    assert data["model"]["anchors"]["sizes"] == [32, 64, 128, 256, 512]


def test_upgrade_config_runs_the_steps_from_the_saved_schema_to_the_current_one():
    """A made-up history: schema 1 called solver.base_lr `solver.lr`, schema 2 had `train.seed` at
    the top (`seed`). Each step runs once, in order, on a copy."""
    steps = (
        (1, lambda d: rename_key(d, "solver.lr", "solver.base_lr")),
        (2, lambda d: rename_key(d, "seed", "train.seed")),
    )
    old = {"solver": {"lr": 0.5}, "seed": 7}
    new = upgrade_config(old, schema=1, upgrades=steps, current=3)
    assert new == {"solver": {"base_lr": 0.5}, "train": {"seed": 7}}
    assert old == {"solver": {"lr": 0.5}, "seed": 7}  # left as it was
    cfg = from_dict(new, Config)
    assert (cfg.solver.base_lr, cfg.train.seed) == (0.5, 7)
    # from schema 2 only the second step runs; from the current one none; no schema = the first
    assert upgrade_config({"solver": {"lr": 1}, "seed": 3}, schema=2, upgrades=steps, current=3) == {
        "solver": {"lr": 1},
        "train": {"seed": 3},
    }
    assert upgrade_config(old, schema=3, upgrades=steps, current=3) == old
    assert upgrade_config(old, schema=None, upgrades=steps, current=3) == new
    assert rename_key({"a": 1}, "x.y", "z") == {"a": 1}  # an absent key: nothing to move
    with pytest.raises(UserError, match=r"^run/ckpt.pt: its config has schema version 4, newer than"):
        upgrade_config(old, schema=4, source="run/ckpt.pt", upgrades=steps, current=3)
    with pytest.raises(UserError, match="schema version must be a non-negative integer, got 'one'"):
        upgrade_config(old, schema="one")
