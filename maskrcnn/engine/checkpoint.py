"""Our checkpoint format and its loading, from a path or a URL with a checksum.

A model checkpoint is one file written by `torch.save` holding:
    format: "maskrcnn", version: 2, config: the Config as a dict, class_names: K names,
    category_ids: K dataset category ids (label i+1 <-> category_ids[i]), model: the state dict,
and, for training checkpoints, the optimizer / scheduler / iteration / RNG / data-order state.
Writes are atomic: a temporary file in the same folder, flushed and fsynced, then renamed.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

import torch

from ..config import Config, from_dict, to_dict
from ..errors import UserError
from ..files import atomic_write

FORMAT = "maskrcnn"
VERSION = 2  # 2: the RoI-head branches live under roi_heads.{box,mask}.*

# version 1 state-dict prefixes -> version 2 (read by `model_from_checkpoint`)
_V1_PREFIXES = {
    "box_head.": "roi_heads.box.head.",
    "box_predictor.": "roi_heads.box.predictor.",
    "mask_head.": "roi_heads.mask.head.",
}


def atomic_save(obj: Any, path: str | Path) -> None:
    """`torch.save(obj)` into `path` atomically (see `maskrcnn.files.atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def model_state(model) -> dict:
    """The checkpoint dict of a model (without training state)."""
    cfg = model.config if model.config is not None else Config()
    names, category_ids = model.class_names, model.category_ids
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
        raise UserError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        hint = ""
        if isinstance(ckpt, dict) and "roi_heads.box_predictor.cls_score.weight" in ckpt:
            hint = " It is a torchvision state dict: run `maskrcnn convert --from torchvision-v1 IN OUT`."
        raise UserError(f"{path}: not a maskrcnn checkpoint (no format='{FORMAT}' entry).{hint}")
    if ckpt.get("version", 0) > VERSION:
        raise UserError(
            f"{path}: checkpoint version {ckpt['version']} is newer than this package ({VERSION})"
        )
    return ckpt


def model_from_checkpoint(ckpt: dict):
    from ..model import build_model

    cfg = from_dict(ckpt["config"], Config)
    model = build_model(cfg, class_names=ckpt.get("class_names"), category_ids=ckpt.get("category_ids"))
    model.load_state_dict(_upgrade_state(ckpt["model"], ckpt.get("version", 1)), strict=True)
    return model.eval()


def upgraded_state(ckpt: dict) -> dict:
    """A checkpoint's state dict in the current module layout (whatever its version)."""
    return _upgrade_state(ckpt["model"], ckpt.get("version", 1))


def _upgrade_state(state: dict, version: int) -> dict:
    """A checkpoint's state dict in the current module layout."""
    if version >= 2:
        return state
    out = {}
    for key, value in state.items():
        prefix = next((p for p in _V1_PREFIXES if key.startswith(p)), None)
        out[_V1_PREFIXES[prefix] + key[len(prefix) :] if prefix else key] = value
    return out


def load_model(path_or_url: str | Path, *, map_location: str = "cpu", sha256: str | None = None):
    path = resolve_weights(path_or_url, sha256=sha256)
    return model_from_checkpoint(read_checkpoint(path, map_location)).to(map_location)


# ---------------------------------------------------------------- URLs and checksums

_HEX = re.compile(r"^[0-9a-f]{8,64}$")


def cache_dir() -> Path:
    """Downloaded checkpoints: $MASKRCNN_HOME/checkpoints, else ~/.cache/maskrcnn/checkpoints."""
    root = os.environ.get("MASKRCNN_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "maskrcnn")
    return Path(root) / "checkpoints"


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _expected_hash(url_name: str, sha256: str | None, source: str) -> str | None:
    """The lower-case hex digest (or prefix) a file must start with: `sha256` if given, else the hash
    in a torch-hub-style file name (`name-<hash>.pth`), else None."""
    if sha256:
        expected = sha256.strip().lower()
        if not _HEX.match(expected):
            raise UserError(
                f"sha256 for {source} must be 8 to 64 hex digits (a full digest or a prefix), got {sha256!r}"
            )
        return expected
    match = re.search(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$", url_name)  # torch hub's name-<hash>.pth
    return match.group(1) if match else None


def resolve_weights(path_or_url: str | Path, *, sha256: str | None = None, progress: bool = True) -> Path:
    """A local path, or a URL (http, https, file) downloaded once into `cache_dir()` and verified
    against `sha256` (a full digest or a prefix of at least 8 hex digits, or the hash in the file name
    as torch hub names them). Downloads go through `torch.hub.download_url_to_file` (progress bar,
    temporary file beside the target, hash check before the move), so a failed or corrupted download
    leaves nothing in the cache."""
    text = str(path_or_url)
    parsed = urllib.parse.urlparse(text)
    if parsed.scheme not in ("http", "https", "file"):
        path = Path(text)
        if sha256:
            _verify(path, _expected_hash(path.name, sha256, text), text)
        return path
    name = os.path.basename(parsed.path) or "weights.pt"
    expected = _expected_hash(name, sha256, text)
    target = cache_dir() / name
    if target.is_file() and (expected is None or file_sha256(target).startswith(expected)):
        return target  # already downloaded (and verified): no second download
    target.parent.mkdir(parents=True, exist_ok=True)
    from torch.hub import download_url_to_file

    try:
        download_url_to_file(text, str(target), hash_prefix=expected, progress=progress)
    except RuntimeError as e:  # torch hub's hash check: 'invalid hash value (expected "..", got "..")'
        got = re.search(r'got "([0-9a-f]+)"', str(e))
        if not got:
            raise
        raise UserError(
            f"checksum mismatch for {text}: expected sha256 {expected}..., got {got.group(1)}; "
            f"nothing was written to {target.parent}"
        ) from None
    except OSError as e:  # URLError / HTTPError / a missing file:// path
        reason = getattr(e, "reason", None) or e
        raise UserError(f"could not download {text}: {reason}") from e
    return target


def _verify(path: Path, expected: str, source: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    actual = file_sha256(path)
    if not actual.startswith(expected):
        raise UserError(f"checksum mismatch for {source}: expected sha256 {expected}..., got {actual}")


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
        raise UserError(
            f"{path_or_url}: ResNet weights do not fit the backbone (missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, shape mismatches {mismatched[:5]}); check backbone.depth"
        )
    body.load_state_dict(state, strict=False)
