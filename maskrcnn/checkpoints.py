"""Reading our checkpoints, from a path or a URL with a checksum: what inference needs (`maskrcnn.load`,
`Predictor`, every command) and training reuses (`engine`: resume, init).

A model checkpoint is one file written by `torch.save` (`maskrcnn.engine.checkpoint.save_model`)
holding the entries of `maskrcnn.convert.checkpoint_format.checkpoint_dict` (format: "maskrcnn",
version: 2, schema: the config schema version, config, class_names, category_ids, model: the state
dict), and, for training checkpoints, the optimizer / scheduler / iteration / RNG / data-order
state, all of it tensors, numbers, strings and plain containers, so that it loads with
weights_only=True.

Every read goes through `maskrcnn.safe_load.load_weights_file`, which runs no code from the file;
foreign files (torchvision, detectron2) go to `maskrcnn.convert.foreign.to_checkpoint`. A file of
the wrong shape (no config, tensors that do not fit its config) is a UserError naming it.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
from pathlib import Path

from .config import SCHEMA_VERSION, Config, from_dict, upgrade_config
from .convert.checkpoint_format import FORMAT, VERSION
from .convert.fit import load_fitting
from .errors import UserError
from .safe_load import load_weights_file

# version 1 state-dict prefixes -> version 2 (read by `model_from_checkpoint`)
_V1_PREFIXES = {
    "box_head.": "roi_heads.box.head.",
    "box_predictor.": "roi_heads.box.predictor.",
    "mask_head.": "roi_heads.mask.head.",
}


def read_checkpoint(path: str | Path, map_location: str = "cpu", *, torchvision: bool = False) -> dict:
    """Our checkpoint dict from `path`, read without running code (`maskrcnn.safe_load`), a foreign
    file converted where it can be (`maskrcnn.convert.foreign`; torchvision state dicts only with
    `torchvision=True`), its config in the current schema (`maskrcnn.config.upgrade_config`).
    Anything else -> UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = load_weights_file(path, map_location=map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        from .convert.foreign import to_checkpoint

        ckpt = to_checkpoint(ckpt, source=str(path), torchvision=torchvision)
    return _checked(ckpt, str(path))


def _checked(ckpt: dict, source: str) -> dict:
    """`ckpt` with its config upgraded to the current schema, after checking its entries' types."""
    version = ckpt.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int):
        raise UserError(f"{source}: checkpoint version must be an integer, got {version!r}")
    if version > VERSION:
        raise UserError(f"{source}: checkpoint version {version} is newer than this package ({VERSION})")
    for key in ("config", "model"):
        if key not in ckpt:
            raise UserError(f"{source}: a maskrcnn checkpoint without its {key!r} entry")
        if not isinstance(ckpt[key], dict):
            raise UserError(f"{source}: its {key!r} entry is a {type(ckpt[key]).__name__}, not a dict")
    for key in ("class_names", "category_ids"):
        if ckpt.get(key) is not None and not isinstance(ckpt[key], (list, tuple)):
            raise UserError(f"{source}: its {key!r} entry is a {type(ckpt[key]).__name__}, not a list")
    config = upgrade_config(ckpt["config"], schema=ckpt.get("schema"), source=source)
    return {**ckpt, "config": config, "schema": SCHEMA_VERSION}


def model_from_checkpoint(ckpt: dict, *, source: str = "checkpoint"):
    """The MaskRCNN of a checkpoint dict (as `read_checkpoint` returns it) in eval mode; a config
    this package cannot build or weights that do not fit it -> UserError naming `source`."""
    from .model import build_model

    try:
        cfg = from_dict(ckpt["config"], Config)
        model = build_model(cfg, class_names=ckpt.get("class_names"), category_ids=ckpt.get("category_ids"))
    except UserError as e:
        raise UserError(f"{source}: its config does not build a model here: {e}") from None
    state = _upgrade_state(ckpt["model"], ckpt.get("version", 1))
    load_fitting(model, state, source=source, what="the model its config describes")
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
    ckpt = read_checkpoint(path, map_location)
    return model_from_checkpoint(ckpt, source=str(path)).to(map_location)


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
