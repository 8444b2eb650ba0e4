"""Static int8 quantisation of an exported model (`maskrcnn export --int8 --calibration SPEC`):
the fp32 ONNX file of `maskrcnn.export.onnx.export_onnx`, quantised by onnxruntime's
`quantize_static` after calibration on the user's images, as one ONNX file that `maskrcnn.load`
and every command run like the fp32 one (same inputs, outputs and metadata).

    from maskrcnn.export.calibration import calibration_images_from
    from maskrcnn.export.quantize import quantize_onnx
    images = calibration_images_from("shapes:64", count=64)     # (3, H, W) float32 in [0, 1]
    quantize_onnx("model.onnx", "model-int8.onnx", calibration_images=images)

The format: QDQ (QuantizeLinear/DequantizeLinear pairs that onnxruntime fuses into integer
kernels), int8 weights per output channel, uint8 activations per tensor from their MinMax range
over the calibration images (`ACTIVATIONS`, `METHODS`), only Conv, ConvTranspose, Gemm and
MatMul quantised (the convolutions and fully connected layers are nearly all the time; the rest
of the graph, box decoding, NMS, RoIAlign, stays float). Each calibration run feeds one image
with score threshold 0, so that every branch of the graph sees data.

Stages kept in float (`keep_float`, names of `STAGES`): the nodes of a stage are found by the
parameter names of their weights (`model.roi_heads.box.predictor...`) or by their node names
(the backbone's convolutions, whose batch norms are folded into unnamed weights).
`roi_align_inputs` is not a set of nodes: it gives every RoiAlign the float features instead of
their dequantised int8 copy. By default nothing stays float (`DEFAULT_KEEP_FLOAT`): measured, no
stage's quantisation costs AP beyond the noise of the evaluation. The demo model (`maskrcnn demo`,
64 calibration images spread over its training shapes, box / mask AP on its 100 validation images):
fp32 0.6342 / 0.6452; all int8 0.6321 / 0.6524; kept float: box and mask predictors and RPN
objectness and deltas 0.6324 / 0.6476, the same + RoIAlign inputs 0.6323 / 0.6465, box predictor
0.6341 / 0.6545, mask predictor 0.6321 / 0.6518, RPN objectness and deltas 0.6299 / 0.6481, the
four + mask head 0.6324 / 0.6487, + box head 0.6344 / 0.6459, + FPN 0.6359 / 0.6536; int8
activations 0.6336 / 0.6453; percentile calibration 0.6337 / 0.6452 (entropy: the MinMax ranges,
since quantize_static gives its calibrator 128 bins for 128 levels). On a weakly trained tiny
model (the test's) keeping the predictors float was 1.5 points worse than quantising everything.

Speed (`maskrcnn benchmark`'s decisive random R50-FPN, 800 px coco-mini val images, onnxruntime
1.32 at 2 threads on a 2-core Xeon with AVX-512 VNNI and AMX, shared with other jobs at load 8-10,
one interleaved run of 4 images): torchvision eager 18.3 s, fp32 ONNX 8.9 s, int8 5.3 s per image
(3.5x and 1.7x). uint8 activations, not int8: at load 3.5 uint8 took 2.7 s and int8 5.8 s, slower
than fp32's 5.2 s (onnxruntime's fast kernels are u8s8); float RoIAlign inputs cost ~8% in one
run (the FPN outputs then also feed a float consumer, which hinders onnxruntime's fusion).

The written file's metadata_props: every entry of the fp32 file, and `precision` ("int8") and
`calibration` (JSON: spec, images, seconds, method, activations, kept_float).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

from ..errors import UserError
from ..files import atomic_write
from .onnx import DEFAULT_OPSET, export_onnx, require_onnx

__all__ = [
    "ACTIVATIONS",
    "DEFAULT_KEEP_FLOAT",
    "export_int8",
    "METHODS",
    "ROI_ALIGN_INPUTS",
    "STAGES",
    "quantize_onnx",
    "stage_nodes",
]

# stage -> prefixes of its nodes' names or of their weights' parameter names
STAGES: dict[str, tuple[str, ...]] = {
    "backbone": ("/backbone/body/",),
    "fpn": ("model.backbone.fpn.",),
    "rpn_head": ("model.rpn.head.convs.",),
    "rpn_objectness": ("model.rpn.head.objectness.",),
    "rpn_deltas": ("model.rpn.head.deltas.",),
    "box_head": ("model.roi_heads.box.head.",),
    "box_predictor": ("model.roi_heads.box.predictor.",),
    "mask_head": ("model.roi_heads.mask.head.convs.", "model.roi_heads.mask.head.deconv."),
    "mask_predictor": ("model.roi_heads.mask.head.predictor.",),
}
ROI_ALIGN_INPUTS = "roi_align_inputs"
DEFAULT_KEEP_FLOAT: tuple[str, ...] = ()  # see the module docstring
OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
ACTIVATIONS = ("uint8", "int8")
METHODS = ("minmax", "entropy", "percentile")


def _check_keep_float(keep_float: Sequence[str]) -> None:
    unknown = [name for name in keep_float if name not in STAGES and name != ROI_ALIGN_INPUTS]
    if unknown:
        allowed = ", ".join([*STAGES, ROI_ALIGN_INPUTS])
        raise UserError(f"keep_float: unknown stage(s) {unknown}; expected some of {allowed}")


def stage_nodes(graph, stage: str) -> list[str]:
    """The names of the quantisable nodes (`OP_TYPES`) of `graph` (an onnx GraphProto) in `stage`:
    a prefix that starts with "/" is one of a node's name, any other one of a weight's name."""
    prefixes = STAGES[stage]
    names = tuple(p for p in prefixes if p.startswith("/"))
    weights = tuple(p for p in prefixes if not p.startswith("/"))
    return [
        node.name
        for node in graph.node
        if node.op_type in OP_TYPES
        and (node.name.startswith(names) or any(name.startswith(weights) for name in node.input[1:]))
    ]


def _inline_identities(graph) -> None:
    """Replace each Identity of an initializer by a copy of it under the Identity's output name.
    The exporter shares equal parameters this way (e.g. biases that are all zero), and the
    quantiser needs a Conv's bias as an initializer to make it int32 (else the Conv stays float)."""
    initializers = {init.name: init for init in graph.initializer}
    for node in list(graph.node):
        if node.op_type == "Identity" and node.input[0] in initializers:
            copy = graph.initializer.add()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
            graph.node.remove(node)


