"""Our checkpoint format and its loading, from a path or a URL with a checksum.

A model checkpoint is one file written by `torch.save` holding:
    format: "maskrcnn", version: 1, config: the Config as a dict, class_names: K names,
    category_ids: K dataset category ids (label i+1 <-> category_ids[i]), model: the state dict,
and, for training checkpoints, the optimizer / scheduler / iteration / RNG / data-order state.
Writes are atomic: a temporary file in the same folder, flushed and fsynced, then renamed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import torch

from ..config import Config, from_dict, to_dict
from ..predict import default_file_mode

FORMAT = "maskrcnn"
VERSION = 1


def atomic_save(obj: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def model_state(model) -> dict:
    """The checkpoint dict of a model (without training state)."""
    cfg = model.config if model.config is not None else Config()
    names = model.class_names or [f"class_{i}" for i in range(1, cfg.model.num_classes + 1)]
    category_ids = getattr(model, "category_ids", None) or list(range(1, len(names) + 1))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": to_dict(cfg),
        "class_names": list(names),
        "category_ids": list(category_ids),
        "model": state,
    }


def save_model(model, path: str | Path, **extra: Any) -> None:
    atomic_save({**model_state(model), **extra}, path)


def read_checkpoint(path: str | Path, map_location: str = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # re-raised with the file name
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        hint = ""
        if isinstance(ckpt, dict) and "roi_heads.box_predictor.cls_score.weight" in ckpt:
            hint = " It is a torchvision state dict: run `maskrcnn convert --from torchvision-v1 IN OUT`."
        raise ValueError(f"{path}: not a maskrcnn checkpoint (no format='{FORMAT}' entry).{hint}")
    if ckpt.get("version", 0) > VERSION:
        raise ValueError(
            f"{path}: checkpoint version {ckpt['version']} is newer than this package ({VERSION})"
        )
    return ckpt


def model_from_checkpoint(ckpt: dict):
    from ..model import build_model

    cfg = from_dict(ckpt["config"], Config)
    model = build_model(cfg, class_names=ckpt.get("class_names"))
    model.category_ids = ckpt.get("category_ids")
    model.load_state_dict(ckpt["model"], strict=True)
    return model.eval()


def load_model(path_or_url: str | Path, *, map_location: str = "cpu", sha256: str | None = None):
    path = resolve_weights(path_or_url, sha256=sha256)
    return model_from_checkpoint(read_checkpoint(path, map_location)).to(map_location)


# ---------------------------------------------------------------- URLs and checksums


def cache_dir() -> Path:
    root = os.environ.get("MASKRCNN_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "maskrcnn")
    return Path(root) / "checkpoints"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _expected_hash(url_name: str, sha256: str | None) -> str | None:
    if sha256:
        return sha256.lower()
    match = re.search(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$", url_name)  # torch hub's name-<hash>.pth
    return match.group(1) if match else None


def resolve_weights(path_or_url: str | Path, *, sha256: str | None = None, progress: bool = True) -> Path:
    """A local path, or a URL (http, https, file) downloaded once into the cache and verified
    against `sha256` (a full digest or a prefix of at least 8 hex digits, or the hash in the
    file name as torch hub names them)."""
    text = str(path_or_url)
    scheme = urllib.parse.urlparse(text).scheme
    if scheme not in ("http", "https", "file"):
        path = Path(text)
        if sha256:
            _verify(path, sha256.lower(), text)
        return path
    name = os.path.basename(urllib.parse.urlparse(text).path) or "weights.pt"
    expected = _expected_hash(name, sha256)
    target = cache_dir() / name
    if target.is_file() and (expected is None or file_sha256(target).startswith(expected)):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=target.parent)
    try:
        with urllib.request.urlopen(text) as response, os.fdopen(fd, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            _copy_with_progress(response, out, total, name if progress else None)
        if expected is not None:
            _verify(Path(tmp), expected, text)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _verify(path: Path, expected: str, source: str) -> None:
    actual = file_sha256(path)
    if len(expected) < 8 or not actual.startswith(expected):
        raise ValueError(f"checksum mismatch for {source}: expected sha256 {expected}..., got {actual}")


def _copy_with_progress(src, dst, total: int, label: str | None) -> None:
    if label is None:
        shutil.copyfileobj(src, dst)
        return
    from tqdm import tqdm

    with tqdm(
        total=total or None, unit="B", unit_scale=True, desc=f"downloading {label}", leave=False
    ) as bar:
        for block in iter(lambda: src.read(1 << 20), b""):
            dst.write(block)
            bar.update(len(block))


def load_backbone_weights(model, path_or_url: str | Path, *, sha256: str | None = None) -> None:
    """Load an ImageNet ResNet state dict in torchvision format into the model's backbone."""
    from ..convert.torchvision import resnet_imagenet_to_backbone

    state = torch.load(resolve_weights(path_or_url, sha256=sha256), map_location="cpu", weights_only=True)
    state = resnet_imagenet_to_backbone(state)
    body = model.backbone.body
    # checked before loading: load_state_dict would copy the fitting tensors before it raises on a
    # shape mismatch (e.g. ResNet-50 weights into a ResNet-18), leaving a half-loaded backbone
    own = body.state_dict()
    counter = "num_batches_tracked"  # absent from FrozenBatchNorm2d and from some checkpoints
    missing = [k for k in own if k not in state and not k.endswith(counter)]
    unexpected = [k for k in state if k not in own and not k.endswith(counter)]
    mismatched = [
        f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{path_or_url}: ResNet weights do not fit the backbone (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatches {mismatched[:5]}); check backbone.depth"
        )
    body.load_state_dict(state, strict=False)
