"""Peak memory and time of `maskrcnn predict` on large photographs: masks kept as crops (ours)
against torchvision's `paste_masks_in_image` path (every mask pasted as a full float plane).

The photographs are a coco-mini val photo resized (Pillow, bicubic) to 2000×1500, 4000×3000,
8000×6000 and 12000×9000 and saved as JPEG (quality 90). The model is the `default` preset (R50-FPN,
800 px inputs, 90 classes) with seeded random weights, saved as a checkpoint: with
`--score-thresh 0` and `detections_per_image=100` it gives exactly 100 detections per image, boxes of
all sizes as a COCO model's (anchors 32..512 px at 800 px, ×11.25 at 12000×9000).

Each measurement is one fresh process running `maskrcnn predict --score-thresh 0` (overlays written,
as by default), timed from start to exit, its peak RSS read from `os.wait4` (the kernel's
ru_maxrss). The `torchvision` rows run the same command with `MaskBranch.to_original` replaced by
torchvision's `paste_masks_in_image(...) > threshold` (all else, the records, overlays, decoding,
the same). Each process runs under an address-space limit (`--memory-limit-gb`, default 10) so that
a path that needs more memory than that fails (reported as such) instead of starving the machine;
the full planes' float memory, 2 × D × H × W × 4 bytes (torchvision's list and its stack), is given
beside it.

    python benchmarks/large_images.py                     # the table in benchmarks/README.md
    python benchmarks/large_images.py --sizes 4000x3000 --paths ours   # one row

The other half of the large-image evidence, AP tiled against untiled on large canvases of small
shapes, is `benchmarks/large_images_tiling.py` (its own table in benchmarks/README.md).

Rows that complete record the sha256 of their predictions.json: ours and torchvision's give the same
file where both complete.

Prints the machine (CPU model, ISA flags, threads, load) and a table; writes JSON (`--out`, default
benchmarks/results/large_images.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIZES = ("2000x1500", "4000x3000", "8000x6000", "12000x9000")
PATHS = ("ours", "torchvision")
DETECTIONS = 100

# the child: `maskrcnn predict`, with torchvision's paste for the torchvision rows
CHILD = """
import sys
from maskrcnn import cli
if sys.argv[1] == "torchvision":
    from torchvision.models.detection.roi_heads import paste_masks_in_image
    from maskrcnn.model.mask_branch import MaskBranch

    def to_original(self, det, *, input_size, original_size):
        planes = paste_masks_in_image(det.mask_probs[:, None], det.boxes, original_size)[:, 0]
        return det.replace(masks=planes > self.threshold)

    MaskBranch.to_original = to_original
sys.exit(cli.main(["predict", "--no-progress", *sys.argv[2:]]))
"""


def make_weights(path: Path) -> None:
    import torch

    from maskrcnn.config import apply_overrides, get_preset
    from maskrcnn.engine.checkpoint import save_model
    from maskrcnn.model import build_model

    torch.manual_seed(0)
    cfg = apply_overrides(get_preset("default"), [f"model.roi_heads.detections_per_image={DETECTIONS}"])
    save_model(build_model(cfg), path)


def make_photo(source: Path, size: str, folder: Path) -> Path:
    from PIL import Image

    width, height = (int(v) for v in size.split("x"))
    path = folder / f"photo_{size}.jpg"
    with Image.open(source) as im:
        im.convert("RGB").resize((width, height), Image.Resampling.BICUBIC).save(path, quality=90)
    return path


def measure(path_kind: str, weights: Path, photo: Path, out: Path, limit_gb: float) -> dict:
    """One fresh `maskrcnn predict` process: wall time, peak RSS, exit status, detections."""
    limit = int(limit_gb * (1 << 30))

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    args = [sys.executable, "-c", CHILD, path_kind, "--weights", str(weights), "--out", str(out)]
    args += ["--score-thresh", "0", str(photo)]
    start = time.perf_counter()
    proc = subprocess.Popen(args, preexec_fn=cap, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    code = os.waitstatus_to_exitcode(status)
    row = {
        "path": path_kind,
        "exit": code,
        "time_s": round(wall, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
    }
    records = out / "predictions.json"
    if code == 0 and records.exists():
        row["detections"] = len(json.loads(records.read_text()))
        row["predictions_sha256"] = hashlib.sha256(records.read_bytes()).hexdigest()
    else:
        last = [line for line in stderr.strip().splitlines() if line.strip()][-1:] or [""]
        row["error"] = last[0][:300]
    return row


def machine() -> dict:
    from maskrcnn.hardware import cpu_isa_flags, cpu_model

    return {
        "cpu": cpu_model(),
        "isa_flags": sorted(cpu_isa_flags()),
        "cores": os.cpu_count(),
        "load_avg_start": [round(v, 2) for v in os.getloadavg()],
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default=",".join(SIZES), help="comma-separated WxH")
    p.add_argument("--paths", default=",".join(PATHS), help="ours, torchvision or both")
    p.add_argument("--coco", type=Path, default=ROOT.parent / "shared" / "data" / "coco-mini")
    p.add_argument("--photo", default="val2017/000000397133.jpg", help="the photo to resize, below --coco")
    p.add_argument("--memory-limit-gb", type=float, default=10.0, help="address-space limit of each process")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "large_images.json")
    args = p.parse_args(argv)
    sizes, paths = args.sizes.split(","), args.paths.split(",")
    source = args.coco / args.photo
    if not source.is_file():
        source = sorted((args.coco / "val2017").glob("*.jpg"))[0]
    report = {"machine": machine(), "photo": str(source.name), "detections": DETECTIONS, "rows": []}
    print(f"machine: {report['machine']}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        weights = folder / "r50_random.pt"
        make_weights(weights)
        for size in sizes:
            photo = make_photo(source, size, folder)
            width, height = (int(v) for v in size.split("x"))
            for kind in paths:
                row = measure(kind, weights, photo, folder / f"out_{size}_{kind}", args.memory_limit_gb)
                row.update(size=size, jpeg_mb=round(photo.stat().st_size / 1e6, 1))
                row["planes_float_gb"] = round(2 * DETECTIONS * height * width * 4 / (1 << 30), 1)
                report["rows"].append(row)
                print(json.dumps(row), flush=True)
            photo.unlink()
    report["machine"]["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print("| size | path | detections | peak RSS | time | exit |")
    print("|---|---|---|---|---|---|")
    for r in report["rows"]:
        cells = [r["size"], r["path"], r.get("detections", "-"), f"{r['peak_rss_mb'] / 1024:.2f} GB"]
        print("| " + " | ".join(map(str, [*cells, f"{r['time_s']} s", r["exit"]])) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
