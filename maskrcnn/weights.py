"""Pretrained weights by name: torchvision's published checkpoints, fetched once, converted, kept.

`maskrcnn.load(NAME)`, `--weights NAME` and the training key `model.backbone.weights: NAME` take a
name of `REGISTRY` (`maskrcnn weights` lists them). Each entry points at a member of one of
torchvision's weight enums, and its URL, hash (the 8 hex digits in the file name, which torch hub
checks), class names and published metrics are read from that member, never copied here.

Kinds of entries
    model:    a whole detector (a torchvision state dict), converted to our checkpoint by the entry's
              converter (`engine.conversion.CONVERTERS`); class names are COCO's in torchvision's
              91-slot label space, so label L is COCO category id L and predictions.json holds real
              COCO ids.
              detectron2's model zoo (`detectron2_*` names): a `.pkl` of numpy arrays, read with an
              unpickler that accepts nothing else, converted by `convert.detectron2`; COCO's 80
              classes in detectron2's order, with their real COCO category ids. Their URL, the md5
              prefix in the file name (model_final_<md5 prefix>.pkl, checked after the download)
              and the published AP come from detectron2's MODEL_ZOO.md (convert/detectron2_zoo.py).
    backbone: an ImageNet ResNet (conv1 .. layer4) that `maskrcnn train` loads into a fresh model.

Cache ($MASKRCNN_HOME/checkpoints, else ~/.cache/maskrcnn/checkpoints: `checkpoints.cache_dir`)
    <url key>/<file>.pth    the download, in the folder of its whole URL (`checkpoints.cached_path`),
                            verified against its hash and its Content-Length (`maskrcnn.download`:
                            progress bar, a temporary file renamed only after both checks)
    <file stem>.maskrcnn.pt our converted checkpoint (models), written atomically: once it exists,
                            loading by name reads only it (no network, no hash, no conversion)
`maskrcnn weights --clear [NAME|URL]` removes the whole cache, a name's files, or a URL's download.

Mirror: MASKRCNN_WEIGHTS_MIRROR=DIR, file://... or https://... replaces the base of every URL
(`<mirror>/<file name>`). A `SHA256SUMS` file there (`<sha256>  <file name>` lines, as sha256sum
writes them) gives full digests that replace the registry's hash prefixes (and detectron2's md5
prefixes) for the files it lists;
the other files are checked against the registry's prefixes, as for a plain copy of the originals.
"""

from __future__ import annotations

import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checkpoints
from .convert.detectron2_zoo import ZOO, ZOO_BASE
from .engine import checkpoint
from .engine.conversion import CONVERTERS
from .errors import UserError

MIRROR_ENV = "MASKRCNN_WEIGHTS_MIRROR"
SUMS_FILE = "SHA256SUMS"
CONVERTED_SUFFIX = ".maskrcnn.pt"


