"""Implementations of `maskrcnn train` and `maskrcnn demo` (parsers live in maskrcnn/cli.py)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..config import apply_overrides, replace, resolve


class _ResumeAction(argparse.Action):
    """--resume [auto|always|never]. A bare --resume is `always` (what the former flag did), also
    when a key=value override follows it, which argparse hands to --resume as its value."""

    def __call__(self, parser, namespace, values, option_string=None):
        value = self.const if values is None else values
        if "=" in value:  # `--resume solver.max_iter=10`: the override goes back to the overrides
            namespace.overrides_after_resume = [value]
            value = self.const
        if value not in ("auto", "always", "never"):
            parser.error(f"argument --resume: invalid choice {value!r} (choose from auto, always, never)")
        setattr(namespace, self.dest, value)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        default="default",
        help="preset name (default, torchvision_v1, torchvision_v2, torchvision_keypoint, shapes_demo, "
        "shapes_keypoints) or a YAML file",
    )
    p.add_argument(
        "--train-data",
        required=True,
        help="dataset spec: coco:ANN.json:IMAGES, via:DIR, masks:DIR, shapes[:N[:SEED]]",
    )
    p.add_argument("--val-data", default=None, help="dataset spec evaluated at eval_period and at the end")
    p.add_argument("--out", required=True, help="run directory")
    p.add_argument(
        "--resume",
        nargs="?",
        const="always",
        default="auto",
        action=_ResumeAction,
        metavar="{auto,always,never}",
        help="auto (default): continue from RUN/checkpoint.pt when it is of the same config and "
        "training data, start at iteration 0 when there is none, stop when it is of another run; "
        "always (a bare --resume): continue from it whatever its config; never: start at iteration 0",
    )
    p.add_argument(
        "--init",
        default=None,
        metavar="W",
        help="start from these weights (config key train.init): a name of `maskrcnn weights`, a path or "
        "URL of a checkpoint or a torchvision state dict; the class-specific layers are remapped by "
        "class name, the rest must fit (train.init_strict, train.init_class_map, train.freeze)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", help="config overrides key=value, e.g. solver.max_iter=1000")


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    cfg = resolve(args.config, [*getattr(args, "overrides_after_resume", []), *args.overrides])
    if args.init is not None:  # the option wins over the config's train.init
        cfg = replace(cfg, train=replace(cfg.train, init=args.init))
    result = train(
        cfg,
        train_data=args.train_data,
        val_data=args.val_data,
        out_dir=args.out,
        resume=args.resume,
        progress=not args.no_progress,
    )
    out = Path(args.out)
    resumed = "" if result["resumed_at"] is None else f" (resumed at iteration {result['resumed_at']})"
    curves = out / "training_curves.png"  # not drawn without a logged iteration (solver.max_iter=0)
    shown = f"; training curves: {curves}" if curves.is_file() else ""
    print(f"trained {result['iterations']} iterations{resumed}; model: {out / 'model_final.pt'}{shown}")
    return 0


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", default=None, help="output folder (default: ./maskrcnn-demo, ./maskrcnn-keypoint-demo)"
    )
    p.add_argument("--train-images", type=int, default=800)
    p.add_argument("--val-images", type=int, default=100)
    p.add_argument(
        "--keypoints",
        action="store_true",
        help="the keypoint demo: the corners of the shapes as keypoints (preset shapes_keypoints)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "overrides", nargs="*", help="config overrides on the shapes_demo (shapes_keypoints) preset"
    )


def cmd_demo(args: argparse.Namespace) -> int:
    out = args.out or ("maskrcnn-keypoint-demo" if args.keypoints else "maskrcnn-demo")
    summary = run_demo(
        out,
        train_images=args.train_images,
        val_images=args.val_images,
        overrides=args.overrides,
        progress=not args.no_progress,
        keypoints=args.keypoints,
    )
    second = (
        f"keypoint AP {summary['keypoint_AP']:.3f}" if args.keypoints else f"mask AP {summary['mask_AP']:.3f}"
    )
    print(
        f"demo finished in {summary['wall_time_s']:.0f} s: box AP {summary['box_AP']:.3f}, "
        f"{second}; overlays in {summary['overlays']}; training curves: {summary['training_curves']}"
    )
    return 0


def _enlarged(image, instances, factor: int):
    """The 128-pixel demo images and their instances (Targets or Detections) scaled up `factor`
    times (nearest neighbour, so keypoint coordinates scale exactly), so that the overlays' labels
    do not hide the shapes."""
    import dataclasses

    import torch.nn.functional as F

    big = F.interpolate(image[None], scale_factor=factor, mode="nearest")[0]
    changes = {"boxes": instances.boxes * factor}
    planes = instances.masks  # read once: Detections build their planes from crops on each read
    if planes is not None and len(planes):
        masks = F.interpolate(planes[None].float(), scale_factor=factor, mode="nearest")[0] > 0.5
        changes["masks"] = masks
    elif planes is not None:  # interpolate refuses empty inputs
        changes["masks"] = planes.new_zeros((0, *big.shape[-2:]))
    if instances.keypoints is not None:
        keypoints = instances.keypoints.clone()
        keypoints[..., :2] *= factor
        changes["keypoints"] = keypoints
    return big, dataclasses.replace(instances, **changes)


def _draw_overlays(model, samples: list, out: Path) -> None:
    """Ground truth | predictions (score >= 0.5; keypoints with their skeleton) of each sample; the
    ground truth without masks for a model without the mask branch, so both panels show the image."""
    import dataclasses

    import torch

    from ..inspect.canvas import grid, titled
    from ..predict import model_skeleton
    from ..visualize import draw_detections, draw_targets

    out.mkdir(parents=True, exist_ok=True)
    skeleton = model_skeleton(model.config)
    with torch.no_grad():
        detections = model.predict([s.image for s in samples])
    masks = model.config.model.roi_heads.mask_on
    for s, det in zip(samples, detections):
        targets = s.targets if masks else dataclasses.replace(s.targets, masks=None)
        truth = draw_targets(*_enlarged(s.image, targets, 3), model.class_names, skeleton=skeleton)
        predicted = draw_detections(
            *_enlarged(s.image, det, 3),
            class_names=model.class_names,
            score_thresh=0.5,
            skeleton=skeleton,
        )
        picture = grid([titled(truth, "ground truth"), titled(predicted, "predicted (score >= 0.5)")], 2)
        picture.save(out / f"{Path(s.file_name).stem}.png")


def run_demo(
    out_dir: str | Path,
    *,
    train_images: int = 800,
    val_images: int = 100,
    overrides: list[str] | None = None,
    progress: bool = True,
    keypoints: bool = False,
) -> dict:
    """Train the small shapes model on the CPU, evaluate it on held-out shapes, draw overlays.
    `keypoints`: the keypoint demo (preset shapes_keypoints, the shapes' corners as keypoints: see
    `maskrcnn.data.shapes`), evaluated with box and keypoint AP instead of box and mask AP."""
    from ..checkpoints import load_model
    from ..data.shapes import ShapesDataset
    from ..evaluation.report import format_table
    from ..files import atomic_write_json
    from .train import train

    start = time.perf_counter()
    out = Path(out_dir)
    cfg = apply_overrides(resolve("shapes_keypoints" if keypoints else "shapes_demo"), overrides or [])
    train_set = ShapesDataset(train_images, seed=0, keypoints=keypoints)
    # a different seed: images never seen in training
    val_set = ShapesDataset(val_images, seed=1_000_003, keypoints=keypoints)
    # a demo run starts over in its folder (`maskrcnn train` would continue a finished run there)
    result = train(
        cfg, train_data=train_set, val_data=val_set, out_dir=out, resume="never", progress=progress
    )
    metrics = result["metrics"]
    model = load_model(out / "model_final.pt")
    overlays = out / "overlays"
    _draw_overlays(model, [val_set[i] for i in range(min(8, len(val_set)))], overlays)
    summary = {
        "wall_time_s": time.perf_counter() - start,
        "iterations": result["iterations"],
        "box_AP": metrics["bbox"]["AP"],
        **({"keypoint_AP": metrics["keypoints"]["AP"]} if keypoints else {"mask_AP": metrics["segm"]["AP"]}),
        "overlays": str(overlays),
        "training_curves": str(out / "training_curves.png"),  # drawn by train() at its end
    }
    atomic_write_json(out / "demo_summary.json", summary)
    if not progress:  # with progress, the trainer's evaluation has printed the table already
        print(format_table(metrics))
    return summary
