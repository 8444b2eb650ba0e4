"""Fine-tuning against training from scratch, on the CPU: the same network, iterations, seed and
schedule, only the starting weights differ.

1. Pretrain the `shapes_demo` network (ResNet-18 at width 32, FPN 64, 128 px) on the synthetic
   shapes, as `maskrcnn demo` does (shortened: `--pretrain-iters`), and evaluate it on held-out shapes.
2. On each real dataset, balloon (`via:`, 61 train / 13 val photographs) and nuclei (`masks:`, 12
   train / 3 test microscopy images), at a small input size, train the same network twice:
   `from scratch` (random weights, as `maskrcnn train` without --init) and `--init` (the pretrained
   model through `train.init`, its class `circle` carried to the data's one class `object` with
   `train.init_class_map=object=circle`); then box and mask AP on the held-out images (pycocotools)
   and the wall time of the run (data check, training, evaluation).

    python benchmarks/finetune.py                          # the table in benchmarks/README.md
    python benchmarks/finetune.py --pretrain-iters 20 --iters 10 --datasets balloon   # smoke run

Prints the machine (CPU model, ISA flags, threads, load), a table, and writes JSON (`--out`,
default benchmarks/results/finetune.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskrcnn.benchmark.timing import device_name  # noqa: E402
from maskrcnn.config import apply_overrides, get_preset  # noqa: E402
from maskrcnn.data.shapes import ShapesDataset  # noqa: E402
from maskrcnn.engine.train import train  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
# name -> (train spec, val spec, config overrides of the dataset: input size, batch, detections)
DATASETS = {
    "balloon": (
        f"via:{DATA / 'balloon/train'}",
        f"via:{DATA / 'balloon/val'}",
        ["model.input.min_size=[256]", "model.input.max_size=384", "solver.ims_per_batch=4"],
    ),
    "nuclei": (
        f"masks:{DATA / 'nuclei/train'}",
        f"masks:{DATA / 'nuclei/test'}",
        [
            "model.input.min_size=[384]",
            "model.input.max_size=512",
            "solver.ims_per_batch=2",
            "model.roi_heads.detections_per_image=150",  # up to 136 nuclei per test image
            "model.rpn.post_nms_topk_test=300",
        ],
    ),
}
ISA = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "neon", "asimd")


def machine() -> dict:
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    return {
        "cpu": device_name(torch.device("cpu")),
        "isa": [f for f in ISA if f in flags],
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "load_average": list(os.getloadavg()),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def schedule(iters: int) -> list[str]:
    """shapes_demo's schedule scaled to `iters`: AdamW lr 1e-3, warmup, x0.1 at 80% and 94%."""
    return [
        f"solver.max_iter={iters}",
        f"solver.warmup_iters={max(1, min(30, iters // 10))}",
        f"solver.steps=[{int(iters * 0.8)},{int(iters * 0.94)}]",
        "train.checkpoint_period=0",
        "train.log_period=10",
    ]


def run(cfg, train_data, val_data, out: Path) -> dict:
    start = time.perf_counter()
    result = train(cfg, train_data=train_data, val_data=val_data, out_dir=out, resume="never", progress=False)
    seconds = time.perf_counter() - start
    metrics = result["metrics"]
    return {
        "box_AP": metrics["bbox"]["AP"],
        "mask_AP": metrics["segm"]["AP"],
        "box_AP50": metrics["bbox"]["AP50"],
        "mask_AP50": metrics["segm"]["AP50"],
        "iterations": result["iterations"],
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pretrain-iters", type=int, default=300)
    parser.add_argument("--pretrain-images", type=int, default=800)
    parser.add_argument("--iters", type=int, default=200, help="fine-tuning / from-scratch iterations")
    parser.add_argument("--datasets", default="balloon,nuclei")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: on a shared 2-core machine 2 are slower)"
    )
    parser.add_argument("--work", default=None, help="run folders (default: a temporary folder)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "finetune.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    info = machine()
    print(
        f"{info['cpu']}; ISA {' '.join(info['isa'])} (torch: {info['torch_cpu_capability']}); "
        f"{info['threads']} threads of {info['cores']} cores; load {info['load_average'][0]:.1f}; "
        f"torch {info['torch']}",
        flush=True,
    )
    work = Path(args.work or tempfile.mkdtemp(prefix="finetune-"))
    base = [f"train.seed={args.seed}", "train.device=cpu", "data.num_workers=0"]

    cfg = apply_overrides(get_preset("shapes_demo"), [*base, *schedule(args.pretrain_iters)])
    print(
        f"pretraining shapes_demo on {args.pretrain_images} shapes, {args.pretrain_iters} iterations",
        flush=True,
    )
    pretrain = run(
        cfg,
        ShapesDataset(args.pretrain_images, seed=0),
        ShapesDataset(100, seed=1_000_003),
        work / "pretrain",
    )
    weights = work / "pretrain" / "model_final.pt"
    print(
        f"  shapes: box AP {pretrain['box_AP']:.3f}, mask AP {pretrain['mask_AP']:.3f}, "
        f"{pretrain['seconds']:.0f} s"
    )

    rows = []
    for name in args.datasets.split(","):
        train_spec, val_spec, overrides = DATASETS[name]
        for start in ("from scratch", "--init"):
            init = (
                [f"train.init={weights}", "train.init_class_map=object=circle"] if start == "--init" else []
            )
            cfg = apply_overrides(
                get_preset("shapes_demo"), [*base, *overrides, *schedule(args.iters), *init]
            )
            print(f"{name}, {start}: {args.iters} iterations", flush=True)
            row = {
                "dataset": name,
                "start": start,
                **run(cfg, train_spec, val_spec, work / f"{name}-{start[-4:]}"),
            }
            print(
                f"  box AP {row['box_AP']:.3f}, mask AP {row['mask_AP']:.3f}, {row['seconds']:.0f} s",
                flush=True,
            )
            rows.append(row)

    print(f"\nshapes_demo network, {args.iters} iterations per run, seed {args.seed}")
    print(
        f"{'dataset':<8} {'start':<13} {'box AP':>7} {'mask AP':>8} {'box AP50':>9} {'mask AP50':>10} "
        f"{'time s':>7}"
    )
    for r in rows:
        print(
            f"{r['dataset']:<8} {r['start']:<13} {r['box_AP']:>7.3f} {r['mask_AP']:>8.3f} "
            f"{r['box_AP50']:>9.3f} {r['mask_AP50']:>10.3f} {r['seconds']:>7.0f}"
        )
    info["load_average_end"] = list(os.getloadavg())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": info, "args": vars(args), "pretrain": pretrain, "results": rows}
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