def _float_roi_align_inputs(graph) -> int:
    """Rewire every RoiAlign fed by a QuantizeLinear -> DequantizeLinear pair to the float tensor
    before the pair; returns how many inputs were rewired (an unused pair is left for onnxruntime
    to drop)."""
    producer = {out: node for node in graph.node for out in node.output}
    rewired = 0
    for node in graph.node:
        if node.op_type != "RoiAlign":
            continue
        dq = producer.get(node.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            node.input[0] = q.input[0]
            rewired += 1
    return rewired


@contextlib.contextmanager
def _quiet():
    """onnxruntime.quantization's advice (pre-processing, ...) off: it logs warnings on the root logger."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _reader(images: list[Tensor], progress: bool):
    """An onnxruntime CalibrationDataReader over `images`, one graph run per image, showing
    "calibration image i/N" when `progress`."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.index, self.done = 0, False

        def get_next(self):
            if self.index == len(images):
                if progress and not self.done:
                    print("quantising ...", file=sys.stderr, flush=True)
                self.done = True
                return None
            image = images[self.index]
            self.index += 1
            if progress:
                end = "\n" if self.index == len(images) else ""
                h, w = image.shape[-2:]
                print(f"\rcalibration image {self.index}/{len(images)} ({h}x{w})", end=end, file=sys.stderr)
                sys.stderr.flush()
            return {"image": image.float().contiguous().numpy(), "score_thresh": np.array(0.0, np.float32)}

        def __len__(self):
            return len(images)

    return Reader()


def quantize_onnx(
    fp32_path: str | Path,
    out_path: str | Path,
    *,
    calibration_images: list[Tensor],
    progress: bool = True,
    keep_float: Sequence[str] = DEFAULT_KEEP_FLOAT,
    calibration_spec: str | None = None,
    activations: str = "uint8",
    method: str = "minmax",
    calibration_cache: str | Path | None = None,
) -> Path:
    """Quantise the exported model at `fp32_path` into `out_path` (written atomically; returns its
    path), calibrated on `calibration_images` ((3, H, W) float32 in [0, 1]); `keep_float`: the
    `STAGES` (and `ROI_ALIGN_INPUTS`) left in float; `calibration_spec`: where the images came
    from, for the metadata; `calibration_cache`: a JSON file of the calibrated ranges, written by
    the first run and read (instead of calibrating again) by later ones, which must calibrate the
    same graph on the same images. See the module docstring."""
    onnx = require_onnx()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not calibration_images:
        raise UserError("int8 quantisation needs at least one calibration image")
    _check_keep_float(keep_float)
    if activations not in ACTIVATIONS or method not in METHODS:
        raise UserError(f"activations must be one of {ACTIVATIONS} and method one of {METHODS}")
    start = time.perf_counter()
    source = onnx.load(str(fp32_path))
    excluded = [name for stage in keep_float if stage in STAGES for name in stage_nodes(source.graph, stage)]
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    with tempfile.TemporaryDirectory(prefix="maskrcnn-int8-") as tmp:
        prepared, quantized = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        model = onnx.load(str(fp32_path))
        _inline_identities(model.graph)
        onnx.save(model, str(prepared))
        del model
        with _quiet():
            quantize_static(
                str(prepared),
                str(quantized),
                _reader(calibration_images, progress),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(OP_TYPES),
                per_channel=True,
                activation_type=QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                calibrate_method=methods[method],
                # an option of recent onnxruntime releases (1.32 has it): passed only when asked for
                **({} if calibration_cache is None else {"calibration_cache_path": str(calibration_cache)}),
            )
        proto = onnx.load(str(quantized))
    if ROI_ALIGN_INPUTS in keep_float:
        _float_roi_align_inputs(proto.graph)
    calibration = {
        "spec": calibration_spec,
        "images": len(calibration_images),
        "seconds": round(time.perf_counter() - start, 1),
        "method": method,
        "activations": activations,
        "kept_float": list(keep_float),
    }
    del proto.metadata_props[:]
    for entry in source.metadata_props:
        if entry.key not in ("precision", "calibration"):
            proto.metadata_props.add(key=entry.key, value=entry.value)
    proto.metadata_props.add(key="precision", value="int8")
    proto.metadata_props.add(key="calibration", value=json.dumps(calibration))
    proto.producer_name = source.producer_name
    data = proto.SerializeToString()
    return atomic_write(out_path, lambda f: f.write(data))


def export_int8(
    model, path: str | Path, *, calibration_images: list[Tensor], opset: int = DEFAULT_OPSET, **options
) -> Path:
    """`export_onnx(model)` to a temporary file, then `quantize_onnx` of it into `path`; `options`:
    those of `quantize_onnx` (keep_float, calibration_spec, progress, ...)."""
    with tempfile.TemporaryDirectory(prefix="maskrcnn-export-") as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx", opset=opset)
        return quantize_onnx(fp32, path, calibration_images=calibration_images, **options)
