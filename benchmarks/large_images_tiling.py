"""Tiled against untiled inference on large images with small objects (issue 19, accuracy half of
`benchmarks/large_images.py`).

Canvases of SIZE x SIZE px (default 3000) each hold SHAPES (default 80) squares, circles and
triangles of 20 to 60 px, apart from each other, drawn as the demo's shapes are (a colour gradient,
flat shapes with a little shading, noise). The model is the demo's (`maskrcnn demo`: shapes_demo,
trained on 128 px images whose shapes are 19 to 58 px): untiled, a canvas is resized to 128 px and
its shapes shrink to about 1 to 3 px; tiled at 128 px, each tile runs at native resolution, the
scale the model was trained at. Rows: untiled; tiled with `merge`, with `nms`, and with `merge`
plus the whole image (`--tile-full-image`). Box AP, mask AP and AP_small (COCO: area < 32^2 px,
mask area for mask AP), all by pycocotools, and the time per canvas (prediction only, RLE encoding
excluded).

    python benchmarks/large_images_tiling.py --weights maskrcnn-demo/model_final.pt
    python benchmarks/large_images_tiling.py --train-demo /tmp/demo   # trains the demo model first
    python benchmarks/large_images_tiling.py --weights W --canvases 1 --size 1000 --shapes 10  # smoke

`tiling_rows(...)` is what `benchmarks/large_images.py` calls; this script prints the table and
writes JSON (`--out`, default benchmarks/results/large_images_tiling.json).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import maskrcnn  # noqa: E402
from maskrcnn.benchmark.timing import device_name  # noqa: E402
from maskrcnn.data.shapes import CLASS_NAMES, _background, _distinct_color, _shape_mask  # noqa: E402
from maskrcnn.evaluation.coco_eval import evaluate_coco_results  # noqa: E402
from maskrcnn.files import atomic_write_json  # noqa: E402
from maskrcnn.predict_records import detections_to_coco  # noqa: E402
from maskrcnn.tiling import TileSettings, predict_tiled  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "large_images_tiling.json"
MODES = {  # row name -> tile settings (None: untiled)
    "untiled": None,
    "tiled, merge": {"merge": "merge"},
    "tiled, nms": {"merge": "nms"},
    "tiled, merge + full image": {"merge": "merge", "full_image": True},
}


def make_canvas(seed: int, index: int, *, size: int, shapes: int) -> tuple[torch.Tensor, list[dict]]:
    """One canvas: (3, size, size) float32 image and its instances as {"label", "rect" (x0, y0, x1,
    y1), "mask" (bool, the rect's size)}; shapes 20..60 px, at least 8 px apart."""
    rng = np.random.default_rng([seed, index])
    image, bg = _background(rng, size, size)
    placed: list[tuple[int, int, int, int]] = []
    instances: list[dict] = []
    for _ in range(50 * shapes):
        if len(instances) == shapes:
            break
        kind, side = int(rng.integers(0, 3)), float(rng.uniform(20, 60))
        half = math.ceil(side * 0.75) + 2  # covers a square's and a triangle's corners at any angle
        cx, cy = rng.uniform(half, size - half, size=2)
        rect = (int(cx) - half, int(cy) - half, int(cx) + half, int(cy) + half)
        if any(
            rect[0] < q[2] + 8 and q[0] < rect[2] + 8 and rect[1] < q[3] + 8 and q[1] < rect[3] + 8
            for q in placed
        ):
            continue
        local = _shape_mask(
            kind, cx - rect[0], cy - rect[1], side, rng.uniform(0, 2 * math.pi), 2 * half, 2 * half
        )
        if local.sum() < 40:
            continue
        color = _distinct_color(rng, bg)
        shade = rng.uniform(-0.08, 0.08, size=(2 * half, 2 * half, 1))
        patch = image[rect[1] : rect[3], rect[0] : rect[2]]
        image[rect[1] : rect[3], rect[0] : rect[2]] = np.where(local[..., None], color + shade * 0.5, patch)
        placed.append(rect)
        instances.append({"label": kind + 1, "rect": rect, "mask": local})
    image = np.clip(image + rng.normal(0.0, 0.04, size=image.shape), 0.0, 1.0).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), instances


def _full_rle(mask: np.ndarray, rect: tuple[int, int, int, int], size: int) -> dict:
    plane = np.zeros((size, size), dtype=np.uint8, order="F")
    plane[rect[1] : rect[3], rect[0] : rect[2]] = mask
    rle = mask_util.encode(plane)
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def ground_truth(canvases: list[list[dict]], *, size: int) -> dict:
    """COCO ground truth of the canvases (image ids 0.., one annotation per shape)."""
    images, annotations = [], []
    for image_id, instances in enumerate(canvases):
        images.append({"id": image_id, "file_name": f"canvas_{image_id}.png", "height": size, "width": size})
        for inst in instances:
            ys, xs = np.nonzero(inst["mask"])
            x0, y0 = inst["rect"][0] + int(xs.min()), inst["rect"][1] + int(ys.min())
            w, h = int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": inst["label"],
                    "bbox": [x0, y0, w, h],
                    "area": int(inst["mask"].sum()),
                    "segmentation": _full_rle(inst["mask"], inst["rect"], size),
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(CLASS_NAMES)]
    return {"images": images, "annotations": annotations, "categories": categories}


