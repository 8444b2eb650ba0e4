"""`maskrcnn export --int8`: a small model trained here on the synthetic shapes, exported in fp32
and in int8 (calibrated on other shapes), both COCO-evaluated by `maskrcnn evaluate` on its training
shapes: int8 box and mask AP stay within 2 points of fp32; the int8 file is quantised (int8
weights, float where `keep_float` says), runs through `maskrcnn.load`, and records its precision
and calibration; a missing or empty calibration is one `error:` line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import maskrcnn  # noqa: E402
from maskrcnn.cli import main  # noqa: E402
from maskrcnn.data.shapes import ShapesDataset  # noqa: E402
from maskrcnn.export.calibration import calibration_images_from  # noqa: E402
from maskrcnn.export.quantize import (  # noqa: E402
    DEFAULT_KEEP_FLOAT,
    ROI_ALIGN_INPUTS,
    STAGES,
    quantize_onnx,
    stage_nodes,
)
from tests.helpers import TINY_NET  # noqa: E402

# TINY_NET on shapes_demo's 128 px shapes, 1 thread, ~35 s: it learns its 16 training images to box /
# mask AP ~0.14 / ~0.2 (a random one scores ~0); the test compares precisions, not generalisation,
# so it evaluates on these 16, and calibrates on 16 spread over shapes:64 (12 of them not trained on)
TRAIN = "shapes:16"
SCHEDULE = [
    "solver.max_iter=150",
    "solver.ims_per_batch=4",
    "solver.warmup_iters=10",
    "solver.steps=[120]",
    "solver.base_lr=0.003",
    "data.num_workers=0",
    "train.checkpoint_period=0",
    "train.log_period=50",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    from maskrcnn.config import resolve
    from maskrcnn.engine.train import train

    out = tmp_path_factory.mktemp("int8-train")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same numbers on every machine of one CPU kind
    try:
        train(
            resolve("shapes_demo", [*TINY_NET, *SCHEDULE]),
            train_data=TRAIN,
            out_dir=out,
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    return out / "model_final.pt"


def _evaluate(weights: Path, out: Path) -> dict:
    args = ["evaluate", "--weights", str(weights), "--data", TRAIN, "--out", str(out), "--no-progress"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    return {"box": metrics["bbox"]["AP"], "mask": metrics["segm"]["AP"]}


def test_int8_export_stays_within_2_ap_points_of_fp32(trained, tmp_path, capsys):
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    assert main(["export", "--weights", str(trained), "--out", str(fp32)]) == 0
    args = ["export", "--weights", str(trained), "--out", str(int8), "--int8"]
    assert main([*args, "--calibration", "shapes:64", "--calibration-images", "16"]) == 0
    shown = capsys.readouterr()
    assert "calibration image 16/16 (128x128)" in shown.err and "quantising" in shown.err
    assert f"wrote {int8} (int8" in shown.out

    ap32, ap8 = _evaluate(fp32, tmp_path / "eval32"), _evaluate(int8, tmp_path / "eval8")
    assert ap32["box"] > 0.08 and ap32["mask"] > 0.1, ap32  # trained: the comparison means something
    for kind in ("box", "mask"):
        assert abs(ap8[kind] - ap32[kind]) <= 0.02, (kind, ap32, ap8)

    # the metadata: the fp32 file's entries, unchanged, and the precision and calibration
    meta32 = {e.key: e.value for e in onnx.load(str(fp32)).metadata_props}
    proto = onnx.load(str(int8))
    meta8 = {e.key: e.value for e in proto.metadata_props}
    assert {k: meta8[k] for k in meta32 if k != "precision"} == {
        k: v for k, v in meta32.items() if k != "precision"
    }
    assert meta8["precision"] == "int8"
    calibration = json.loads(meta8["calibration"])
    assert calibration["spec"] == "shapes:64" and calibration["images"] == 16
    assert calibration["kept_float"] == list(DEFAULT_KEEP_FLOAT) and calibration["seconds"] > 0
    assert int8.stat().st_size < 0.45 * fp32.stat().st_size  # int8 weights: about a quarter

    # every stage is found in the graph (the names follow the model) and quantised by default ...
    graph32 = onnx.load(str(fp32)).graph
    assert DEFAULT_KEEP_FLOAT == ()
    assert _quantized_stages(proto, graph32) == dict.fromkeys(STAGES, True)
    found = [name for stage in STAGES for name in stage_nodes(graph32, stage)]
    convolutions = [n.name for n in graph32.node if n.op_type in ("Conv", "ConvTranspose", "Gemm")]
    assert sorted(found) == sorted(convolutions)  # the stages divide the graph's layers between them
    # ... and `keep_float` keeps the named ones float, RoiAlign reading the float features
    kept = ("box_predictor", "rpn_objectness", ROI_ALIGN_INPUTS)
    images = calibration_images_from("shapes:64", count=4)
    partial = onnx.load(
        str(quantize_onnx(fp32, tmp_path / "p.onnx", calibration_images=images, keep_float=kept))
    )
    assert _quantized_stages(partial, graph32) == {stage: stage not in kept for stage in STAGES}
    producers = {out: n.op_type for n in partial.graph.node for out in n.output}
    roi_inputs = [producers[n.input[0]] for n in partial.graph.node if n.op_type == "RoiAlign"]
    assert len(roi_inputs) == 8 and "DequantizeLinear" not in roi_inputs  # box and mask pooling, 4 levels
    dequantized = [producers[n.input[0]] for n in proto.graph.node if n.op_type == "RoiAlign"]
    assert set(dequantized) == {"DequantizeLinear"}  # by default they read the int8 features

    # maskrcnn.load runs it: the same detections as the fp32 file, to int8's rounding
    image = ShapesDataset(1, seed=0)[0].image
    det32, det8 = maskrcnn.load(str(fp32)).predict([image])[0], maskrcnn.load(str(int8)).predict([image])[0]
    assert len(det8.boxes) > 0 and det8.masks.shape[-2:] == image.shape[-2:]
    assert torch.cdist(det8.boxes[:1], det32.boxes).min() < 2.0  # int8's best box is one of fp32's


def _quantized_stages(proto, graph32) -> dict[str, bool]:
    """Whether the nodes of each stage read int8 weights in `proto` (all of them or none: else an error)."""
    int8_weights = {i.name for i in proto.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    dequantized = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    nodes = {n.name: n for n in proto.graph.node}
    found = {}
    for stage in STAGES:
        names = stage_nodes(graph32, stage)
        assert names, f"stage {stage} matches no node of the exported graph"
        quantized = {dequantized.get(nodes[name].input[1]) in int8_weights for name in names}
        assert len(quantized) == 1, f"stage {stage}: some nodes quantised, some not"
        found[stage] = quantized.pop()
    return found


def _error_line(capsys, args: list[str]) -> str:
    assert main(args) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


def test_int8_without_usable_calibration_is_one_error_line(tiny_weights, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    base = ["export", "--weights", str(tiny_weights), "--out", str(out), "--int8"]
    assert "--calibration" in _error_line(capsys, base)
    assert "--calibration-images must be at least 1, got 0" in _error_line(
        capsys, [*base, "--calibration", "shapes:4", "--calibration-images", "0"]
    )
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"not a picture")
    (folder / "notes.txt").write_text("no image here")
    err = _error_line(capsys, [*base, "--calibration", str(folder)])
    assert str(folder) in err and "no readable images" in err
    assert "dataset spec 'coco:missing.json:nowhere'" in _error_line(
        capsys, [*base, "--calibration", "coco:missing.json:nowhere"]
    )
    assert not out.exists()  # nothing written


def test_calibration_images_from_a_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, size in enumerate([(40, 60), (50, 30), (64, 64)]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    two = calibration_images_from(str(tmp_path), count=2)  # spread: the first and the last file
    assert [tuple(im.shape) for im in two] == [(3, 40, 60), (3, 64, 64)]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG truncated")
    images = calibration_images_from(str(tmp_path), count=10)  # the broken file is skipped
    assert [tuple(im.shape) for im in images] == [(3, 40, 60), (3, 50, 30), (3, 64, 64)]
    assert all(im.dtype == torch.float32 and im.min() >= 0 and im.max() <= 1 for im in images)
