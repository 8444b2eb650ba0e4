"""Command-line options that several commands share (`--precision`, `--tile ...`), kept free of
torch imports: `maskrcnn --help` builds every parser without loading torch."""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_precision_argument", "add_tile_arguments", "set_precision"]


def set_precision(predictor, precision: str, device: str) -> None:
    """`--precision`: set on the predictor (a UserError for an ONNX model in bf16); the one-line
    note goes to stderr when `device` has no native bf16 and fp32 runs instead."""
    from ..hardware import resolve_precision

    predictor.set_precision(precision)
    note = resolve_precision(precision, device)[1]
    if note:
        print(f"note: {note}", file=sys.stderr, flush=True)


def add_precision_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="bf16: the trunk and RPN head in bfloat16 where the CPU (AVX-512 BF16 / AMX) or GPU has "
        "native bf16, else fp32 with a note (default fp32)",
    )


def add_tile_arguments(p: argparse.ArgumentParser) -> None:
    """`--tile SIZE [--tile-overlap F] [--tile-merge merge|nms] [--tile-full-image]` (predict, evaluate)."""
    p.add_argument(
        "--tile",
        type=int,
        default=None,
        metavar="SIZE",
        help="tiled inference: cut each image into SIZE x SIZE tiles at native resolution (for small "
        "objects in large images; see README, Large images)",
    )
    p.add_argument(
        "--tile-overlap", type=float, default=0.2, help="least overlap of neighbouring tiles (fraction, 0.2)"
    )
    p.add_argument(
        "--tile-merge",
        choices=("merge", "nms"),
        default="merge",
        help="merge: join the pieces of objects cut by tile borders (default); nms: keep the best piece",
    )
    p.add_argument(
        "--tile-full-image", action="store_true", help="also run the whole image, resized, for large objects"
    )
