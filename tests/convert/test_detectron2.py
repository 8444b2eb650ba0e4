"""Parity with detectron2 itself (its source in ../shared/detectron2): detectron2 builds each model
of its model zoo's R-CNN families from its own config, with seeded weights made decisive, and saves
it as its checkpointer does (.pth) and as the model zoo does (.pkl); ours converts the file and
runs on the same coco-mini images (already at the test size, so that neither side resizes). The
R50-FPN model (`r50`) is conftest.py's session fixture."""

from __future__ import annotations

import pytest
import torch

from maskrcnn.config import SCHEMA_VERSION, from_dict
from maskrcnn.convert.detectron2 import from_detectron2, is_detectron2
from maskrcnn.errors import UserError

from .d2_reference import (
    CONFIGS,
    KEYPOINT_SMALL,
    SMALL,
    Built,
    coco_mini_val,
    image_at_size,
    read_pkl,
    run_d2,
    run_ours,
)


def assert_same_detections(ref, det, what: str) -> dict:
    """Same count and labels, boxes within 1e-2 px, scores within 1e-3, >= 99.5% mask pixels equal,
    keypoints within 1e-2 px (and their scores within 1e-3). Returns the worst differences."""
    n = len(ref)
    assert n > 0, f"{what}: detectron2 detected nothing; the comparison would be vacuous"
    assert len(set(ref.scores.tolist())) > n // 2, f"{what}: detectron2's scores are mostly tied"
    assert len(det.boxes) == n, f"{what}: {len(det.boxes)} detections vs detectron2's {n}"
    assert torch.equal(det.labels, ref.pred_classes + 1), what
    worst = {
        "box": (det.boxes - ref.pred_boxes.tensor).abs().max().item(),
        "score": (det.scores - ref.scores).abs().max().item(),
    }
    assert worst["box"] <= 1e-2, (what, worst)
    assert worst["score"] <= 1e-3, (what, worst)
    if ref.has("pred_masks"):
        assert det.masks.shape == ref.pred_masks.shape, what
        worst["mask_agree"] = (det.masks == ref.pred_masks).float().mean().item()
        assert worst["mask_agree"] >= 0.995, (what, worst)
    if ref.has("pred_keypoints"):
        worst["keypoint"] = (det.keypoints[..., :2] - ref.pred_keypoints[..., :2]).abs().max().item()
        worst["keypoint_score"] = (det.keypoints[..., 2] - ref.pred_keypoints[..., 2]).abs().max().item()
        assert worst["keypoint"] <= 1e-2, (what, worst)
        assert worst["keypoint_score"] <= 1e-3, (what, worst)
    return worst


def check_parity(built: Built, images, what: str) -> None:
    for path in images:
        image = image_at_size(path, min_size=built.min_size, max_size=built.max_size)
        worst = assert_same_detections(
            run_d2(built.d2, image), run_ours(built.ours, image), f"{what} {path.name}"
        )
        print(what, path.name, tuple(image.shape[-2:]), worst)


def zoo_config_of(pkl_path, config: str | None):
    """Our config of a zoo-style .pkl converted with the zoo's own YAML (or from its tensors only)."""
    yaml = CONFIGS / config if config else None
    return from_dict(from_detectron2(read_pkl(pkl_path), d2_config=yaml)["config"]).model


# ---------------------------------------------------------------- R50-FPN Mask R-CNN


def test_r50_fpn_mask_parity(r50, shared_data):
    check_parity(r50, coco_mini_val(2), "R50-FPN")


