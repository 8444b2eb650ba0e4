"""MaskFolderDataset on the real nuclei data and on small hand-made folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.data import MaskFolderDataset, masks_to_boxes


@pytest.mark.parametrize("split, images, instances", [("train", 12, 518), ("test", 3, 181)])
def test_nuclei_counts(shared_data: Path, split: str, images: int, instances: int) -> None:
    ds = MaskFolderDataset(shared_data / "nuclei" / split, class_name="nucleus")
    assert len(ds) == images and ds.class_names == ["nucleus"]
    assert sum(ds.num_annotations(i) for i in range(len(ds))) == instances
    # No mask is empty after thresholding at > 127, so every mask file is an instance.
    assert sum(len(ds.load_targets(i)[0]) for i in range(len(ds))) == instances


def test_nuclei_rgba_image_and_antialiased_masks(shared_data: Path) -> None:
    root = shared_data / "nuclei" / "test"
    ds = MaskFolderDataset(root)
    names = [Path(ds.file_name(i)).parts[0] for i in range(len(ds))]

    rgba_name = "1ec74a26e772966df764e063f1391109a60d803cff9d15680093641ed691bf72"
    with Image.open(root / rgba_name / "images" / f"{rgba_name}.png") as im:
        assert im.mode == "RGBA"
        rgb = np.asarray(im)[..., :3]
    s = ds[names.index(rgba_name)]
    assert s.image.shape == (3, *rgb.shape[:2]) and s.image.dtype == torch.float32
    np.testing.assert_array_equal((s.image * 255).round().byte().permute(1, 2, 0).numpy(), rgb)
    assert len(s.targets) == 26

    # gnf_dna-35's 19 masks are anti-aliased (grey edge pixels); instances are the > 127 pixels.
    s = ds[names.index("gnf_dna-35")]
    files = sorted((root / "gnf_dna-35" / "masks").glob("*.png"))
    assert len(s.targets) == len(files) == 19
    for k, f in enumerate(files):
        raw = np.asarray(Image.open(f))
        assert len(np.unique(raw)) > 2
        np.testing.assert_array_equal(s.targets.masks[k].numpy(), raw > 127)
    assert torch.equal(s.targets.boxes, masks_to_boxes(s.targets.masks))


def _folder(root: Path, name: str, image: Image.Image, masks: list[np.ndarray]) -> None:
    (root / name / "images").mkdir(parents=True)
    (root / name / "masks").mkdir()
    image.save(root / name / "images" / f"{name}.png")
    for k, m in enumerate(masks):
        Image.fromarray(m).save(root / name / "masks" / f"m{k}.png")


def test_rgba_gray_threshold_and_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, size=(6, 7, 4), dtype=np.uint8)
    anti = np.zeros((6, 7), np.uint8)
    anti[1, 1:5] = [100, 127, 128, 255]  # only the last two are > 127
    _folder(tmp_path, "a", Image.fromarray(rgba, "RGBA"), [anti, np.zeros((6, 7), np.uint8)])
    gray = rng.integers(0, 256, size=(5, 4), dtype=np.uint8)
    _folder(tmp_path, "b", Image.fromarray(gray, "L"), [])

    ds = MaskFolderDataset(tmp_path)
    a, b = ds[0], ds[1]
    # Alpha is dropped, not composited: RGB values survive unchanged.
    np.testing.assert_array_equal((a.image * 255).round().byte().permute(1, 2, 0).numpy(), rgba[..., :3])
    assert len(a.targets) == 1  # the all-zero mask is dropped
    assert a.targets.boxes.tolist() == [[3, 1, 5, 2]] and int(a.targets.masks.sum()) == 2
    assert b.image.shape == (3, 5, 4) and torch.equal(b.image[0], b.image[2])
    np.testing.assert_array_equal((b.image[1] * 255).round().byte().numpy(), gray)
    assert b.targets.masks.shape == (0, 5, 4)

    _folder(tmp_path, "c", Image.fromarray(gray, "L"), [np.zeros((3, 3), np.uint8)])
    with pytest.raises(ValueError, match=r"m0\.png is 3x3 but its image \(id 2\) is 5x4"):
        MaskFolderDataset(tmp_path).load_targets(2)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        MaskFolderDataset(tmp_path / "nowhere")
