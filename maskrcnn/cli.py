"""Command-line interface: `maskrcnn COMMAND ...` (see `maskrcnn --help`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .engine import options


def _shares_line(shares: list) -> str:
    """How a torchrun launch shared the work: "2 processes: rank 0 ran 5 inputs on cpu (3.1 s), ..."."""
    runs = [f"rank {s.rank} ran {len(s.inputs)} inputs on {s.device} ({s.seconds:.1f} s)" for s in shares]
    return f"{len(shares)} processes: {', '.join(runs)}"


def _cmd_predict(args: argparse.Namespace) -> int:
    from . import load
    from .distributed import cleanup, init_distributed
    from .files import WriteError
    from .inputs import collect_inputs
    from .predict import run_predictions
    from .tiling import tile_settings

    if args.max_pixels < 0:
        from .errors import UserError

        raise UserError(f"--max-pixels must be >= 0 (0: no limit), got {args.max_pixels}")
    tile = tile_settings(args)
    items, problems = collect_inputs(args.inputs, glob=args.glob)
    formats = [f.strip() for f in args.to.split(",")] if args.to else []
    if formats:  # checked before any work: an existing pre-label folder is never overwritten
        from .prelabel import check_prelabel_request

        check_prelabel_request(args.out, formats, items)
    model = load(args.weights)
    options.set_precision(model, args.precision, args.device)
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
            track=args.track,
            max_pixels=args.max_pixels or None,  # 0: no limit
            tile=tile,
        )
    except WriteError as e:  # a full disk: say what is left
        results = Path(args.out) / "predictions.json"
        if not str(e).startswith(f"could not write {results}:"):
            raise WriteError(f"{e}; {results} was not written; the files written before are complete") from e
        raise
    finally:
        cleanup(dist)
    if not dist.is_main:  # rank 0 reports the whole job
        return 0
    out = Path(args.out)
    images = f"{report.images} image{'' if report.images == 1 else 's'}"
    print(f"wrote {out / 'predictions.json'}: {len(report.records)} detections on {images}")
    if formats:
        from .prelabel import write_report_prelabels

        for to in formats:
            print(write_report_prelabels(report, items, out, to=to, predictor=model))
    for name, count in report.tracks.items():
        print(f"tracked {name}: {count} track{'' if count == 1 else 's'}")
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


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from .benchmark.speed import main as bench_main

    return bench_main(args.bench_args)


def _report(metrics: dict, results: list[dict], out: str) -> None:
    from .evaluation.report import format_per_class, format_table, write_report

    paths = write_report(metrics, results, out)
    print(format_table(metrics))
    print("\nper-class AP (IoU .5:.95, %)")
    print(format_per_class(metrics))
    if "errors" in metrics:  # --errors: the dAP table of the error analysis, and errors.html
        from .evaluation.tide import format_errors

        print("\nerrors: AP points gained if that error type were fixed (IoU .5; errors.html)")
        print(format_errors(metrics["errors"]))
        paths["errors.html"] = Path(out) / "errors.html"
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
    options.set_precision(model, args.precision, args.device)
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
    if dist.is_main and args.errors:
        from .evaluation.errors_page import dataset_error_report

        metrics["errors"] = dataset_error_report(dataset, results, args.out, iou_types=list(metrics))[0]
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
    from .evaluation.errors_page import check_image_folder, results_error_report
    from .evaluation.keypoint_eval import parse_sigmas

    check_image_folder(args.images)
    results = load_results(args.results)
    sigmas = parse_sigmas(args.oks_sigmas) if args.oks_sigmas else None
    metrics = evaluate_coco_results(args.annotations, args.results, oks_sigmas=sigmas)
    if args.errors and any(t in metrics for t in ("bbox", "segm")):
        metrics["errors"] = results_error_report(
            args.annotations, results, args.out, iou_types=list(metrics), images=args.images
        )[0]
    _report(metrics, results, args.out)
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
    from .engine import commands, conversion, data_check, dataset_commands, weights_command
    from .evaluation import errors_page

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
    p.add_argument(
        "--to",
        metavar="FORMATS",
        default=None,
        help="labelme, coco, yolo, cvat (comma-separated for several): also write the image predictions "
        "as an annotation set in OUT/FORMAT/ (pre-labels)",
    )
    p.add_argument(
        "--track",
        action="store_true",
        help="link detections across video frames and a folder's images: track_id, colours, summary",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=200_000_000,  # maskrcnn.image_limits.DEFAULT_MAX_PIXELS (not imported with the parser)
        help="skip images of more pixels than this, from their header (default 200000000: a 12000x9000 "
        "photo passes; 0: no limit)",
    )
    options.add_tile_arguments(p)
    options.add_precision_argument(p)
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
    options.add_tile_arguments(p)
    options.add_precision_argument(p)
    errors_page.add_errors_argument(p)
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
    errors_page.add_errors_argument(p)
    p.add_argument(
        "--images", metavar="DIR", help="--errors: the image folder of the annotations, for the gallery"
    )
    p.set_defaults(func=_cmd_evaluate_results)

    p = sub.add_parser("show-data", help="draw a dataset's ground truth into PNG files")
    dataset_commands.add_show_data_arguments(p)
    p.set_defaults(func=dataset_commands.cmd_show_data)

    p = sub.add_parser(
        "convert-dataset", help="write a dataset as a COCO instances JSON file, or a labelme or YOLO folder"
    )
    dataset_commands.add_convert_dataset_arguments(p)
    p.set_defaults(func=dataset_commands.cmd_convert_dataset)

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
    weights_command.add_weights_arguments(p)
    p.set_defaults(func=weights_command.cmd_weights)

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
    Ctrl-C (SIGINT) ends any command with the one line `interrupted` and exit status 130 (files
    are written atomically: what was complete stays, nothing partial is left).
    """
    try:
        return _run(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return INTERRUPTED


INTERRUPTED = 130  # 128 + SIGINT, the shell's status for a command ended by Ctrl-C


def _run(argv: list[str] | None) -> int:
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
