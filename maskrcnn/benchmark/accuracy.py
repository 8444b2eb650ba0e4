"""The accuracy rows of `maskrcnn benchmark --accuracy WEIGHTS DATA [CALIBRATION]`: box and mask AP
(pycocotools, IoU 0.50:0.95) of a trained model on a dataset spec in each precision it can run:

    eager fp32             Predictor (BatchNorm folded), what `maskrcnn evaluate` runs
    eager bf16             Predictor(precision="bf16"); skipped with the note without native bf16
    onnxruntime fp32       exported as `maskrcnn export` writes it, run by ONNX Runtime
    onnxruntime int8       quantised as `maskrcnn export --int8` writes it, calibrated on
                           `--calibration-images` images of CALIBRATION (default DATA, with a note)

Each row has AP and the change from eager fp32 in AP points (x100), int8 also the change from the
same graph in fp32 (what quantisation alone costs), and the evaluation's seconds.
Models to measure: the demo model (`maskrcnn demo --out D`: D/model_final.pt on `shapes:100:1000003`,
its held-out shapes; calibration `shapes:64`) and the fine-tuned ones of benchmarks/finetune.py
(`--work W`: W/balloon-init/model_final.pt on `via:../shared/data/balloon/val`, ...).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..checkpoints import load_model
from ..data.specs import build_dataset
from ..evaluation.coco_eval import evaluate_model
from ..predictor import Predictor
from .onnx_row import OnnxRow

if TYPE_CHECKING:
    from .speed import Settings

PRECISIONS = ("eager fp32", "eager bf16", "onnxruntime fp32", "onnxruntime int8")


def model_name(weights: str) -> str:
    """A run folder's name for .../NAME/model_final.pt, else the file's stem."""
    path = Path(weights)
    return path.parent.name if path.stem == "model_final" and path.parent.name else path.stem


def run_accuracy(s: Settings, *, notes: list[str], log: Callable[[str], None] = print) -> list[dict]:
    rows = []
    for weights, data, *calibration in s.accuracy:
        name = model_name(weights)
        if not calibration:
            notes.append(f"accuracy of {name}: int8 calibrated on its evaluation data {data}")
        model = load_model(weights, map_location="cpu").eval()
        dataset = build_dataset(data)
        onnx = OnnxRow(
            model,
            threads=torch.get_num_threads(),
            calibration=(calibration or [data])[0],
            count=s.calibration_images,
        )
        reference = None
        try:
            for precision in PRECISIONS:
                predictor = _predictor(model, precision, onnx, notes=notes, name=name)
                if predictor is None:
                    continue
                log(f"accuracy: {name} on {data}, {precision} ({len(dataset)} images)")
                start = time.perf_counter()
                metrics, _ = evaluate_model(predictor, dataset, progress=False)
                row = {
                    "model": name,
                    "weights": str(weights),
                    "data": data,
                    "precision": precision,
                    "images": len(dataset),
                    "box_AP": metrics["bbox"]["AP"],
                    "mask_AP": metrics.get("segm", {}).get("AP"),
                    "seconds": time.perf_counter() - start,
                    **(onnx.details.get(precision.split()[-1], {}) if precision.startswith("onnx") else {}),
                }
                reference = reference or row
                onnx_fp32 = next((r for r in rows[::-1] if r["precision"] == "onnxruntime fp32"), None)
                for key in ("box_AP", "mask_AP"):
                    if row[key] is not None and reference[key] is not None:
                        row[f"{key}_change"] = 100.0 * (row[key] - reference[key])  # AP points
                    if precision == "onnxruntime int8" and onnx_fp32 and onnx_fp32["model"] == name:
                        # the same graph in fp32: what quantisation alone costs
                        row[f"{key}_change_vs_onnx_fp32"] = 100.0 * (row[key] - onnx_fp32[key])
                rows.append(row)
        finally:
            onnx.close()
    return rows


def _predictor(model, precision: str, onnx: OnnxRow, *, notes: list[str], name: str):
    if precision.startswith("eager"):
        predictor = Predictor(model)
        note = predictor.set_precision(precision.split()[-1])
        if note:
            notes.append(f"accuracy of {name}, {precision}: skipped: {note}")
            return None
        return predictor
    from ..export.runtime import OnnxModel

    kind = precision.split()[-1]
    path = onnx.file(kind)
    if path is None:
        notes.append(f"accuracy of {name}, {precision}: skipped: {onnx.skipped[kind]}")
        return None
    return Predictor(OnnxModel(path, threads=onnx.threads))