def test_r50_pkl_equals_pth_and_tensors_give_the_zoo_config(r50):
    pkl = read_pkl(r50.pkl)
    assert is_detectron2(pkl) and is_detectron2(torch.load(r50.pth, weights_only=True))
    from_pkl = from_detectron2(pkl, d2_config=r50.yaml)
    assert from_pkl["config"] == r50.ckpt["config"]
    assert (from_pkl["format"], from_pkl["version"], from_pkl["schema"]) == ("maskrcnn", 2, SCHEMA_VERSION)
    assert from_pkl["model"].keys() == r50.ckpt["model"].keys()
    for key, value in r50.ckpt["model"].items():
        assert torch.equal(from_pkl["model"][key], value), key
    # COCO's 80 classes in detectron2's order, with real COCO category ids
    assert from_pkl["class_names"][:3] == ["person", "bicycle", "car"] and len(from_pkl["class_names"]) == 80
    assert from_pkl["category_ids"][-1] == 90 and from_pkl["category_ids"][11] == 13  # stop sign
    # a bare state dict of numpy arrays converts alike; anything else is a UserError
    bare = from_detectron2(pkl["model"])["model"]
    assert all(torch.equal(bare[k], v) for k, v in r50.ckpt["model"].items())
    assert not is_detectron2({"model": {"conv.weight": torch.zeros(1)}})
    with pytest.raises(UserError, match="x.pt: not a detectron2 R-CNN checkpoint"):
        from_detectron2({"state_dict": {}}, source="x.pt")
    # FrozenBN saved without statistics (before its version 2): mean 0 and variance 1, as detectron2
    old = {
        k: v
        for k, v in pkl["model"].items()
        if not k.startswith("backbone.bottom_up.stem.conv1.norm.running")
    }
    stem = from_detectron2({"model": old})["model"]
    assert torch.equal(stem["backbone.body.bn1.running_mean"], torch.zeros(64))
    assert torch.equal(stem["backbone.body.bn1.running_var"], torch.ones(64))
    # the tensors alone give the zoo YAML's model (apart from the training sizes the YAML lists)
    config = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"
    assert zoo_config_of(r50.pkl, None).backbone == zoo_config_of(r50.pkl, config).backbone
    assert zoo_config_of(r50.pkl, None).roi_heads == zoo_config_of(r50.pkl, config).roi_heads


@pytest.mark.slow
def test_r50_fpn_mask_parity_full_size(tmp_path, shared_data):
    """The zoo's settings unchanged: 800 px, 1000 proposals per level and image, 100 detections."""
    built = Built(
        tmp_path, "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml", min_size=800, max_size=1333
    )
    check_parity(built, coco_mini_val(1, offset=2), "R50-FPN 800px")


# ---------------------------------------------------------------- R101 / X101-32x8d Mask R-CNN


def test_r101_fpn_mask_parity_other_class_count(tmp_path, shared_data):
    """A model a user trained with the R101 config on 3 classes of their own."""
    built = Built(
        tmp_path,
        "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml",
        min_size=320,
        max_size=512,
        seed=1,
        **{**SMALL, "MODEL.ROI_HEADS.NUM_CLASSES": 3},
    )
    check_parity(built, coco_mini_val(1, offset=3), "R101-FPN 3 classes")
    assert built.ours.config.model.backbone.depth == 101 and built.ours.class_names == [
        "class_1",
        "class_2",
        "class_3",
    ]
    named = from_detectron2(read_pkl(built.pkl), class_names=["a", "b", "c"])
    assert named["class_names"] == ["a", "b", "c"] and named["category_ids"] == [1, 2, 3]


def test_x101_32x8d_fpn_mask_parity(tmp_path, shared_data):
    config = "COCO-InstanceSegmentation/mask_rcnn_X_101_32x8d_FPN_3x.yaml"
    built = Built(tmp_path, config, min_size=320, max_size=512, seed=2, **SMALL)
    backbone = built.ours.config.model.backbone
    assert (backbone.groups, backbone.width_per_group, backbone.stride_in_1x1) == (32, 8, False)
    check_parity(built, coco_mini_val(1, offset=5), "X101-32x8d-FPN")
    # without a config: ResNeXt groups, width, stride placement and pixel std from the tensors
    alone, with_yaml = zoo_config_of(built.pkl, None), zoo_config_of(built.pkl, config)
    assert alone.backbone == with_yaml.backbone and alone.input.pixel_std == (57.375, 57.120, 58.395)


# ---------------------------------------------------------------- Keypoint R-CNN


