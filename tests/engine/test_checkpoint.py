"""Checkpoints: our format, atomic writes, URLs with checksums and the cache, backbone weights."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
import torchvision

import maskrcnn
import maskrcnn.config.upgrade as schema_upgrade
from maskrcnn.checkpoints import FORMAT, cached_path, read_checkpoint, resolve_weights
from maskrcnn.config import SCHEMA_VERSION, apply_overrides, get_preset, rename_key
from maskrcnn.engine.checkpoint import load_backbone_weights, save_model
from maskrcnn.errors import UserError
from maskrcnn.model import build_model
from maskrcnn.predict import load_image
from maskrcnn.safe_load import load_weights_file
from tests.helpers import TINY  # a small random model that detects things: ~10 MB checkpoints


def sha256_of(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = build_model(apply_overrides(get_preset("default"), TINY), class_names=["cat", "dog"])
    return model.eval()


@pytest.fixture(scope="module")
def image(shared_data):
    return load_image(sorted((shared_data / "coco-2img/images/val2017").iterdir())[0])


@pytest.fixture
def saved(tiny, tmp_path):
    path = tmp_path / "src" / "tiny.pt"
    save_model(tiny, path)
    return path


@pytest.fixture
def home(tmp_path, monkeypatch):
    root = tmp_path / "home"
    monkeypatch.setenv("MASKRCNN_HOME", str(root))
    return root


def cached_files(home) -> list[str]:
    folder = home / "checkpoints"  # the downloads, each in the folder of its URL
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


@pytest.fixture(scope="module")
def reference(tiny, image):
    """The tiny model's detections on the image, computed once."""
    (det,) = tiny.predict([image])
    assert len(det) > 0, "the model detected nothing; comparisons would be vacuous"
    return det


def assert_same_predictions(expected, model, image):
    (det,) = model.predict([image])
    for x, y in zip(
        (expected.boxes, expected.scores, expected.labels, expected.masks),
        (det.boxes, det.scores, det.labels, det.masks),
    ):
        assert torch.equal(x, y)


def test_save_and_load_round_trip(tiny, saved, image, reference):
    ckpt = read_checkpoint(saved)
    assert ckpt["format"] == FORMAT and ckpt["version"] == 2
    assert ckpt["class_names"] == ["cat", "dog"] and ckpt["category_ids"] == [1, 2]
    assert ckpt["config"]["model"]["backbone"]["depth"] == 18
    predictor = maskrcnn.load(str(saved))
    assert predictor.class_names == ["cat", "dog"] and predictor.category_ids == [1, 2]
    loaded = predictor.model
    assert not loaded.training
    assert loaded.config == tiny.config
    assert loaded.class_names == ["cat", "dog"] and loaded.category_ids == [1, 2]
    state, loaded_state = tiny.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)
    assert_same_predictions(reference, loaded, image)
    # category ids given to a model travel with it
    with_ids = build_model(tiny.config, class_names=["cat", "dog"], category_ids=[18, 17])
    save_model(with_ids, saved.parent / "ids.pt")
    assert maskrcnn.load(str(saved.parent / "ids.pt")).category_ids == [18, 17]


def test_version_1_checkpoints_load_into_the_branch_layout(tiny, saved, image, reference, tmp_path):
    """Checkpoints written before the RoI heads became branches (box_head.*, box_predictor.*,
    mask_head.* at the top level) load and predict the same."""
    ckpt = read_checkpoint(saved)
    old_names = {"roi_heads.box.head.": "box_head.", "roi_heads.box.predictor.": "box_predictor."}
    old_names["roi_heads.mask.head."] = "mask_head."
    state = {}
    for key, value in ckpt["model"].items():
        prefix = next((p for p in old_names if key.startswith(p)), None)
        state[old_names[prefix] + key[len(prefix) :] if prefix else key] = value
    assert "box_predictor.cls_score.weight" in state and "mask_head.predictor.weight" in state
    old = tmp_path / "v1.pt"
    torch.save({**ckpt, "version": 1, "model": state}, old)
    assert_same_predictions(reference, maskrcnn.load(str(old)).model, image)


def test_atomic_save_leaves_no_temporary_files_and_survives_failures(tiny, saved):
    folder = saved.parent
    assert sorted(p.name for p in folder.iterdir()) == ["tiny.pt"]
    before = saved.read_bytes()
    # an unpicklable extra entry makes torch.save fail half-way through writing
    with pytest.raises(Exception, match="pickle|lambda"):
        save_model(tiny, saved, note=lambda: None)
    assert saved.read_bytes() == before  # the existing file is untouched
    assert sorted(p.name for p in folder.iterdir()) == ["tiny.pt"]  # and the temporary file is gone
    # a failed first write creates nothing
    with pytest.raises(Exception, match="pickle|lambda"):
        save_model(tiny, folder / "new.pt", note=lambda: None)
    assert sorted(p.name for p in folder.iterdir()) == ["tiny.pt"]
    # extra entries are stored beside the model
    save_model(tiny, folder / "extra.pt", iteration=7)
    assert read_checkpoint(folder / "extra.pt")["iteration"] == 7


