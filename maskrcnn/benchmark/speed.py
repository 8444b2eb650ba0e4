"""Speed of our Mask R-CNN against torchvision's, in one process, on identical weights and images.

Weights: torchvision's `maskrcnn_resnet50_fpn(weights=None)` built with a fixed seed and made
decisive (random norm statistics, sharper classifiers: ~100 confident detections per image, as a
trained model gives), converted to ours; ours runs with `roi_heads.roi_align_impl=auto` (the sparse
RoIAlign on the CPU in fp32, torchvision's kernels elsewhere). Images: coco-mini val images that
share one padded size after the models' resize (800×1088), so that a batch is one tensor for both.

GPU (all of it): inference latency at batch 1 and throughput at batch 8, fp32 and bf16 autocast;
training images/s at batch 8 (forward, backward, SGD step) on coco-mini train as 1024×1024 large-
scale-jitter crops (`lsj1024`) and as multi-scale batches, shorter side 640..800, longer ≤ 1333
(`multiscale800`); peak memory; detections of each model and the largest box difference to
torchvision. Variants: torchvision, ours, ours with channels-last memory.
CPU: batch-1 fp32 inference (plus ours with torchvision's RoIAlign kernels, to show what the sparse
path gives). Inference on both also runs ours with BatchNorm folded into the convs (what `Predictor`
runs) and, on the CPU, ours exported to ONNX and run by onnxruntime (fp32, batch 1; skipped with a
note when onnx/onnxruntime are not installed) in fp32 and statically quantised to int8, detectron2's
own model with the same weights (`detectron2_row`), and ours in bf16 as `Predictor(precision="bf16")`
runs it (where the CPU has native bf16), each compared with torchvision's detections (boxes and
scores); the header gives the CPU model and its ISA flags. `--accuracy WEIGHTS DATA [CALIBRATION]`
adds box / mask AP of trained models in each precision (`accuracy`) and a summary table. Both: the
`shapes_demo` training step against a same-size torchvision model (benchmarks/demo_counterpart.py),
with a profile of torchvision's RoIAlign in that step.

Warm-up calls first, then `--runs` timed calls: CUDA events on the GPU, perf_counter on the CPU;
medians. Prints a table and writes a JSON file.

    maskrcnn benchmark                                   # CPU (4 min at 1 thread on a busy 2-core box)
    maskrcnn benchmark --device cuda --out gpu.json      # GPU, 20 runs per measurement
    python benchmarks/bench_speed.py --device cuda       # the same from a checkout
    maskrcnn benchmark --accuracy runs/demo/model_final.pt shapes:100:1000003 shapes:64

The images are coco-mini's (`--coco DIR`, default `../shared/data/coco-mini` from the current
folder, else beside the checkout the package was installed from).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..config import get_preset
from ..errors import UserError
from ..hardware import REPORTED_FLAGS, cpu_isa_flags, cpu_model
from ..model import build_model
from .accuracy import run_accuracy
from .demo_counterpart import torchvision_counterpart
from .inference import OURS, configure, run_inference, variants
from .onnx_row import onnxruntime_version
from .report import format_report
from .timing import autocast, device_name, free_memory, measure, profile_roi_align, timing_row
from .workloads import Batch, coco_dir, coco_models, coco_train_batches, shapes_batches, val_images

TRAIN_INPUTS = {"lsj1024": ((1024,), 1024), "multiscale800": ((640, 672, 704, 736, 768, 800), 1333)}


@dataclasses.dataclass
class Settings:
    device: str = "cpu"
    runs: int = 5  # timed calls per measurement
    warmup: int = 1
    images: int = 5  # coco-mini val images for inference
    batch_sizes: tuple[int, ...] = (1,)
    dtypes: tuple[str, ...] = ("fp32",)  # fp32 | bf16 (autocast)
    min_size: int = 800  # inference resize
    max_size: int = 1333
    detections: int = 100  # per image (torchvision's box_detections_per_img)
    proposals: int = 1000  # RPN proposals per image at inference (rpn_post_nms_top_n_test)
    coco_train: tuple[str, ...] = ()  # lsj1024 | multiscale800
    train_steps: int = 10  # timed training steps per variant
    demo_batch: int = 8
    profile: bool = True
    seed: int = 0
    coco: str = ""  # the coco-mini folder ("": default_coco_dir())
    detectron2: str = ""  # detectron2's source folder ("": ../shared/detectron2)
    calibration: str = ""  # dataset spec the int8 row is calibrated on ("": coco-mini train)
    calibration_images: int = 16
    accuracy: tuple[tuple[str, ...], ...] = ()  # (weights, data spec[, calibration spec]) per model

    @classmethod
    def for_device(cls, device: str, **changes: Any) -> Settings:
        if torch.device(device).type == "cuda":
            base = cls(device, runs=20, warmup=3, images=8, batch_sizes=(1, 8), dtypes=("fp32", "bf16"))
            base = dataclasses.replace(base, coco_train=tuple(TRAIN_INPUTS), train_steps=20)
        else:
            base = cls(device)
        return dataclasses.replace(base, **{k: v for k, v in changes.items() if v is not None})


def run_training(
    setting: str, tv: nn.Module, ours: nn.Module, batches: list[Batch], s: Settings
) -> tuple[list[dict], dict]:
    """Time forward + backward + SGD step for every variant (weights reset before each); returns rows
    and a profile of torchvision's RoIAlign in its step."""
    device = torch.device(s.device)
    batches = [([im.to(device) for im in ims], [t.to(device) for t in ts]) for ims, ts in batches]
    start = {id(m): {k: v.detach().clone() for k, v in m.state_dict().items()} for m in (tv, ours)}
    rows, profile = [], {}
    for dtype in s.dtypes:
        for variant in variants(device):  # training variants: no folding, no ONNX
            model = configure(tv if variant.torchvision else ours, variant)
            model.load_state_dict(start[id(model)])
            step = _train_step(model.to(device).train(), variant.torchvision, device, dtype)
            times, _, peak = measure(step, batches, runs=s.train_steps, warmup=s.warmup, device=device)
            rows.append(
                dict(timing_row(variant.name, dtype, len(batches[0][0]), times, peak), setting=setting)
            )
            if variant.torchvision and s.profile and not profile:
                profile = dict(profile_roi_align(step, batches[0], device), setting=setting, dtype=dtype)
                profile["step_ms"] = rows[-1]["median_ms"]
            model.to("cpu").eval()
            free_memory(device)
    configure(ours, OURS)
    for m in (tv, ours):
        m.load_state_dict(start[id(m)])
    return rows, profile