class _SharedTiles:
    """The model on batches of tiles, each tile's Detections kept: the tiled rows run every tile
    once (the first tiled row), later rows reuse them. `model_s[image_id]`: seconds the model spent
    on that canvas's tiles (added to the time of the rows that reuse them)."""

    def __init__(self, predictor, *, size: int) -> None:
        self.full_shape = torch.Size([size, size])  # a run of the whole canvas (full_image), not a tile
        self.model = predictor.inference_model()
        self.done: dict[tuple, object] = {}
        self.model_s: dict[int, float] = {}

    def runner(self, image_id: int):
        def run(batch: list[torch.Tensor]) -> list:
            keys = [(image_id, b.data_ptr(), tuple(b.shape)) for b in batch]
            todo = [i for i, k in enumerate(keys) if k not in self.done]
            if todo:
                start = time.perf_counter()
                for i, det in zip(todo, self.model.predict([batch[i] for i in todo])):
                    self.done[keys[i]] = det
                elapsed = time.perf_counter() - start
                if batch[0].shape[-2:] != self.full_shape:
                    self.model_s[image_id] = self.model_s.get(image_id, 0.0) + elapsed
            return [self.done[k] for k in keys]

        return run


def tiling_rows(
    weights: str | Path,
    *,
    canvases: int = 4,
    size: int = 3000,
    shapes: int = 80,
    tile: int = 128,
    overlap: float = 0.2,
    seed: int = 19,
    modes: dict = MODES,
    progress: bool = True,
) -> list[dict]:
    """One row per mode: box AP, mask AP, AP_small (box and mask), detections and seconds per canvas
    (for a tiled row that reuses the tiles of an earlier one: the model's seconds on those tiles
    plus its own)."""
    predictor = maskrcnn.load(str(weights))
    made = [make_canvas(seed, i, size=size, shapes=shapes) for i in range(canvases)]
    tiles = _SharedTiles(predictor, size=size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tiling-bench-") as tmp:
        gt_path = Path(tmp) / "ground_truth.json"
        gt_path.write_text(json.dumps(ground_truth([inst for _, inst in made], size=size)))
        first_tiled = True
        for name, options in modes.items():
            settings = None if options is None else TileSettings(tile, overlap=overlap, **options)
            records, seconds = [], 0.0
            for image_id, (image, _) in enumerate(made):
                start = time.perf_counter()
                if settings is None:
                    det = predictor.predict([image])[0]
                else:
                    det = predict_tiled(
                        tiles.runner(image_id), image, settings, batch_size=predictor.batch_size
                    )
                seconds += time.perf_counter() - start
                if settings is not None and not first_tiled:
                    seconds += tiles.model_s.get(image_id, 0.0)
                records += detections_to_coco(det, image_id=image_id, file_name=f"canvas_{image_id}.png")
            first_tiled = first_tiled and settings is None
            metrics = (
                evaluate_coco_results(str(gt_path), records, iou_types=("bbox", "segm")) if records else None
            )
            row = {
                "mode": name,
                "detections_per_canvas": len(records) / canvases,
                "s_per_canvas": seconds / canvases,
            }
            for key, iou in (("box", "bbox"), ("mask", "segm")):
                row[f"{key}_AP"] = metrics[iou]["AP"] if metrics else 0.0
                row[f"{key}_AP_small"] = metrics[iou]["APs"] if metrics else 0.0
                row[f"{key}_AP_medium"] = metrics[iou]["APm"] if metrics else 0.0
            rows.append(row)
            if progress:
                print(json.dumps(row), flush=True)
    return rows


def format_rows(rows: list[dict]) -> str:
    head = "| mode | box AP | box AP_small | mask AP | mask AP_small | detections / canvas | s / canvas |"
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['box_AP']:.3f} | {r['box_AP_small']:.3f} | {r['mask_AP']:.3f} | "
            f"{r['mask_AP_small']:.3f} | {r['detections_per_canvas']:.0f} | {r['s_per_canvas']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=None, help="the demo model (maskrcnn demo's model_final.pt)")
    parser.add_argument(
        "--train-demo", default=None, metavar="DIR", help="train the demo model into DIR first"
    )
    parser.add_argument("--canvases", type=int, default=4)
    parser.add_argument("--size", type=int, default=3000)
    parser.add_argument("--shapes", type=int, default=80)
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    weights = args.weights
    if args.train_demo:
        from maskrcnn.engine.commands import run_demo

        run_demo(args.train_demo, progress=False)
        weights = str(Path(args.train_demo) / "model_final.pt")
    if weights is None:
        parser.error("give --weights or --train-demo")
    rows = tiling_rows(
        weights,
        canvases=args.canvases,
        size=args.size,
        shapes=args.shapes,
        tile=args.tile,
        overlap=args.overlap,
    )
    machine = (
        f"{device_name(torch.device('cpu'))}, {torch.get_num_threads()} threads, {platform.python_version()}"
    )
    print(
        f"{args.canvases} canvases of {args.size} px, {args.shapes} shapes of 20-60 px each; "
        f"tiles of {args.tile} px, overlap {args.overlap}; {machine}"
    )
    print(format_rows(rows))
    settings = {k: getattr(args, k) for k in ("canvases", "size", "shapes", "tile", "overlap")}
    atomic_write_json(
        args.out, {"machine": machine, "settings": settings, "weights": str(weights), "rows": rows}, indent=1
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