def test_file_url_with_sha256_is_verified_and_cached(saved, home, image, reference):
    digest = sha256_of(saved)
    model = maskrcnn.load(saved.as_uri(), sha256=digest)
    assert cached_files(home) == ["tiny.pt"]
    assert cached_path(saved.as_uri()).read_bytes() == saved.read_bytes()
    assert_same_predictions(reference, model.model, image)  # the module (the Predictor folds BN)
    # the second call uses the cache: it works with the source gone, and with an upper-case prefix
    saved.rename(saved.with_suffix(".moved"))
    assert resolve_weights(saved.as_uri(), sha256=digest[:12].upper()) == cached_path(saved.as_uri())


def test_wrong_sha256_raises_and_caches_nothing(saved, home):
    wrong = "0" * 64 if not sha256_of(saved).startswith("0") else "1" * 64
    with pytest.raises(
        ValueError, match=rf"checksum mismatch for file://.*tiny\.pt: expected sha256 {wrong}"
    ):
        maskrcnn.load(saved.as_uri(), sha256=wrong)
    assert cached_files(home) == []
    # a local path is verified too
    with pytest.raises(ValueError, match="checksum mismatch"):
        maskrcnn.load(str(saved), sha256=wrong)
    assert maskrcnn.load(str(saved), sha256=sha256_of(saved)) is not None


def test_hub_style_file_name_carries_the_hash(saved, home):
    digest = sha256_of(saved)
    good = saved.parent / f"tiny-{digest[:10]}.pt"
    shutil.copy(saved, good)
    assert resolve_weights(good.as_uri(), progress=False) == cached_path(good.as_uri())
    assert cached_files(home) == [good.name]
    # a name whose hash does not match the content is refused, and nothing is cached
    other = "f" * 10 if not digest.startswith("f") else "e" * 10
    bad = saved.parent / f"tiny-{other}.pt"
    shutil.copy(saved, bad)
    with pytest.raises(ValueError, match=f"checksum mismatch.*{other}"):
        maskrcnn.load(bad.as_uri())
    assert cached_files(home) == [good.name]


def test_torchvision_state_dict_gives_a_helpful_error(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=3
    )
    path = tmp_path / "tv.pth"
    torch.save(tv.state_dict(), path)
    with pytest.raises(
        ValueError, match=r"torchvision state dict: run `maskrcnn convert --from torchvision-v1"
    ):
        maskrcnn.load(str(path))
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        maskrcnn.load(str(tmp_path / "missing.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt: not a readable checkpoint"):
        maskrcnn.load(str(tmp_path / "junk.pt"))


def test_load_backbone_weights_from_a_torchvision_resnet(tmp_path):
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50(weights=None)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial BN statistics and affine parameters (the defaults are 0/1)
        for m in resnet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen))
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen))
    path = tmp_path / "resnet50.pth"
    torch.save(resnet.state_dict(), path)
    expected = {k: v for k, v in resnet.state_dict().items() if not k.startswith("fc.")}

    overrides = ["model.backbone.fpn_channels=32", "model.roi_heads.fc_dim=64"]
    model = build_model(apply_overrides(get_preset("default"), overrides))  # frozen BN
    load_backbone_weights(model, path, sha256=sha256_of(path))
    body = model.backbone.body.state_dict()
    # every tensor but the BN counters (FrozenBatchNorm2d has none) and the classifier fc
    assert set(body) == {k for k in expected if not k.endswith("num_batches_tracked")}
    for key, value in body.items():
        assert torch.equal(value, expected[key]), key

    # weights of another depth are refused with a clear error, and the backbone is left untouched
    small = build_model(apply_overrides(get_preset("default"), overrides + ["model.backbone.depth=18"]))
    before = {k: v.clone() for k, v in small.backbone.body.state_dict().items()}
    with pytest.raises(ValueError, match=r"do not fit the backbone.*check backbone\.depth"):
        load_backbone_weights(small, path)
    after = small.backbone.body.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_checkpoints_record_the_config_schema_and_older_ones_are_upgraded(
    saved, image, reference, tmp_path, monkeypatch
):
    raw = load_weights_file(saved)
    assert raw["schema"] == SCHEMA_VERSION == read_checkpoint(saved)["schema"]
    # written before the schema was recorded: read as the first version
    unversioned = tmp_path / "unversioned.pt"
    torch.save({k: v for k, v in raw.items() if k != "schema"}, unversioned)
    assert_same_predictions(reference, maskrcnn.load(str(unversioned)).model, image)
    # a made-up rename: a checkpoint of schema 1 whose config called solver.base_lr `solver.lr`
    config = json.loads(json.dumps(raw["config"]))
    config["solver"]["lr"] = config["solver"].pop("base_lr") * 3
    old = tmp_path / "old_schema.pt"
    torch.save({**raw, "config": config, "schema": 1}, old)
    unknown = f"^{old}: its config does not build a model here: unknown config key 'solver.lr'"
    with pytest.raises(UserError, match=unknown):
        maskrcnn.load(str(old))  # this package's schema 1 has no such key
    monkeypatch.setattr(schema_upgrade, "SCHEMA_VERSION", 2)
    step = (1, lambda d: rename_key(d, "solver.lr", "solver.base_lr"))  # 1 -> 2
    monkeypatch.setattr(schema_upgrade, "UPGRADES", (step,))
    loaded = maskrcnn.load(str(old)).model
    assert loaded.config.solver.base_lr == raw["config"]["solver"]["base_lr"] * 3
    assert_same_predictions(reference, loaded, image)
    newer = tmp_path / "newer.pt"
    torch.save({**raw, "schema": 3}, newer)
    with pytest.raises(UserError, match=f"^{newer}: its config has schema version 3, newer than"):
        maskrcnn.load(str(newer))
