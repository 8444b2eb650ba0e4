"""Config settings with a fixed set of values (`maskrcnn.config.CHOICES`) are checked when the
config is read: a YAML file, an override or a checkpoint's config with a value outside the set is
one `error:` line naming the key and listing the allowed values; the lists agree with the code's."""

from __future__ import annotations

import pytest

from maskrcnn.config import CHOICES, PRESETS, apply_overrides, from_dict, get_preset, load_config, to_dict
from maskrcnn.engine.freeze import FREEZE_LEVELS
from maskrcnn.errors import UserError
from maskrcnn.model.backbone import STAGE_BLOCKS
from maskrcnn.model.keypoint_branch import KEYPOINT_SCORES
from maskrcnn.model.layers import NORMS
from maskrcnn.model.mask_branch import MASK_LOSSES
from maskrcnn.model.mask_paste import PASTE_MODES
from maskrcnn.model.preprocess import RESIZE_RULES
from maskrcnn.model.roi_pooler import LEVEL_MAPPINGS
from tests.helpers import run


def _value(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def test_choices_agree_with_the_code():
    assert CHOICES["model.roi_heads.mask_loss"] == MASK_LOSSES
    assert CHOICES["model.roi_heads.mask_paste"] == PASTE_MODES
    assert CHOICES["model.roi_heads.keypoint_score"] == KEYPOINT_SCORES
    assert CHOICES["model.roi_heads.level_mapping"] == LEVEL_MAPPINGS
    assert CHOICES["model.input.resize"] == RESIZE_RULES
    assert set(CHOICES["model.backbone.depth"]) == set(STAGE_BLOCKS)
    assert set(CHOICES["train.freeze"]) == set(FREEZE_LEVELS)
    for key in ("backbone.norm", "backbone.fpn_norm", "roi_heads.box_head_norm", "roi_heads.mask_head_norm"):
        assert CHOICES[f"model.{key}"] == NORMS
    for name in PRESETS:  # every preset and the defaults use allowed values
        cfg = get_preset(name)
        for key, allowed in CHOICES.items():
            assert _value(cfg, key) in allowed, (name, key)


@pytest.mark.parametrize(
    "key, bad",
    [
        ("model.roi_heads.mask_loss", "sigmod"),
        ("model.roi_heads.box_loss", "huber"),
        ("model.rpn.box_loss", "L1"),
        ("model.backbone.norm", "syncbn"),
        ("model.roi_heads.mask_paste", "opencv"),
        ("model.roi_heads.level_mapping", "detectron"),
        ("model.input.resize", "pil"),
        ("model.roi_heads.keypoint_score", "prob"),
        ("model.backbone.depth", "152"),
    ],
)
def test_a_value_outside_the_choices_is_refused_on_reading(key, bad):
    with pytest.raises(UserError) as info:
        apply_overrides(get_preset("default"), [f"{key}={bad}"])
    message = str(info.value)
    assert key in message and bad in message
    assert all(str(v) in message for v in CHOICES[key]), message
    # a config dict (what checkpoints and ONNX files carry) is read through the same check
    data = to_dict(get_preset("default"))
    section = data
    *parents, last = key.split(".")
    for part in parents:
        section = section[part]
    section[last] = int(bad) if bad.isdigit() else bad
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        from_dict(data)


def test_yaml_file_with_a_bad_choice(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("preset: shapes_demo\nmodel:\n  roi_heads:\n    mask_loss: softmaxx\n")
    with pytest.raises(UserError, match="sigmoid, softmax"):
        load_config(path)
    good = tmp_path / "good.yaml"
    good.write_text("preset: shapes_demo\nmodel:\n  roi_heads:\n    mask_loss: softmax\n")
    assert load_config(good).model.roi_heads.mask_loss == "softmax"


def test_cli_reports_one_error_line(tmp_path):
    done = run(
        "train",
        "--config",
        "shapes_demo",
        "--train-data",
        "shapes:2",
        "--out",
        str(tmp_path / "run"),
        "model.roi_heads.mask_loss=sigmod",
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "model.roi_heads.mask_loss" in lines[0] and "sigmoid, softmax" in lines[0]
    assert not (tmp_path / "run").exists()  # refused before anything was written