@pytest.mark.parametrize(
    "config, seed, images",
    [
        ("COCO-Keypoints/keypoint_rcnn_R_50_FPN_3x.yaml", 3, 2),
        ("COCO-Keypoints/keypoint_rcnn_R_101_FPN_3x.yaml", 4, 1),
        ("COCO-Keypoints/keypoint_rcnn_X_101_32x8d_FPN_3x.yaml", 6, 1),
    ],
)
def test_keypoint_rcnn_parity(config, seed, images, tmp_path, shared_data):
    """Person boxes and 17 keypoints (detectron2's softmax keypoint scores) on people of coco-mini."""
    built = Built(tmp_path, config, min_size=320, max_size=512, seed=seed, **KEYPOINT_SMALL)
    assert built.ckpt["class_names"] == ["person"] and built.ckpt["category_ids"] == [1]
    check_parity(built, coco_mini_val(images, offset=7), config.split("/")[-1])


# ---------------------------------------------------------------- the CLI and the registry names


def test_cli_converts_a_zoo_pkl_with_class_names(r50, tmp_path, capsys):
    from maskrcnn import cli
    from maskrcnn.checkpoints import read_checkpoint

    classes = tmp_path / "classes.txt"
    names = [f"thing{i}" for i in range(80)]
    classes.write_text("\n".join(names) + "\n")
    out = tmp_path / "r50.pt"
    argv = ["convert", "--from", "detectron2", str(r50.pkl), str(out), "--config", str(r50.yaml)]
    assert cli.main([*argv, "--classes", str(classes)]) == 0
    assert "detectron2 R50-FPN mask, 80 classes" in capsys.readouterr().out
    ckpt = read_checkpoint(out)
    assert ckpt["class_names"] == names and ckpt["config"] == r50.ckpt["config"]
    for key, value in r50.ckpt["model"].items():
        assert torch.equal(ckpt["model"][key], value), key