def _train_step(model: nn.Module, is_tv: bool, device: torch.device, dtype: str) -> Callable:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4)

    def step(batch: Batch) -> Tensor:
        images, targets = batch
        with autocast(device, dtype):
            if is_tv:
                losses = model(
                    images, [{"boxes": t.boxes, "labels": t.labels, "masks": t.masks} for t in targets]
                )
            else:
                losses = model.loss(images, targets)
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(params, 10.0)  # as the demo's trainer does
        optimizer.step()
        return total.detach()

    return step


# ---------------------------------------------------------------------------- driver


def run_benchmark(s: Settings, log: Callable[[str], None] = print) -> dict:
    import torchvision

    device = torch.device(s.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda given but CUDA is not available")
    result: dict[str, Any] = {
        "device": device_name(device),
        "device_type": device.type,
        "cpu": cpu_model(),
        "cpu_flags": sorted(cpu_isa_flags(), key=REPORTED_FLAGS.index),
        "load_average_start": list(os.getloadavg()),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "settings": dataclasses.asdict(s),
        "inference": [],
        "training": [],
        "profile": {},
        "notes": [],
    }
    if not s.calibration:
        coco = coco_dir(s)
        s = dataclasses.replace(
            s, calibration=f"coco:{coco / 'annotations/instances_train2017.json'}:{coco / 'train2017'}"
        )
        result["settings"]["calibration"] = s.calibration
    tv, ours = coco_models(s)
    if s.images and s.runs:
        names, images = val_images(s)
        log(f"inference: {len(names)} coco-mini val images, {tuple(images[0].shape[-2:])} as stored")
        result["images"] = names
        result["inference"] = run_inference(tv, ours, images, s, result["notes"])
        result["onnxruntime"] = onnxruntime_version()
    for setting in s.coco_train:
        log(f"training: coco-mini train, {setting}")
        tv.transform.min_size, tv.transform.max_size = TRAIN_INPUTS[setting]
        ours.preprocessor.min_size, ours.preprocessor.max_size = TRAIN_INPUTS[setting]
        rows, profile = run_training(
            setting, tv, ours, coco_train_batches(setting, 8, 2, s.seed, coco_dir(s)), s
        )
        result["training"] += rows
        result["profile"].setdefault(setting, profile)
    del tv, ours
    if s.train_steps and s.demo_batch:
        log(f"training: shapes_demo step at batch {s.demo_batch}")
        cfg = get_preset("shapes_demo")
        torch.manual_seed(s.seed)
        ours = build_model(cfg)
        tv = torchvision_counterpart(ours, cfg)
        rows, profile = run_training("shapes_demo", tv, ours, shapes_batches(s.demo_batch, 2), s)
        result["training"] += rows
        result["profile"]["shapes_demo"] = profile
    if s.accuracy:
        result["accuracy"] = run_accuracy(s, notes=result["notes"], log=log)
    result["load_average_end"] = list(os.getloadavg())
    result["process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return result


def _tuple(kind: type) -> Callable[[str], tuple]:
    return lambda text: tuple(kind(x) for x in text.split(",") if x.strip()) if text != "none" else ()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="maskrcnn benchmark", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--runs", type=int, help="timed runs per measurement (default: cpu 5, cuda 20)")
    p.add_argument("--warmup", type=int, help="untimed calls first (default: cpu 1, cuda 3)")
    p.add_argument("--images", type=int, help="coco-mini val images (default: cpu 5, cuda 8)")
    p.add_argument("--batch-sizes", type=_tuple(int), help="inference batch sizes, e.g. 1,8")
    p.add_argument("--dtypes", type=_tuple(str), help="fp32,bf16 (default: cpu fp32, cuda both)")
    p.add_argument("--coco-train", type=_tuple(str), help="lsj1024,multiscale800 or none (cuda default)")
    p.add_argument("--train-steps", type=int, help="timed training steps (default: cpu 10, cuda 20)")
    p.add_argument("--demo-batch", type=int, help="shapes_demo batch size (default 8; 0 skips it)")
    p.add_argument("--min-size", type=int, help="inference shorter side (default 800)")
    p.add_argument("--max-size", type=int, help="inference longer-side cap (default 1333)")
    p.add_argument("--detections", type=int, help="detections per image (default 100)")
    p.add_argument("--proposals", type=int, help="RPN proposals per image at inference (default 1000)")
    p.add_argument("--no-profile", dest="profile", action="store_false", default=None)
    p.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    p.add_argument("--coco", help="the coco-mini folder (default ../shared/data/coco-mini)")
    p.add_argument("--detectron2", help="detectron2's source folder (default ../shared/detectron2)")
    p.add_argument(
        "--calibration", help="dataset spec or image folder for the int8 row (default coco-mini train)"
    )
    p.add_argument("--calibration-images", type=int, help="int8 calibration images (default 16)")
    p.add_argument(
        "--accuracy",
        nargs="+",
        action="append",
        metavar="ARG",
        help="WEIGHTS DATA [CALIBRATION]: box / mask AP of that trained model on DATA (a dataset spec) "
        "in eager fp32, eager bf16, ONNX Runtime fp32 and int8 (calibrated on CALIBRATION, default "
        "DATA); repeatable. --images 0 skips the speed rows",
    )
    p.add_argument(
        "--out", default="bench_speed.json", help="JSON file to write (default ./bench_speed.json)"
    )
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    options = vars(args).copy()
    options["accuracy"] = tuple(tuple(a) for a in options["accuracy"]) if options["accuracy"] else None
    out = Path(options.pop("out"))
    options.pop("threads")
    settings = Settings.for_device(options.pop("device"), **options)
    unknown = set(settings.dtypes) - {"fp32", "bf16"} | set(settings.coco_train) - set(TRAIN_INPUTS)
    if unknown:
        raise UserError(f"unknown --dtypes / --coco-train values: {sorted(unknown)}")
    for spec in settings.accuracy:
        if not 2 <= len(spec) <= 3:
            raise UserError(f"--accuracy takes WEIGHTS DATA [CALIBRATION], got {' '.join(spec)}")
    coco_dir(settings)  # fail now, not after minutes of other measurements
    result = run_benchmark(settings, log=lambda text: print(text, file=sys.stderr, flush=True))
    print(format_report(result))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
