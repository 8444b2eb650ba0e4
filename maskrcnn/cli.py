"""Command-line interface: `maskrcnn COMMAND ...` (see `maskrcnn --help`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert.torchvision import from_torchvision, load_torchvision_state
    from .engine.checkpoint import save_model

    version = args.source.split("-")[-1]
    model = from_torchvision(load_torchvision_state(args.input), version)
    save_model(model, args.output)
    print(f"wrote {args.output}: torchvision {version}, {model.config.model.num_classes} classes")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from . import load
    from .predict import predict_files, write_json_atomic

    missing = [p for p in args.inputs if not Path(p).exists()]
    if missing:
        print(f"error: input not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    model = load(args.weights)
    records = predict_files(model, args.inputs, batch_size=args.batch_size, device=args.device)
    out = Path(args.out) / "predictions.json"
    write_json_atomic(records, out)
    print(f"wrote {out}: {len(records)} detections on {len(args.inputs)} images")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskrcnn", description="Mask R-CNN instance segmentation.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert a torchvision Mask R-CNN state dict to our checkpoint")
    p.add_argument("--from", dest="source", required=True, choices=["torchvision-v1", "torchvision-v2"])
    p.add_argument("input", help="torchvision state dict (.pth)")
    p.add_argument("output", help="our checkpoint (.pt)")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("predict", help="run a model on images and write COCO results")
    p.add_argument("--weights", required=True, help="checkpoint path or URL")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("inputs", nargs="+", help="image files")
    p.set_defaults(func=_cmd_predict)

    from .engine import commands

    p = sub.add_parser("train", help="train a model (single process, or under torchrun for several)")
    commands.add_train_arguments(p)
    p.set_defaults(func=commands.cmd_train)

    p = sub.add_parser(
        "demo", help="train and evaluate a small model on synthetic shapes (CPU, no downloads)"
    )
    commands.add_demo_arguments(p)
    p.set_defaults(func=commands.cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