def test_cli_refuses_bad_detectron2_files(r50, tmp_path, capsys):
    """A .pkl that would run code, weights that do not fit the config, a config that is no YAML
    mapping: one error line each, nothing runs, nothing is written."""
    import os
    import pickle

    from maskrcnn import cli

    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"backbone.bottom_up.stem.conv1.weight": Evil()}}))
    bad_yaml = tmp_path / "list.yaml"
    bad_yaml.write_text("- 1\n- 2\n")
    out = tmp_path / "out.pt"
    r101 = CONFIGS / "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml"
    cases = [
        ([str(evil), str(out)], "refused to load: it needs posix.system"),
        ([str(r50.pkl), str(out), "--config", str(r101)], "do not fit the detectron2 config"),
        ([str(r50.pkl), str(out), "--config", str(bad_yaml)], "a detectron2 config is a YAML mapping"),
    ]
    for args, message in cases:
        assert cli.main(["convert", "--from", "detectron2", *args]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and len(err.splitlines()) == 1 and message in err, err
    assert not marker.exists() and not out.exists()


def test_registry_name_loads_from_a_file_mirror(r50, tmp_path, monkeypatch):
    """`maskrcnn.load("detectron2_mask_rcnn_R_50_FPN_3x")` from a file:// mirror holding a zoo-style
    .pkl under the zoo's file name: downloaded, checked, converted with the zoo's settings, cached."""
    import hashlib
    import shutil

    import maskrcnn
    from maskrcnn import weights

    entry = weights.get("detectron2_mask_rcnn_R_50_FPN_3x")
    assert entry.url == (
        "https://dl.fbaipublicfiles.com/detectron2/COCO-InstanceSegmentation/"
        "mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"
    )
    assert entry.md5_prefix == "f10217" and entry.metrics == {
        "COCO-val2017": {"box_map": 41.0, "mask_map": 37.2}
    }
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    shutil.copy(r50.pkl, mirror / entry.file_name)
    home = tmp_path / "home"
    monkeypatch.setenv("MASKRCNN_HOME", str(home))
    monkeypatch.setenv(weights.MIRROR_ENV, mirror.as_uri())
    # a plain copy is checked against the md5 prefix of the zoo's file name: this one fails it
    with pytest.raises(UserError, match="expected md5 f10217"):
        maskrcnn.load(entry.name)
    assert not list((home / "checkpoints").rglob(entry.file_name))
    # the mirror's SHA256SUMS vouches for its own file
    digest = hashlib.sha256((mirror / entry.file_name).read_bytes()).hexdigest()
    (mirror / "SHA256SUMS").write_text(f"{digest}  {entry.file_name}\n")
    model = maskrcnn.load(entry.name).model
    assert weights.cache_state(entry) == "downloaded, converted"
    state = model.state_dict()
    for key, value in r50.ckpt["model"].items():
        assert torch.equal(state[key], value), key
    cfg = model.config.model
    assert cfg.input.min_size == (640, 672, 704, 736, 768, 800) and cfg.input.max_size == 1333
    assert (cfg.rpn.pre_nms_topk_test, cfg.rpn.post_nms_topk_test, cfg.roi_heads.detections_per_image) == (
        1000,
        1000,
        100,
    )
    assert model.class_names[0] == "person" and model.category_ids[-1] == 90


def test_detectron2_resize_rule_matches_resize_shortest_edge(shared_data):
    """model.input.resize=detectron2: the sizes of detectron2's ResizeShortestEdge for every coco-mini
    val image (800 / 1333 and the test size), and pixels close to its PIL resize of the uint8 image."""
    import numpy as np
    from PIL import Image

    from maskrcnn.model.preprocess import Preprocessor, resized_shape

    from .d2_reference import import_detectron2

    import_detectron2()
    from detectron2.data.transforms import ResizeShortestEdge

    paths = coco_mini_val(79)
    for path in paths:
        w, h = Image.open(path).size
        for short, longest in ((800, 1333), (384, 640), (320, 512)):
            expected = ResizeShortestEdge.get_output_shape(h, w, short, longest)
            assert resized_shape(h, w, min_size=short, max_size=longest, rule="detectron2") == expected
    rgb = np.asarray(Image.open(paths[0]).convert("RGB"))
    tf = ResizeShortestEdge(400, 640).get_transform(rgb)
    theirs = torch.from_numpy(tf.apply_image(rgb)).permute(2, 0, 1).float()
    p = Preprocessor(
        pixel_mean=(0.0,) * 3, pixel_std=(1 / 255,) * 3, min_size=(400,), max_size=640, resize="detectron2"
    )
    ours = p([torch.from_numpy(rgb.copy()).permute(2, 0, 1).float() / 255])[0]
    h, w = theirs.shape[-2:]
    assert ours.image_sizes == [(h, w)]
    difference = (ours.tensor[0, :, :h, :w] - theirs).abs()
    print("resize vs PIL: mean", difference.mean().item(), "max", difference.max().item())
    assert difference.mean() < 0.35 and difference.max() <= 1.001  # PIL rounds to uint8: at most 1 level


def test_onnx_export_of_a_detectron2_model(r50, tmp_path, shared_data):
    """The exported graph keeps the detectron2 options (BGR 0..255 input, exact anchors, size
    filters, level rounding; detectron2's pasting in the runtime); detectron2's antialiased resize
    is refused, so the model is exported with torchvision's resize (the identity on this image)."""
    import copy
    import importlib.util

    from maskrcnn.export.onnx import export_onnx
    from maskrcnn.export.runtime import OnnxModel

    if importlib.util.find_spec("onnxruntime") is None:
        from tests.conftest import skip_or_fail_in_ci

        skip_or_fail_in_ci("onnxruntime is not installed (pip install maskrcnn[onnx])")
    with pytest.raises(UserError, match="resizes them as detectron2"):
        export_onnx(r50.ours, tmp_path / "refused.onnx")
    model = copy.deepcopy(r50.ours)
    model.preprocessor.resize = "torchvision"
    image = image_at_size(coco_mini_val(1)[0], min_size=384, max_size=640) / 255.0
    h, w = image.shape[-2:]
    model.preprocessor.min_size, model.preprocessor.max_size = (min(h, w),), max(h, w)
    onnx_model = OnnxModel(export_onnx(model, tmp_path / "r50.onnx"), threads=2)
    expected = run_ours(r50.ours, image * 255.0)
    got = onnx_model.predict([image])[0]
    assert len(got) == len(expected) == 20 and torch.equal(got.labels, expected.labels)
    assert (got.boxes - expected.boxes).abs().max() <= 1e-2
    assert (got.scores - expected.scores).abs().max() <= 1e-3
    assert (got.masks == expected.masks).float().mean() >= 0.999
