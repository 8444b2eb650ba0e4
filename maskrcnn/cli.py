"""Command-line interface: `maskrcnn COMMAND ...` (see `maskrcnn --help`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _shares_line(shares: list) -> str:
    """How a torchrun launch shared the work: "2 processes: rank 0 ran 5 inputs on cpu (3.1 s), ..."."""
    runs = [f"rank {s.rank} ran {len(s.inputs)} inputs on {s.device} ({s.seconds:.1f} s)" for s in shares]
    return f"{len(shares)} processes: {', '.join(runs)}"


def set_precision(predictor, precision: str, device: str) -> None:
    """`--precision`: set on the predictor (a UserError for an ONNX model in bf16); the one-line
    note goes to stderr when `device` has no native bf16 and fp32 runs instead."""
    from .hardware import resolve_precision

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


def _cmd_predict(args: argparse.Namespace) -> int:
    from . import load
    from .distributed import cleanup, init_distributed
    from .inputs import collect_inputs
    from .predict import run_predictions
    from .tiling import tile_settings

    tile = tile_settings(args)
    items, problems = collect_inputs(args.inputs, glob=args.glob)
    model = load(args.weights)
    set_precision(model, args.precision, args.device)
    dist = init_distributed(args.device)  # torchrun: this process predicts its share of the inputs
    try:
        report = run_predictions(
            model,
            items,
            args.out,
            batch_size=args.batch_size,
            device=args.device,
            score_thresh=args.score_thresh,
            classes=args.classes,
            save_masks=args.save_masks,
            overlays=not args.no_overlays,
            progress=not args.no_progress,
            dist=dist,
            tile=tile,
        )
    finally:
        cleanup(dist)
    if not dist.is_main:  # rank 0 reports the whole job
        return 0
    out = Path(args.out)
    images = f"{report.images} image{'' if report.images == 1 else 's'}"
    print(f"wrote {out / 'predictions.json'}: {len(report.records)} detections on {images}")
    if report.shares:
        print(f"wrote {out / 'shards.json'}: {_shares_line(report.shares)}")
    for video, frames, count in report.videos:
        print(f"wrote {video} and {frames}: {count} frames")
    failures = [r if r.startswith(name) else f"{name}: {r}" for name, r in problems + report.failures]
    if len(failures) == 1:
        print(f"error: {failures[0]} (skipped)", file=sys.stderr)
    elif failures:  # one line says what happened, then one indented line per input
        print(f"error: {len(failures)} inputs failed and were skipped:", file=sys.stderr)
        for failure in failures:
            print(f"  {failure}", file=sys.stderr)
    return 1 if failures else 0


def _cmd_weights(args: argparse.Namespace) -> int:
    from . import weights
    from .checkpoints import cache_dir

    for name in args.fetch or []:
        entry = weights.get(name)
        path = weights.converted(name) if entry.kind == "model" else weights.fetch(entry)
        print(f"{entry.name}: {path}")
    rows = [
        (row["name"], ", ".join(row["aliases"]), weights.format_metrics(row["metrics"]), row["cached"])
        for row in weights.listing()
    ]
    header = ("name", "aliases", "published", "cached")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    mirror = f"; mirror ({weights.MIRROR_ENV}): {weights.mirror_base()}" if weights.mirror_base() else ""
    print(f"\ncache: {cache_dir()}{mirror}")
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from .benchmark.speed import main as bench_main

    return bench_main(args.bench_args)


def _report(metrics: dict, results: list[dict], out: str) -> None:
    from .evaluation.report import format_per_class, format_table, write_report

    paths = write_report(metrics, results, out)
    print(format_table(metrics))
    print("\nper-class AP (IoU .5:.95, %)")
    print(format_per_class(metrics))
    print(f"\nwrote {', '.join(str(p) for p in paths.values())}")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from . import load
    from .data.specs import build_dataset
    from .distributed import cleanup, init_distributed
    from .evaluation.coco_eval import evaluate_model
    from .tiling import tile_settings

    tile = tile_settings(args)
    dataset = build_dataset(args.data)
    model = load(args.weights)
    set_precision(model, args.precision, args.device)
    dist = init_distributed(args.device)  # torchrun: this process predicts its share of the images
    shares: list = []
    try:
        metrics, results = evaluate_model(
            model,
            dataset,
            batch_size=args.batch_size,
            device=args.device,
            progress=not args.no_progress,
            dist=dist,
            shares=shares,
            tile=tile,
        )
    finally:
        cleanup(dist)
    if dist.is_main:  # the others have nothing to report
        _report(metrics, results, args.out)
    if shares:
        from .files import atomic_write_json

        path = Path(args.out) / "shards.json"
        atomic_write_json(path, [s.as_dict() for s in shares], indent=1)
        print(f"wrote {path}: {_shares_line(shares)}")
    return 0


def _cmd_evaluate_results(args: argparse.Namespace) -> int:
    from .evaluation.coco_eval import evaluate_coco_results, load_results
    from .evaluation.keypoint_eval import parse_sigmas

    results = load_results(args.results)
    sigmas = parse_sigmas(args.oks_sigmas) if args.oks_sigmas else None
    metrics = evaluate_coco_results(args.annotations, args.results, oks_sigmas=sigmas)
    _report(metrics, results, args.out)
    return 0


def _cmd_show_data(args: argparse.Namespace) -> int:
    from .data.specs import build_dataset
    from .errors import UserError
    from .visualize import draw_targets

    if args.limit is not None and args.limit < 0:
        raise UserError(f"--limit must be >= 0, got {args.limit}")
    dataset = build_dataset(args.spec)
    count = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for index in range(count):
        sample = dataset[index]
        name = Path(sample.file_name).stem or str(index)
        if name in used:
            name = f"{name}_{index}"
        used.add(name)
        skeleton = getattr(dataset, "skeleton", None) or ()  # keypoint datasets: points joined
        picture = draw_targets(sample.image, sample.targets, dataset.class_names, skeleton=skeleton)
        picture.save(out / f"{name}.png")
    print(f"wrote {count} images to {out}")
    return 0


def _cmd_convert_dataset(args: argparse.Namespace) -> int:
    from .data.specs import build_dataset, write_dataset

    dataset = build_dataset(args.spec)
    path = write_dataset(dataset, args.output, to=args.to, split=args.split)
    what = "" if args.to == "coco" else f" ({args.to} folder)"
    print(f"wrote {path}{what}: {len(dataset)} images, {dataset.num_classes} classes")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskrcnn",
        description="Mask R-CNN instance segmentation.",
        epilog="Bad input is reported as one line `error: ...` with exit status 1 (2 for a wrong command "
        "line); --debug shows its traceback.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the Python traceback of errors in the input too"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    from . import tiling
    from .engine import commands, conversion, data_check

    p = sub.add_parser(
        "convert",
        help="convert a torchvision or detectron2 Mask R-CNN / Keypoint R-CNN checkpoint to our checkpoint",
    )
    conversion.add_convert_arguments(p)
    p.set_defaults(func=conversion.cmd_convert)

    p = sub.add_parser(
        "predict", help="run a model on images, folders and videos; write results and overlays"
    )
    p.add_argument("--weights", required=True, help="checkpoint path, URL or name (`maskrcnn weights`)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--score-thresh", type=float, default=None, help="keep detections scoring at least this")
    p.add_argument(
        "--classes",
        action="append",
        metavar="NAMES",
        help="keep only these classes: names or category ids, comma-separated (repeatable)",
    )
    p.add_argument("--glob", default=None, help="pattern for files in folder inputs (default: image files)")
    p.add_argument("--save-masks", action="store_true", help="also write one PNG per detected instance")
    p.add_argument("--no-overlays", action="store_true", help="do not draw overlay images")
    tiling.add_tile_arguments(p)
    add_precision_argument(p)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) and video files")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser("evaluate", help="COCO-evaluate a model on a dataset and write a report")
    p.add_argument("--weights", required=True, help="checkpoint path, URL or name (`maskrcnn weights`)")
    p.add_argument(
        "--data",
        required=True,
        help="dataset spec, e.g. coco:ANN.json:IMAGE_DIR, via:DIR, labelme:DIR, yolo:DIR:val",
    )
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--device", default="cpu")
    tiling.add_tile_arguments(p)
    add_precision_argument(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("evaluate-results", help="COCO-evaluate a results JSON against ground truth")
    p.add_argument("--results", required=True, help="COCO results JSON (a list of detection records)")
    p.add_argument("--annotations", required=True, help="COCO ground-truth JSON")
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument(
        "--oks-sigmas",
        metavar="S1,S2,...",
        help="keypoint AP's per-keypoint OKS sigmas (default: COCO's for its 17 person keypoints)",
    )
    p.set_defaults(func=_cmd_evaluate_results)

    p = sub.add_parser("show-data", help="draw a dataset's ground truth into PNG files")
    p.add_argument(
        "spec",
        help="dataset spec, e.g. shapes:8, via:DIR, masks:DIR, labelme:DIR, yolo:DIR, coco:ANN.json:IMAGES",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--limit", type=int, default=20, help="draw the first N images (default 20)")
    p.set_defaults(func=_cmd_show_data)

    p = sub.add_parser(
        "convert-dataset", help="write a dataset as a COCO instances JSON file, or a labelme or YOLO folder"
    )
    p.add_argument(
        "spec", help="dataset spec, e.g. via:DIR, masks:DIR, labelme:DIR, yolo:DIR[:SPLIT], shapes:N"
    )
    p.add_argument("output", help="the COCO JSON file to write, or (--to labelme, yolo) the new folder")
    p.add_argument(
        "--to",
        choices=("coco", "labelme", "yolo"),
        default="coco",
        help="output format (default coco); a labelme or YOLO folder must be new or empty",
    )
    p.add_argument(
        "--split", default=None, help="--to yolo: the split to write the images as (default train)"
    )
    p.set_defaults(func=_cmd_convert_dataset)

    p = sub.add_parser(
        "check-data", help="check a dataset as training reads it: every problem, counted, with examples"
    )
    data_check.add_check_data_arguments(p)
    p.set_defaults(func=data_check.cmd_check_data)

    p = sub.add_parser("train", help="train a model (single process, or under torchrun for several)")
    commands.add_train_arguments(p)
    p.set_defaults(func=commands.cmd_train)

    p = sub.add_parser(
        "demo", help="train and evaluate a small model on synthetic shapes (CPU, no downloads)"
    )
    commands.add_demo_arguments(p)
    p.set_defaults(func=commands.cmd_demo)

    p = sub.add_parser(
        "weights", help="list the published weights usable by name (--weights NAME), their AP, cache state"
    )
    p.add_argument(
        "--fetch", nargs="+", metavar="NAME", help="download (and convert) these now, for offline use later"
    )
    p.set_defaults(func=_cmd_weights)

    from .engine import export_command

    p = sub.add_parser("export", help="export a model as one ONNX graph for ONNX Runtime (maskrcnn[onnx])")
    export_command.add_export_arguments(p)
    p.set_defaults(func=export_command.cmd_export)

    p = sub.add_parser(
        "benchmark",
        help="time our model against torchvision's, same weights and images (--help for its options)",
        add_help=False,
        prefix_chars="+",  # every argument, options and --help included, goes to the benchmark's parser
    )
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_cmd_benchmark)

    from .inspect import command as inspect_command

    p = sub.add_parser("inspect", help="draw every stage of the model on one image (PNGs + index.html)")
    inspect_command.add_inspect_arguments(p)
    p.set_defaults(func=inspect_command.cmd_inspect)

    from .serve import command as serve_command

    p = sub.add_parser("serve", help="serve a model over HTTP: a JSON API and a web page (maskrcnn[serve])")
    serve_command.add_serve_arguments(p)
    p.set_defaults(func=serve_command.cmd_serve)
    return parser


def _check_shared_options(args: argparse.Namespace) -> None:
    """Values of options that several commands share, checked before any work (argparse checks
    only their types): each error names the option."""
    from .errors import UserError

    batch_size = getattr(args, "batch_size", None)
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    score_thresh = getattr(args, "score_thresh", None)
    if score_thresh is not None and not 0.0 <= score_thresh <= 1.0:
        raise UserError(f"--score-thresh must be in [0, 1], got {score_thresh}")
    if getattr(args, "device", None) is not None:
        from .hardware import resolve_device

        try:
            resolve_device(args.device)
        except UserError as e:
            raise UserError(f"--device: {e}") from None


def main(argv: list[str] | None = None) -> int:
    """Run one command and return its exit status.

    User errors (`maskrcnn.errors.is_user_error`: our `UserError`, and `OSError` for files and
    downloads) print one line `error: MESSAGE` on stderr and give exit status 1, in every command
    and in every process of a torchrun launch; `--debug` re-raises them with their traceback. Other
    exceptions are bugs and propagate with theirs. Usage errors exit with argparse's status 2.
    """
    args = build_parser().parse_args(argv)
    try:
        _check_shared_options(args)
        return int(args.func(args) or 0)
    except Exception as e:
        from .errors import is_user_error, one_line

        if args.debug or not is_user_error(e):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