@dataclass(frozen=True)
class Entry:
    """One published checkpoint. `enum`: the torchvision weight enum member, as
    "module:Class.MEMBER"; `converter`: a key of CONVERTERS (models); `depth`: the ResNet depth
    (backbones)."""

    name: str
    kind: str  # "model" | "backbone"
    enum: str
    converter: str = ""
    depth: int = 0
    aliases: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()  # config `key=value`s the converted model needs beyond config_for's
    # detectron2 model zoo entries (no torchvision enum): the path under ZOO_BASE, and the published
    # COCO val2017 AP as ((metric, value), ...) with metric box_map | mask_map | kp_map
    d2_path: str = ""
    published: tuple[tuple[str, float], ...] = ()

    @property
    def is_detectron2(self) -> bool:
        return bool(self.d2_path)

    @property
    def md5_prefix(self) -> str:
        """detectron2's file names end in the md5 prefix of the file (MODEL_ZOO.md: "any model on
        this page contains its md5 prefix in its file name"); "" for torchvision entries."""
        match = re.search(r"_([0-9a-f]{6,32})\.pkl$", self.file_name) if self.is_detectron2 else None
        return match.group(1) if match else ""

    @property
    def weights(self) -> Any:
        """The torchvision enum member (its url, meta["_metrics"], meta["categories"])."""
        import importlib

        module, member = self.enum.split(":")
        cls_name, value = member.split(".")
        return getattr(getattr(importlib.import_module(module), cls_name), value)

    @property
    def url(self) -> str:
        return ZOO_BASE + self.d2_path if self.is_detectron2 else self.weights.url

    @property
    def file_name(self) -> str:
        return os.path.basename(urllib.parse.urlparse(self.url).path)

    @property
    def hash_prefix(self) -> str:
        """torch hub's sha256 prefix in the file name; "" for detectron2 files (their md5 prefix is
        checked by `fetch` instead, unless a mirror's SHA256SUMS gives a sha256)."""
        if self.is_detectron2:
            return ""
        match = re.search(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$", self.file_name)  # torch hub's name-<hash>.pth
        if match is None:
            raise ValueError(f"{self.enum}: no hash in the file name {self.file_name}")
        return match.group(1)

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        """The published metrics, e.g. {"COCO-val2017": {"box_map": 37.9, "mask_map": 34.6}}."""
        if self.is_detectron2:
            return {"COCO-val2017": dict(self.published)}
        return dict(self.weights.meta.get("_metrics", {}))


_DETECTION = "torchvision.models.detection"
_MODELS = "torchvision.models"


def _d2(name: str, path: str, published: dict[str, float], overrides: tuple[str, ...]) -> Entry:
    """A detectron2 model-zoo entry (a row of `convert.detectron2_zoo.ZOO`)."""
    d2 = {"d2_path": path, "published": tuple(published.items()), "overrides": overrides}
    return Entry(name, "model", "", converter="detectron2", **d2)


REGISTRY: dict[str, Entry] = {
    entry.name: entry
    for entry in [
        Entry(
            "maskrcnn_resnet50_fpn_coco",
            "model",
            f"{_DETECTION}:MaskRCNN_ResNet50_FPN_Weights.COCO_V1",
            converter="torchvision_maskrcnn_v1",
            aliases=("torchvision_v1",),
            # torchvision runs these weights with frozen BN eps 0 (`overwrite_eps(model, 0.0)`)
            overrides=("model.backbone.frozen_bn_eps=0.0",),
        ),
        Entry(
            "maskrcnn_resnet50_fpn_v2_coco",
            "model",
            f"{_DETECTION}:MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1",
            converter="torchvision_maskrcnn_v2",
            aliases=("torchvision_v2",),
        ),
        Entry(
            "keypointrcnn_resnet50_fpn_coco",
            "model",
            f"{_DETECTION}:KeypointRCNN_ResNet50_FPN_Weights.COCO_V1",
            converter="torchvision_keypoint",
            aliases=("torchvision_keypoint",),
            overrides=("model.backbone.frozen_bn_eps=0.0",),  # as for v1: `overwrite_eps(model, 0.0)`
        ),
        *(_d2(*row) for row in ZOO),
        Entry("resnet18_imagenet", "backbone", f"{_MODELS}:ResNet18_Weights.IMAGENET1K_V1", depth=18),
        Entry("resnet34_imagenet", "backbone", f"{_MODELS}:ResNet34_Weights.IMAGENET1K_V1", depth=34),
        Entry("resnet50_imagenet", "backbone", f"{_MODELS}:ResNet50_Weights.IMAGENET1K_V1", depth=50),
        Entry("resnet50_imagenet_v2", "backbone", f"{_MODELS}:ResNet50_Weights.IMAGENET1K_V2", depth=50),
        Entry("resnet101_imagenet", "backbone", f"{_MODELS}:ResNet101_Weights.IMAGENET1K_V1", depth=101),
        Entry("resnet101_imagenet_v2", "backbone", f"{_MODELS}:ResNet101_Weights.IMAGENET1K_V2", depth=101),
    ]
}


_KIND_TEXT = {  # kind -> (what it is, what its names are called)
    "model": ("a detector (for maskrcnn.load and --weights)", "detector names"),
    "backbone": ("an ImageNet backbone (for model.backbone.weights)", "backbone names"),
}
_BARE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


def lookup(name: str) -> Entry | None:
    """The entry called `name` (or one of its aliases), else None."""
    if name in REGISTRY:
        return REGISTRY[name]
    return next((e for e in REGISTRY.values() if name in e.aliases), None)


def names_text(kind: str | None = None) -> str:
    """The names (aliases in parentheses) of the entries of one kind, or of all."""
    return ", ".join(
        e.name + (f" ({', '.join(e.aliases)})" if e.aliases else "")
        for e in REGISTRY.values()
        if kind is None or e.kind == kind
    )


def is_name(source: str) -> bool:
    """Whether `source` is meant as a weights name: a registry name or alias, or a bare word (no
    folder, no extension, no URL) that is not an existing file, which then gets the list of names."""
    text = str(source)
    return lookup(text) is not None or (bool(_BARE_NAME.match(text)) and not os.path.exists(text))


def get(name: str, *, kind: str | None = None, what: str = "weights") -> Entry:
    """The entry called `name`; a UserError listing the known names otherwise."""
    entry = lookup(name)
    if entry is not None and kind is not None and entry.kind != kind:
        (is_text, _), (want_text, names_label) = _KIND_TEXT[entry.kind], _KIND_TEXT[kind]
        raise UserError(f"{name!r} is {is_text}, not {want_text}; {names_label}: {names_text(kind)}")
    if entry is None:
        known = names_text(kind)
        raise UserError(f"unknown {what} name {name!r} (not a file or URL either); known names: {known}")
    return entry


# ---------------------------------------------------------------- the cache


def download_path(entry: Entry) -> Path:
    """Where the entry's download is kept (its URL's, or the mirror's: `checkpoints.cached_path`)."""
    return checkpoints.cached_path(source_url(entry))


def converted_path(entry: Entry) -> Path:
    return checkpoints.cache_dir() / (Path(entry.file_name).stem + CONVERTED_SUFFIX)


def downloads(entry: Entry) -> list[Path]:
    """The entry's downloads in the cache, from any URL (the registry's, a mirror's): the registry's
    file names carry their hash, so each is the entry's file."""
    folder = checkpoints.cache_dir()
    return sorted(p for p in folder.glob(f"*/{entry.file_name}") if p.is_file()) if folder.is_dir() else []


def cache_state(entry: Entry) -> str:
    """ "downloaded", "converted", both ("downloaded, converted") or "not cached"."""
    states = ["downloaded"] if downloads(entry) else []
    if entry.kind == "model" and converted_path(entry).is_file():
        states.append("converted")
    return ", ".join(states) or "not cached"


def clear(what: str | None = None) -> list[Path]:
    """`maskrcnn weights --clear [NAME|URL]`: remove the whole cache (None), a name's download and
    converted checkpoint, or a URL's download; returns what was removed."""
    if what is None or checkpoints.is_url(what):
        return checkpoints.clear_cache(what)
    entry = get(what)
    removed = []
    for path in [*downloads(entry), converted_path(entry)]:
        if path.is_file():
            path.unlink()
            removed.append(path)
        if path.parent != checkpoints.cache_dir() and path.parent.is_dir() and not any(path.parent.iterdir()):
            path.parent.rmdir()  # the URL's folder, now empty
    return sorted(removed)


# ---------------------------------------------------------------- sources: the registry or a mirror


def mirror_base() -> str | None:
    value = os.environ.get(MIRROR_ENV, "").strip()
    if not value:
        return None
    if urllib.parse.urlparse(value).scheme in ("http", "https", "file"):
        return value.rstrip("/")
    return Path(value).expanduser().resolve().as_uri()


def _read_sums(base: str) -> dict[str, str]:
    """{file name: sha256} of the mirror's SHA256SUMS file; {} when it has none."""
    url = f"{base}/{SUMS_FILE}"
    parsed = urllib.parse.urlparse(url)
    try:
        if parsed.scheme == "file":
            path = Path(urllib.request.url2pathname(parsed.path))
            if not path.is_file():
                return {}
            text = path.read_text()
        else:
            with urllib.request.urlopen(url, timeout=60) as response:
                text = response.read().decode()
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return {}
        raise UserError(f"{MIRROR_ENV}: could not read {url}: {e}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{MIRROR_ENV}: could not read {url}: {e}") from e
    sums = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = re.match(r"^([0-9a-fA-F]{64}) [ *](.+)$", line.strip())
        if match is None:
            raise UserError(f"{url}: line {number} is not '<sha256>  <file name>': {line.strip()[:80]!r}")
        sums[match.group(2)] = match.group(1).lower()
    return sums


def source_url(entry: Entry) -> str:
    """The URL an entry is downloaded from: the registry's, or the mirror's."""
    base = mirror_base()
    return entry.url if base is None else f"{base}/{entry.file_name}"


def source(entry: Entry) -> tuple[str, str]:
    """(URL, expected sha256 or prefix) of an entry's file: the registry's, or the mirror's."""
    base = mirror_base()
    if base is None:
        return entry.url, entry.hash_prefix
    return source_url(entry), _read_sums(base).get(entry.file_name, entry.hash_prefix)


def fetch(entry: Entry, *, progress: bool = True) -> Path:
    """The entry's file in the cache, downloaded and verified first if needed (a corrupted download
    is a UserError naming the URL, and leaves nothing behind)."""
    url, expected = source(entry)
    path = checkpoints.resolve_weights(url, sha256=expected or None, progress=progress)
    if entry.md5_prefix and not expected:  # a mirror's SHA256SUMS digest replaces the md5 prefix
        _check_md5(path, entry.md5_prefix, url)
    return path


def _check_md5(path: Path, prefix: str, url: str) -> None:
    """detectron2's files: the md5 prefix in the name; a file that fails it leaves the cache."""
    import hashlib

    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(prefix):
        path.unlink(missing_ok=True)
        raise UserError(
            f"checksum mismatch for {url}: expected md5 {prefix}..., got {digest.hexdigest()}; "
            f"the file was removed from {path.parent}"
        )


# ---------------------------------------------------------------- using the weights


def converted(name: str, *, progress: bool = True) -> Path:
    """Our checkpoint of the model called `name`: the cached converted file, else downloaded,
    converted and saved (atomically) first."""
    entry = get(name, kind="model", what="model weights")
    target = converted_path(entry)
    if target.is_file():
        return target
    downloaded = fetch(entry, progress=progress)
    if progress:
        print(f"converting {downloaded.name} to {target}", file=sys.stderr, flush=True)
    model = CONVERTERS[entry.converter](downloaded, entry)
    checkpoint.save_model(model, target, weights_name=entry.name, source=entry.url)
    return target


def load_model(name: str, *, map_location: str = "cpu", progress: bool = True):
    """Our MaskRCNN holding the named published weights (fetched and converted on first use)."""
    return checkpoints.load_model(converted(name, progress=progress), map_location=map_location)


def load_backbone(model, weights: str, *, progress: bool = True) -> None:
    """Load ImageNet ResNet weights into `model.backbone.body`: `weights` is a backbone name
    (resnet50_imagenet, ...), a path or a URL of a torchvision ResNet state dict."""
    if not is_name(weights):
        checkpoint.load_backbone_weights(model, weights)
        return
    entry = get(weights, kind="backbone", what="model.backbone.weights")
    depth = model.config.model.backbone.depth if model.config is not None else entry.depth
    if depth != entry.depth:
        raise UserError(
            f"model.backbone.weights={weights} is a ResNet-{entry.depth}, but model.backbone.depth is {depth}"
        )
    checkpoint.load_backbone_weights(model, fetch(entry, progress=progress))


def listing() -> list[dict[str, Any]]:
    """One row per name: name, kind, aliases, torchvision enum, published metrics, cache state."""
    rows = []
    for entry in REGISTRY.values():
        rows.append(
            {
                "name": entry.name,
                "kind": entry.kind,
                "aliases": list(entry.aliases),
                "torchvision": entry.enum.split(":")[1] if entry.enum else "",
                "detectron2": entry.d2_path,
                "metrics": entry.metrics,
                "cached": cache_state(entry),
            }
        )
    return rows


def format_metrics(metrics: dict[str, dict[str, float]]) -> str:
    """{"COCO-val2017": {"box_map": 37.9, "mask_map": 34.6}} -> "box AP 37.9, mask AP 34.6 (COCO-val2017)"."""
    labels = {"box_map": "box AP", "mask_map": "mask AP", "kp_map": "keypoint AP", "acc@1": "top-1"}
    parts = []
    for dataset, values in metrics.items():
        shown = [f"{labels[k]} {v:g}" for k, v in values.items() if k in labels]
        parts.append(f"{', '.join(shown)} ({dataset})")
    return "; ".join(parts)
