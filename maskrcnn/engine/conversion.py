"""`maskrcnn convert --from detectron2`: a detectron2 checkpoint file -> our checkpoint file."""

from __future__ import annotations

from pathlib import Path

from ..convert.detectron2 import from_detectron2
from ..errors import UserError
from ..safe_load import load_weights_file
from .checkpoint import atomic_save, model_from_checkpoint


def read_class_names(path: str | Path) -> list[str]:
    """A class-names file: one name per line (blank lines ignored)."""
    try:
        return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as e:
        raise UserError(f"--classes {path}: cannot read ({e.strerror or e})") from e


def convert_detectron2(
    source: str | Path,
    target: str | Path,
    *,
    d2_config: str | Path | None = None,
    classes: str | Path | None = None,
) -> str:
    """Convert `source` (model_final.pth or a zoo .pkl, read safely) into our checkpoint `target`,
    written atomically and only once the converted model loads; returns the line that says what."""
    names = read_class_names(classes) if classes else None
    obj = load_weights_file(source)
    ckpt = from_detectron2(obj, d2_config=d2_config, class_names=names, source=str(source))
    model_from_checkpoint(ckpt)  # it must load before anything is written
    atomic_save(ckpt, target)
    m = ckpt["config"]["model"]
    b, h = m["backbone"], m["roi_heads"]
    arch = f"{'X' if b['groups'] > 1 else 'R'}{b['depth']}-FPN"
    heads = " + ".join(n for n, on in (("mask", h["mask_on"]), ("keypoint", h["keypoint_on"])) if on) or "box"
    return f"wrote {target}: detectron2 {arch} {heads}, {m['num_classes']} classes"
