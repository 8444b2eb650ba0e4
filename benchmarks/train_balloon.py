"""From-scratch training on balloon for a fixed time budget: ours vs torchvision, same run.

Both models start from the same random weights (torchvision's `maskrcnn_resnet50_fpn(weights=None)`
built with a fixed seed, converted to ours), see the same batches (our loader, horizontal flip,
aspect-ratio grouping), and follow the same schedule: SGD lr 0.02 × batch/8, momentum 0.9,
weight decay 1e-4, linear warmup, ×0.1 for the last 20% of the time budget, bf16 autocast on GPU.
Each then predicts on balloon val and is scored with pycocotools (box and mask AP).

    python benchmarks/train_balloon.py --budget-s 420 --device cuda --out benchmarks/results
    python benchmarks/train_balloon.py --budget-s 60 --device cpu --min-size 320   # smoke run

Prints a table and writes benchmarks/results/train_balloon.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from maskrcnn.config import apply_overrides  # noqa: E402
from maskrcnn.convert.torchvision import config_for, convert_state_dict  # noqa: E402
from maskrcnn.data.loader import build_train_loader  # noqa: E402
from maskrcnn.data.specs import build_dataset, write_coco_json  # noqa: E402
from maskrcnn.data.transforms import HorizontalFlip  # noqa: E402
from maskrcnn.evaluation.coco_eval import evaluate_coco_results  # noqa: E402
from maskrcnn.model import build_model  # noqa: E402
from maskrcnn.predict import detections_to_coco  # noqa: E402
from maskrcnn.structures import Detections  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "balloon"


def make_models(num_classes: int, min_size: int, max_size: int, seed: int):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    torch.manual_seed(seed)
    tv = maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes + 1, min_size=min_size, max_size=max_size
    )
    cfg = apply_overrides(
        config_for(tv.state_dict(), "v1"),
        [f"model.input.min_size=[{min_size}]", f"model.input.max_size={max_size}"],
    )
    ours = build_model(cfg, class_names=["balloon"])
    ours.load_state_dict(convert_state_dict(tv.state_dict()))
    return ours, tv


def train_for(name, model, loss_fn, loader, *, budget_s, lr, warmup, device, amp):
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)
    iteration, images_seen, epoch, curve = 0, 0, 0, []
    start = time.perf_counter()
    while True:
        loader.set_epoch(epoch)
        for images, targets, _ in loader:
            elapsed = time.perf_counter() - start
            if elapsed >= budget_s:
                return {"iterations": iteration, "images_per_s": images_seen / elapsed, "loss_curve": curve}
            factor = min(1.0, (iteration + 1) / warmup) * (0.1 if elapsed > 0.8 * budget_s else 1.0)
            for g in opt.param_groups:
                g["lr"] = lr * factor
            images = [im.to(device, non_blocking=True) for im in images]
            targets = [t.to(device) for t in targets]
            with torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext():
                losses = loss_fn(model, images, targets)
            total = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            if torch.isfinite(total):
                total.backward()
                opt.step()
            iteration += 1
            images_seen += len(images)
            if iteration % 20 == 0:
                curve.append((iteration, float(total)))
                print(f"  {name} it {iteration} loss {float(total):.3f} {elapsed:.0f}s", flush=True)
        epoch += 1


def ours_loss(model, images, targets):
    return model(images, targets)


def tv_loss(model, images, targets):
    return model(images, [{"boxes": t.boxes, "labels": t.labels, "masks": t.masks} for t in targets])


@torch.no_grad()
def evaluate(model, predict, dataset, gt_path, device):
    model.eval()
    records = []
    for i in range(len(dataset)):
        sample = dataset[i]
        det = predict(model, sample.image.to(device))
        records += detections_to_coco(det, image_id=sample.image_id, file_name=sample.file_name)
    metrics = evaluate_coco_results(str(gt_path), records)
    return {"box_AP": metrics["bbox"]["AP"], "mask_AP": metrics["segm"]["AP"], "detections": len(records)}


def ours_predict(model, image):
    return model.predict([image])[0]


def tv_predict(model, image):
    out = model([image])[0]
    return Detections(out["boxes"], out["scores"], out["labels"], out["masks"][:, 0] > 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget-s", type=float, default=420.0, help="training time per model")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--min-size", type=int, default=800)
    parser.add_argument("--max-size", type=int, default=1333)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()

    device = torch.device(args.device)
    amp = device.type == "cuda"
    torch.backends.cudnn.benchmark = False  # variable image shapes: autotuning every shape is slower
    train_set = build_dataset(f"via:{DATA / 'train'}")
    val_set = build_dataset(f"via:{DATA / 'val'}")
    gt_path = Path(tempfile.mkdtemp()) / "balloon_val.json"
    write_coco_json(val_set, gt_path)
    lr = 0.02 * args.batch_size / 16
    rows = {}
    for name, loss_fn, predict in (
        ("maskrcnn", ours_loss, ours_predict),
        ("torchvision", tv_loss, tv_predict),
    ):
        ours, tv = make_models(1, args.min_size, args.max_size, args.seed)
        model = ours if name == "maskrcnn" else tv
        loader = build_train_loader(
            train_set,
            batch_size=args.batch_size,
            transforms=HorizontalFlip(0.5),
            num_workers=args.workers,
            seed=args.seed,
        )
        torch.manual_seed(args.seed)
        print(f"training {name} for {args.budget_s:.0f} s on {device}", flush=True)
        stats = train_for(
            name,
            model,
            loss_fn,
            loader,
            budget_s=args.budget_s,
            lr=lr,
            warmup=args.warmup,
            device=device,
            amp=amp,
        )
        stats.update(evaluate(model, predict, val_set, gt_path, device))
        rows[name] = stats
        del model, ours, tv
        if device.type == "cuda":
            torch.cuda.empty_cache()

    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    )
    print(f"\nballoon, from scratch, {args.budget_s:.0f} s per model on {device_name}")
    print(f"{'model':<12} {'iters':>6} {'img/s':>7} {'box AP':>7} {'mask AP':>8}")
    for name, r in rows.items():
        print(
            f"{name:<12} {r['iterations']:>6} {r['images_per_s']:>7.1f} "
            f"{r['box_AP']:>7.3f} {r['mask_AP']:>8.3f}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"device": device_name, "torch": torch.__version__, "args": vars(args), "results": rows}
    (out / "train_balloon.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'train_balloon.json'}")


if __name__ == "__main__":
    main()
