"""Inference on files: image loading, batched prediction, COCO result records.

A COCO result record: {"image_id", "file_name", "category_id", "bbox": [x, y, w, h], "score",
"segmentation": {"size": [H, W], "counts": str}} (RLE with string counts), what
pycocotools' `COCO.loadRes` and COCOeval read.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image, ImageOps

from .structures import Detections


def load_image(path: str | Path) -> torch.Tensor:
    """An image file -> (3, H, W) float32 in [0, 1], EXIF orientation applied, RGB."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        rgb = np.array(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)


def image_id_for(path: str | Path, index: int) -> int:
    """COCO-style names (000000397133.jpg) give their number; other files their position (1-based)."""
    stem = Path(path).stem
    return int(stem) if stem.isdigit() else index + 1


def encode_masks(masks: torch.Tensor) -> list[dict]:
    """(D, H, W) bool -> RLEs with string counts."""
    if len(masks) == 0:
        return []
    array = np.asfortranarray(masks.permute(1, 2, 0).cpu().numpy().astype(np.uint8))
    rles = mask_util.encode(array)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def detections_to_coco(
    det: Detections, *, image_id: int, file_name: str, category_ids: list[int] | None = None
) -> list[dict]:
    boxes = det.boxes.detach().cpu()
    xywh = torch.cat((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), dim=1).tolist()
    labels = det.labels.cpu().tolist()
    scores = det.scores.detach().cpu().tolist()
    records = []
    for box, label, score, rle in zip(xywh, labels, scores, encode_masks(det.masks)):
        category = category_ids[label - 1] if category_ids else label
        records.append(
            {
                "image_id": image_id,
                "file_name": file_name,
                "category_id": int(category),
                "bbox": [round(v, 3) for v in box],
                "score": round(float(score), 5),
                "segmentation": rle,
            }
        )
    return records


def default_file_mode() -> int:
    """0o666 minus the process umask: what open() would give (mkstemp gives 0o600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_json_atomic(obj, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def predict_files(
    model, paths: list[str | Path], *, batch_size: int = 1, device: str = "cpu", progress: bool = True
) -> list[dict]:
    """Run the model over image files; return all COCO result records."""
    from tqdm import tqdm

    model = model.to(device).eval()
    category_ids = getattr(model, "category_ids", None)
    records: list[dict] = []
    with tqdm(total=len(paths), desc="predict", unit="img", disable=not progress) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            images = [load_image(p).to(device) for p in chunk]
            for offset, (p, det) in enumerate(zip(chunk, model.predict(images))):
                records += detections_to_coco(
                    det,
                    image_id=image_id_for(p, start + offset),
                    file_name=Path(p).name,
                    category_ids=category_ids,
                )
            bar.update(len(chunk))
    return records
