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
import sys
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
    ckpt, path = read_cached_checkpoint(path_or_url, map_location=map_location, sha256=sha256)
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


def is_url(path_or_url: str | Path) -> bool:
    return urllib.parse.urlparse(str(path_or_url)).scheme in ("http", "https", "file")


def url_folder(url: str) -> Path:
    """The cache folder of one URL: `cache_dir()/<first 16 hex digits of the sha256 of the whole
    URL>`, so two URLs ending in the same file name are two entries."""
    return cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:16]


def cached_path(url: str) -> Path:
    """Where the download of `url` is kept: its file name in `url_folder(url)`."""
    return url_folder(url) / (os.path.basename(urllib.parse.urlparse(url).path) or "weights.pt")


def resolve_weights(
    path_or_url: str | Path, *, sha256: str | None = None, progress: bool = True, refetch: bool = False
) -> Path:
    """A local path, or a URL (http, https, file) downloaded once into the cache (`cached_path`:
    keyed by the whole URL) and verified against `sha256` (a full digest or a prefix of at least 8
    hex digits, or the hash in the file name as torch hub names them) on every use: a cached file
    that no longer matches is downloaded again. Downloads (`maskrcnn.download`) are checked
    against the Content-Length and the hash before they are renamed into place, so a failed, cut
    short or corrupted download leaves nothing in the cache. `refetch`: download even if cached."""
    text = str(path_or_url)
    if not is_url(text):
        path = Path(text)
        if sha256:
            _verify(path, _expected_hash(path.name, sha256, text), text)
        return path
    target = cached_path(text)
    expected = _expected_hash(target.name, sha256, text)
    if not refetch and target.is_file() and (expected is None or file_sha256(target).startswith(expected)):
        return target  # already downloaded (and verified): no second download
    from .download import download

    return download(text, target, expected=expected, progress=progress)


def read_cached_checkpoint(
    path_or_url: str | Path,
    *,
    map_location: str = "cpu",
    sha256: str | None = None,
    torchvision: bool = False,
) -> tuple[dict, Path]:
    """(`read_checkpoint` of `resolve_weights(path_or_url)`, the file read). A URL's cached file
    that cannot be read is reported (naming the URL and the cache file) and downloaded once more;
    when that one cannot be read either it leaves the cache and the UserError names both."""
    path = resolve_weights(path_or_url, sha256=sha256)
    try:
        return read_checkpoint(path, map_location, torchvision=torchvision), path
    except UserError as e:
        if not is_url(path_or_url):
            raise
        print(
            f"note: {path_or_url}: its cached file {path} cannot be read ({e}); downloading it again",
            file=sys.stderr,
            flush=True,
        )
    path = resolve_weights(path_or_url, sha256=sha256, refetch=True)
    try:
        return read_checkpoint(path, map_location, torchvision=torchvision), path
    except UserError as e:
        path.unlink(missing_ok=True)
        raise UserError(
            f"{path_or_url}: downloaded again, its file {path} still cannot be read ({e}); "
            "it was removed from the cache"
        ) from None


def clear_cache(what: str | None = None) -> list[Path]:
    """Remove cached downloads: every file of the cache (`what` None), or those of one URL; returns
    what was removed."""
    import shutil

    if what is None:
        removed = sorted(cache_dir().iterdir()) if cache_dir().is_dir() else []
    else:
        removed = [url_folder(what)] if url_folder(what).exists() else []
    for path in removed:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return removed


def _verify(path: Path, expected: str, source: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    actual = file_sha256(path)
    if not actual.startswith(expected):
        raise UserError(f"checksum mismatch for {source}: expected sha256 {expected}..., got {actual}")
