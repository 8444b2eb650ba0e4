"""The inference rows of `maskrcnn benchmark`: which variants run, how each is set up, and the timed
calls with their detections compared to torchvision's.

CPU rows, in order: torchvision; ours with torchvision's RoIAlign; ours; ours channels-last; ours
with BatchNorm folded (what `Predictor` runs in fp32); detectron2 (its own model, same weights:
`detectron2_row`); ours in ONNX Runtime fp32 and int8 (`onnx_row`); ours in bf16 as
`Predictor(precision="bf16")` runs it (the feature layers under bf16 autocast, the rest fp32;
skipped with the note where the CPU has no native bf16). The peer, ONNX and bf16 rows run fp32 at
batch 1 (bf16 at every batch size), and only in the `fp32` pass of `--dtypes`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..model.fold import fold_batchnorm
from ..model.roi_pooler import MultiScaleRoIPooler
from .detectron2_row import detectron2_predictor
from .onnx_row import OnnxRow
from .timing import autocast, compare, free_memory, measure, timing_row

if TYPE_CHECKING:
    from .speed import Settings


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    torchvision: bool = False
    roi_align: str = "auto"  # ours only: auto | torchvision | sparse
    channels_last: bool = False
    fold: bool = False  # ours only, inference only: BatchNorm folded into the convs (maskrcnn.model.fold)
    onnx: str = ""  # ours only, inference only, CPU: "fp32" | "int8", exported and run by onnxruntime
    detectron2: bool = False  # detectron2's own model with the same weights (inference, CPU)
    bf16: bool = False  # ours through Predictor(precision="bf16") (inference)


TV = Variant("torchvision", torchvision=True)
OURS = Variant("ours")
OURS_TV_ROI = Variant("ours, tv roi_align", roi_align="torchvision")
OURS_NHWC = Variant("ours, channels_last", channels_last=True)
OURS_FOLDED = Variant("ours, folded BN", fold=True)
DETECTRON2 = Variant("detectron2", detectron2=True)
OURS_ORT = Variant("ours, onnxruntime", onnx="fp32")
OURS_ORT_INT8 = Variant("ours, onnxruntime int8", onnx="int8")
OURS_BF16 = Variant("ours, bf16", bf16=True)


def variants(device: torch.device, *, inference: bool = False) -> list[Variant]:
    """On the GPU `auto` already means torchvision's kernels, so that variant would repeat `ours`.
    Folded BN, detectron2, ONNX Runtime and bf16 are inference-only rows (ONNX and detectron2 on
    the CPU only)."""
    if device.type != "cpu":
        return [TV, OURS, OURS_NHWC] + ([OURS_FOLDED, OURS_BF16] if inference else [])
    extra = [OURS_FOLDED, DETECTRON2, OURS_ORT, OURS_ORT_INT8, OURS_BF16] if inference else []
    return [TV, OURS_TV_ROI, OURS, OURS_NHWC, *extra]


def configure(model: nn.Module, variant: Variant) -> nn.Module:
    """Our model set up as the variant says (torchvision's as it is); folding returns a folded copy."""
    if not variant.torchvision:
        for module in model.modules():
            if isinstance(module, MultiScaleRoIPooler):
                module.impl = variant.roi_align
        model.set_channels_last(variant.channels_last)
        if variant.fold:
            return fold_batchnorm(model.eval())
    return model


def _row_function(variant: Variant, tv: nn.Module, ours: nn.Module, dtype: str, batch: int, ctx: dict):
    """(model to move back to the CPU or None, predict function) for one row, or (None, None) with
    the reason in ctx["skip"] when the row does not run at this dtype / batch or here."""
    device = ctx["device"]
    special = variant.onnx or variant.detectron2 or variant.bf16
    if special and dtype != "fp32":
        return None, None
    if (variant.onnx or variant.detectron2) and batch != 1:
        return None, None
    if variant.onnx:
        fn = ctx["onnx"].predictor(variant.onnx)
        if fn is None:
            ctx["skip"] = ctx["onnx"].skipped[variant.onnx]
        return None, fn
    if variant.detectron2:
        if "detectron2" not in ctx:
            ctx["detectron2"] = detectron2_predictor(ours, ctx["settings"])
        fn, ctx["skip"] = ctx["detectron2"]
        return None, fn
    if variant.bf16:
        from ..predictor import Predictor

        predictor = Predictor(configure(ours, OURS).to(device), device=device)
        note = predictor.set_precision("bf16")
        if note:
            ctx["skip"] = note
            return None, None
        return ours, lambda images: [(d.boxes, d.labels, d.scores) for d in predictor.predict(images)]
    model = configure(tv if variant.torchvision else ours, variant).to(device)
    return model, _predictor(model, variant.torchvision, device, dtype)


def run_inference(
    tv: nn.Module, ours: nn.Module, images: list[Tensor], s: Settings, notes: list[str]
) -> list[dict]:
    """Rows of every inference variant at every dtype and batch size; why a row was left out is
    appended to `notes`."""
    device = torch.device(s.device)
    images = [im.to(device) for im in images]
    rows = []
    onnx = OnnxRow(
        ours, threads=torch.get_num_threads(), calibration=s.calibration, count=s.calibration_images
    )
    ctx = {"device": device, "settings": s, "onnx": onnx}
    for dtype in s.dtypes:
        for batch in s.batch_sizes:
            inputs = [images[i : i + batch] for i in range(0, len(images) - batch + 1, batch)]
            if not inputs:
                raise ValueError(f"batch {batch} needs at least {batch} images, got {len(images)}")
            reference = None
            for variant in variants(device, inference=True):
                ctx["skip"] = None
                model, fn = _row_function(variant, tv, ours, dtype, batch, ctx)
                if fn is None:
                    if ctx["skip"] and f"{variant.name}: skipped: {ctx['skip']}" not in notes:
                        notes.append(f"{variant.name}: skipped: {ctx['skip']}")
                    continue
                times, outputs, peak = measure(fn, inputs, runs=s.runs, warmup=s.warmup, device=device)
                if model is not None:
                    model.to("cpu")
                outputs = {k: [tuple(t.cpu() for t in d) for d in out] for k, out in outputs.items()}
                row = timing_row(variant.name, dtype, batch, times, peak)
                row["detections"] = [len(d[0]) for k in sorted(outputs) for d in outputs[k]]
                if variant.torchvision:
                    reference = outputs
                else:
                    row.update(compare(outputs, reference))
                # what the row computes in (`dtype` is the --dtypes pass it belongs to)
                row["precision"] = variant.onnx or ("bf16" if variant.bf16 else dtype)
                if variant.onnx:
                    row.update(onnx.details.get(variant.onnx, {}))
                rows.append(row)
                free_memory(device)
    configure(ours, OURS)
    onnx.close()
    return rows


def _predictor(model: nn.Module, is_tv: bool, device: torch.device, dtype: str) -> Callable:
    def predict(batch: list[Tensor]) -> list[tuple[Tensor, Tensor, Tensor]]:
        with torch.no_grad(), autocast(device, dtype):
            if is_tv:
                return [(d["boxes"], d["labels"], d["scores"]) for d in model.eval()(batch)]
            return [(d.boxes, d.labels, d.scores) for d in model.predict(batch)]

    return predict
