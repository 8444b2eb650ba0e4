"""Weights by name (maskrcnn/weights.py): download once through a local mirror, verify, convert, cache,
then load offline; corrupted downloads; `maskrcnn weights`; `--weights NAME` in the CLI; ImageNet
backbones by name in training.

The mirror (MASKRCNN_WEIGHTS_MIRROR) is a folder the tests write: a seeded torchvision Mask R-CNN's
state dict saved under the registry's file name, and a SHA256SUMS file with its digest (a test cannot
write a file whose digest starts with torchvision's prefix). The v1 state dict is ~170 MB, so it is
written, fetched and converted once per module.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import torchvision

import maskrcnn
from maskrcnn import weights
from maskrcnn.cli import main
from maskrcnn.convert.torchvision import from_torchvision
from maskrcnn.errors import UserError
from maskrcnn.predictor import Predictor
from maskrcnn.safe_load import load_weights_file
from tests.helpers import run
from tests.model.tv_reference import torchvision_model

V1 = weights.REGISTRY["maskrcnn_resnet50_fpn_coco"]
V2 = weights.REGISTRY["maskrcnn_resnet50_fpn_v2_coco"]
IMAGE = "coco-mini/val2017/000000214753.jpg"


def write_mirror(folder: Path, files: dict[str, dict]) -> dict[str, str]:
    """torch.save each state dict into `folder` under its name, plus SHA256SUMS; {name: sha256}."""
    folder.mkdir(parents=True, exist_ok=True)
    sums = {}
    for name, state in files.items():
        torch.save(state, folder / name)
        sums[name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "SHA256SUMS").write_text("".join(f"{digest}  {name}\n" for name, digest in sums.items()))
    return sums


def cache_files(home: Path) -> list[str]:
    """The name of every file of the cache (downloads in their URLs' folders), hidden and temporary
    ones included."""
    folder = home / "checkpoints"
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def detections_equal(a, b) -> None:
    assert len(a.boxes) > 0
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.boxes, b.boxes)
    assert torch.equal(a.scores, b.scores)
    assert torch.equal(a.masks, b.masks)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """(mirror folder, the torchvision state dict served there, its sha256)."""
    state = torchvision_model("v1", seed=0).state_dict()
    folder = tmp_path_factory.mktemp("mirror")
    sums = write_mirror(folder, {V1.file_name: state})
    return folder, state, sums[V1.file_name]


@pytest.fixture(scope="module")
def fetched(mirror, tmp_path_factory):
    """A cache holding the fetched and converted v1 entry: (MASKRCNN_HOME, the first load's
    Predictor, {file: (inode, mtime_ns)} right after the first load)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MASKRCNN_HOME", str(home))
        patch.setenv(weights.MIRROR_ENV, str(mirror[0]))
        predictor = maskrcnn.load("maskrcnn_resnet50_fpn_coco")
    stats = {
        name: (p.stat().st_ino, p.stat().st_mtime_ns)
        for name in cache_files(home)
        for p in (home / "checkpoints").rglob(name)
    }
    return home, predictor, stats


@pytest.fixture(scope="module")
def first_detections(fetched, shared_data):
    """The first load's detections on IMAGE."""
    return fetched[1].predict([shared_data / IMAGE])[0]


@pytest.fixture
def offline(fetched, tmp_path, monkeypatch):
    """The fetched cache, with the mirror pointing at an empty folder: any download would fail."""
    home = fetched[0]
    monkeypatch.setenv("MASKRCNN_HOME", str(home))
    monkeypatch.setenv(weights.MIRROR_ENV, (tmp_path / "empty").as_uri())
    return home


def test_registry_reads_torchvision_metadata():
    from torchvision.models import ResNet50_Weights
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_V2_Weights, MaskRCNN_ResNet50_FPN_Weights

    published = MaskRCNN_ResNet50_FPN_Weights.COCO_V1
    assert (
        V1.url
        == published.url
        == "https://download.pytorch.org/models/maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth"
    )
    assert V1.hash_prefix == "bf2d0c1e"
    assert V1.metrics["COCO-val2017"] == {"box_map": 37.9, "mask_map": 34.6}
    assert V2.url == MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1.url and V2.hash_prefix == "73cbd019"
    assert weights.lookup("torchvision_v2") is V2
    backbone = weights.REGISTRY["resnet50_imagenet"]
    assert (backbone.url, backbone.depth) == (ResNet50_Weights.IMAGENET1K_V1.url, 50)


def test_load_by_name_downloads_verifies_converts_and_caches(mirror, fetched, first_detections, shared_data):
    home, predictor, _ = fetched
    folder, state, digest = mirror
    converted = V1.file_name.removesuffix(".pth") + ".maskrcnn.pt"
    assert cache_files(home) == sorted([V1.file_name, converted])  # no temporary or partial file
    (cached,) = (home / "checkpoints").rglob(V1.file_name)
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == digest
    ckpt = load_weights_file(home / "checkpoints" / converted)
    assert (ckpt["format"], ckpt["weights_name"]) == ("maskrcnn", "maskrcnn_resnet50_fpn_coco")
    # torchvision runs the published v1 weights with frozen-BN eps 0 (overwrite_eps)
    assert predictor.model.config.model.backbone.frozen_bn_eps == 0.0

    direct = Predictor(from_torchvision(state, "v1"), device="cpu")
    image = shared_data / IMAGE
    detections_equal(first_detections, direct.predict([image])[0])

    # labels are COCO category ids: each class name is the COCO name of its category id
    coco = json.loads((shared_data / "coco-mini/annotations/instances_val2017.json").read_text())
    coco_names = {c["id"]: c["name"] for c in coco["categories"]}
    assert predictor.category_ids == list(range(1, 91))
    named = {cid: name for cid, name in zip(predictor.category_ids, predictor.class_names) if name != "N/A"}
    assert named == coco_names


def test_second_load_neither_downloads_nor_converts(offline, fetched, shared_data):
    _, first, stats = fetched
    again = maskrcnn.load("torchvision_v1")  # the alias; the mirror is empty now
    assert {
        name: (p.stat().st_ino, p.stat().st_mtime_ns)
        for name in cache_files(offline)
        for p in (offline / "checkpoints").rglob(name)
    } == stats
    mine, theirs = again.model.state_dict(), first.model.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_corrupted_download_is_rejected_and_nothing_is_cached(mirror, tmp_path, monkeypatch):
    folder, _, digest = mirror
    bad = tmp_path / "bad-mirror"
    bad.mkdir()
    shutil.copy(folder / "SHA256SUMS", bad / "SHA256SUMS")
    payload = bytearray((folder / V1.file_name).read_bytes())
    payload[len(payload) // 2 : len(payload) // 2 + 16] = bytes(
        b ^ 0xFF for b in payload[len(payload) // 2 : len(payload) // 2 + 16]
    )
    (bad / V1.file_name).write_bytes(payload)
    home = tmp_path / "home"
    monkeypatch.setenv("MASKRCNN_HOME", str(home))
    monkeypatch.setenv(weights.MIRROR_ENV, bad.as_uri())
    url = f"{bad.as_uri()}/{V1.file_name}"
    with pytest.raises(UserError, match=rf"checksum mismatch for {url}: expected sha256 {digest}"):
        maskrcnn.load("maskrcnn_resnet50_fpn_coco")
    assert cache_files(home) == []
    # without SHA256SUMS the registry's prefix applies, which these bytes do not have either
    (bad / "SHA256SUMS").unlink()
    with pytest.raises(UserError, match=rf"checksum mismatch for {url}: expected sha256 bf2d0c1e\.\.\., got"):
        maskrcnn.load("maskrcnn_resnet50_fpn_coco")
    assert cache_files(home) == []


def test_weights_command_lists_names_published_ap_and_cache_state(offline, capsys):
    assert main(["weights"]) == 0
    stdout = capsys.readouterr().out
    lines = {line.split()[0]: line for line in stdout.splitlines() if line.strip()}
    for entry in (V1, V2):
        published = entry.weights.meta["_metrics"]["COCO-val2017"]
        line = lines[entry.name]
        assert f"box AP {published['box_map']:g}, mask AP {published['mask_map']:g}" in line
        assert entry.aliases[0] in line
    assert lines[V1.name].rstrip().endswith("downloaded, converted")
    assert lines[V2.name].rstrip().endswith("not cached")
    assert lines["resnet50_imagenet"].rstrip().endswith("not cached")
    assert f"cache: {offline / 'checkpoints'}" in stdout


def test_cli_predict_by_name_works_offline(offline, fetched, first_detections, shared_data, tmp_path):
    image = shared_data / IMAGE
    result = run(
        "predict",
        "--weights",
        "maskrcnn_resnet50_fpn_coco",
        "--out",
        str(tmp_path / "out"),
        "--no-overlays",
        "--no-progress",
        str(image),
    )
    assert result.returncode == 0, result.stderr
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())
    expected = first_detections
    assert [r["category_id"] for r in records] == expected.labels.tolist()  # label L is COCO id L
    assert [r["score"] for r in records] == [round(s, 5) for s in expected.scores.tolist()]
    assert cache_files(offline) == sorted(fetched[2])


def test_unknown_name_is_a_one_line_error_listing_the_names(tmp_path, shared_data, monkeypatch, capsys):
    monkeypatch.setenv("MASKRCNN_HOME", str(tmp_path / "home"))
    out = str(tmp_path / "out")
    assert (
        main(["predict", "--weights", "maskrcnn_resnet_fpn_cocoo", "--out", out, str(shared_data / IMAGE)])
        == 1
    )
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1
    assert stderr.startswith("error: unknown model weights name 'maskrcnn_resnet_fpn_cocoo'")
    assert (
        "maskrcnn_resnet50_fpn_coco (torchvision_v1), maskrcnn_resnet50_fpn_v2_coco (torchvision_v2)"
        in stderr
    )
    with pytest.raises(UserError, match="'resnet50_imagenet' is an ImageNet backbone"):
        maskrcnn.load("resnet50_imagenet")
    assert cache_files(tmp_path / "home") == []


def test_training_starts_from_an_imagenet_backbone_by_name(tmp_path, monkeypatch):
    from maskrcnn.config import resolve
    from maskrcnn.engine.train import train

    torch.manual_seed(3)
    resnet = torchvision.models.resnet18().state_dict()
    for key in resnet:  # statistics unlike a fresh network's (0 and 1)
        if key.endswith(("running_mean", "running_var")):
            resnet[key] = torch.rand(resnet[key].shape) + 0.5
    entry = weights.REGISTRY["resnet18_imagenet"]
    write_mirror(tmp_path / "mirror", {entry.file_name: resnet})
    monkeypatch.setenv("MASKRCNN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(weights.MIRROR_ENV, str(tmp_path / "mirror"))
    cfg = resolve(
        "shapes_demo",
        [
            "model.backbone.weights=resnet18_imagenet",
            "model.backbone.width=64",  # ImageNet's ResNet-18, where the demo's is half as wide
            "model.backbone.norm=frozen_bn",
            "model.backbone.frozen_stages=1",  # the stem keeps the ImageNet weights while training
            "model.backbone.fpn_channels=32",
            "solver.max_iter=1",
            "solver.ims_per_batch=2",
            "data.num_workers=0",
        ],
    )
    train(cfg, train_data="shapes:2", out_dir=tmp_path / "run", progress=False)
    trained = maskrcnn.load(str(tmp_path / "run" / "model_final.pt")).model.backbone.body.state_dict()
    assert torch.equal(trained["conv1.weight"], resnet["conv1.weight"])
    statistics = [k for k in resnet if k.endswith(("running_mean", "running_var"))]
    assert all(torch.equal(trained[k], resnet[k]) for k in statistics)  # frozen BN: loaded, kept
    assert cache_files(tmp_path / "home") == [entry.file_name]
    wrong = resolve("shapes_demo", ["model.backbone.depth=50", "model.backbone.weights=resnet18_imagenet"])
    with pytest.raises(UserError, match="resnet18_imagenet is a ResNet-18, but model.backbone.depth is 50"):
        weights.load_backbone(maskrcnn.build_model(wrong), "resnet18_imagenet")
