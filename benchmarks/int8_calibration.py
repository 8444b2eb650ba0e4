"""AP of one trained model in each precision, and of int8 by calibration method: eager fp32, eager
bf16 (where the CPU has native bf16), onnxruntime fp32, and onnxruntime int8 calibrated with each
of `--methods` (MinMax, the default of `maskrcnn export --int8`, or percentile / entropy).

    python benchmarks/int8_calibration.py --weights runs/demo/model_final.pt \
        --data shapes:100:1000003 --calibration shapes:64 --count 64 --out demo.json

Prints a table of box / mask AP and their change in AP points against eager fp32; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskrcnn.checkpoints import load_model  # noqa: E402
from maskrcnn.data.specs import build_dataset  # noqa: E402
from maskrcnn.evaluation.coco_eval import evaluate_model  # noqa: E402
from maskrcnn.export.calibration import calibration_images_from  # noqa: E402
from maskrcnn.export.onnx import export_onnx  # noqa: E402
from maskrcnn.export.quantize import METHODS, quantize_onnx  # noqa: E402
from maskrcnn.export.runtime import OnnxModel  # noqa: E402
from maskrcnn.predictor import Predictor  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--data", required=True, help="the evaluation dataset spec")
    p.add_argument("--calibration", required=True, help="the calibration dataset spec or image folder")
    p.add_argument("--count", type=int, default=64, help="calibration images (default 64)")
    p.add_argument("--methods", default="minmax,percentile", help=f"comma-separated, of {METHODS}")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_model(args.weights, map_location="cpu").eval()
    dataset = build_dataset(args.data)
    rows: list[dict] = []

    def evaluate(name: str, predictor: Predictor) -> None:
        start = time.perf_counter()
        metrics, _ = evaluate_model(predictor, dataset, progress=False)
        rows.append(
            {
                "precision": name,
                "box_AP": metrics["bbox"]["AP"],
                "mask_AP": metrics["segm"]["AP"],
                "seconds": time.perf_counter() - start,
            }
        )
        print(f"{name}: box AP {rows[-1]['box_AP']:.4f}, mask AP {rows[-1]['mask_AP']:.4f}", flush=True)

    evaluate("eager fp32", Predictor(model))
    bf16 = Predictor(model)
    note = bf16.set_precision("bf16")
    if note is None:
        evaluate("eager bf16", bf16)
    else:
        print(f"eager bf16 skipped: {note}")
    with tempfile.TemporaryDirectory(prefix="int8-calibration-") as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx")
        evaluate("onnxruntime fp32", Predictor(OnnxModel(fp32, threads=args.threads)))
        images = calibration_images_from(args.calibration, count=args.count)
        for method in args.methods.split(","):
            path = quantize_onnx(
                fp32, Path(tmp) / f"{method}.onnx", calibration_images=images, progress=False, method=method
            )
            evaluate(f"int8 {method}", Predictor(OnnxModel(path, threads=args.threads)))
    reference = rows[0]
    print(f"\n{'precision':<18} {'box AP':>7} {'mask AP':>8} {'Δ box':>7} {'Δ mask':>7}  (AP points)")
    for row in rows:
        row["box_AP_change"] = 100.0 * (row["box_AP"] - reference["box_AP"])
        row["mask_AP_change"] = 100.0 * (row["mask_AP"] - reference["mask_AP"])
        print(
            f"{row['precision']:<18} {row['box_AP']:>7.4f} {row['mask_AP']:>8.4f} "
            f"{row['box_AP_change']:>+7.2f} {row['mask_AP_change']:>+7.2f}"
        )
    if args.out:
        settings = {k: str(v) for k, v in vars(args).items()}
        args.out.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
