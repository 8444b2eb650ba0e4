"""`maskrcnn export --weights W --out model.onnx [--opset 17] [--int8 --calibration SPEC
[--calibration-images N]]`: the model as one ONNX graph (`export.onnx`), or that graph statically
quantised to int8, calibrated on SPEC's images (`export.quantize`, `export.calibration`)."""

from __future__ import annotations

import argparse

from ..errors import UserError


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", required=True, help="checkpoint path, URL or name (`maskrcnn weights`)")
    p.add_argument("--out", required=True, help="the ONNX file to write, e.g. model.onnx")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (16 or newer; default 17)")
    p.add_argument(
        "--int8",
        action="store_true",
        help="quantise to int8 (static, calibrated on --calibration): smaller, and faster on CPUs with "
        "AVX-512 VNNI",
    )
    p.add_argument(
        "--calibration",
        metavar="SPEC",
        default=None,
        help="--int8: the images to calibrate on: a dataset spec (coco:ANN.json:IMAGES, via:DIR, shapes:N, "
        "...) or a folder of images",
    )
    p.add_argument(
        "--calibration-images",
        type=int,
        default=64,
        metavar="N",
        help="--int8: calibrate on N images spread over SPEC (default 64)",
    )


def cmd_export(args: argparse.Namespace) -> int:
    from .. import load
    from ..export.onnx import check_opset, export_onnx, require_onnx

    if args.int8 and not args.calibration:
        raise UserError(
            "--int8 needs --calibration SPEC: a dataset spec or a folder of images to calibrate on"
        )
    if args.calibration and not args.int8:
        raise UserError("--calibration is for --int8 export; add --int8 or leave --calibration out")
    require_onnx()
    check_opset(args.opset)
    images = None
    if args.int8:  # read the calibration data first: a bad spec fails before the model is traced
        from ..export.calibration import calibration_images_from

        images = calibration_images_from(args.calibration, count=args.calibration_images)
    predictor = load(args.weights)
    if not hasattr(predictor.model, "backbone"):
        raise UserError(f"--weights {args.weights}: export takes a PyTorch checkpoint, not an exported model")
    print(f"exporting {args.weights} to ONNX (opset {args.opset}): tracing the model once ...", flush=True)
    if images is None:
        path = export_onnx(predictor.model, args.out, opset=args.opset)
    else:
        from ..export.quantize import export_int8

        print(f"quantising to int8, calibrated on {len(images)} images of {args.calibration} ...", flush=True)
        model, spec, opset = predictor.model, args.calibration, args.opset
        path = export_int8(model, args.out, calibration_images=images, calibration_spec=spec, opset=opset)
    size = path.stat().st_size / 2**20
    precision = "int8 " if args.int8 else ""
    print(
        f"wrote {path} ({precision}{size:.0f} MB): one (3, H, W) float image in [0, 1] per run, "
        "H and W dynamic"
    )
    return 0
