"""`maskrcnn.files`: the one image decoder under its two policies (datasets read the stored pixel
grid, prediction reads the image as displayed), and the one atomic writer."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.data import MaskFolderDataset
from maskrcnn.engine.checkpoint import atomic_save
from maskrcnn.files import (
    AS_DISPLAYED,
    STORED_PIXELS,
    DecodePolicy,
    ImageReadError,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    read_image,
    read_pixels,
    remove_partial_writes,
)
from maskrcnn.inputs import load_image
from tests.helpers import small_photo


@pytest.fixture(scope="module")
def photo(shared_data: Path) -> np.ndarray:
    """A real photo, small and non-square (48 wide, 32 high) so that a rotation shows in the shape."""
    return small_photo(shared_data, (48, 32))


def _rotated_rgba_png(photo: np.ndarray, path: Path) -> np.ndarray:
    """Save `photo` as an RGBA PNG whose left half is fully transparent, stored rotated by 90 degrees
    with EXIF orientation 6 (a viewer turns it back upright); returns the stored (H, W, 4) pixels."""
    rgba = np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)])
    rgba[:, : photo.shape[1] // 2, 3] = 0
    stored = Image.fromarray(rgba).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, exif=exif.tobytes())
    return np.asarray(stored)


def test_the_two_policies_on_one_file(photo, tmp_path):
    path = tmp_path / "turned.png"
    stored = _rotated_rgba_png(photo, path)
    assert stored.shape == (48, 32, 4)
    # datasets: the stored grid, alpha dropped (the colour under transparent pixels is kept)
    kept = read_pixels(path, policy=STORED_PIXELS)
    assert kept.dtype == np.uint8 and np.array_equal(kept, stored[..., :3])
    # prediction: upright again, transparent half white, opaque half the photo itself
    shown = read_pixels(path, policy=AS_DISPLAYED)
    assert shown.shape == (32, 48, 3)
    assert (shown[:, :24] == 255).all() and np.array_equal(shown[:, 24:], photo[:, 24:])
    # the tensors are exactly uint8 / 255; inputs.load_image is the AS_DISPLAYED policy
    assert torch.equal(read_image(path, policy=STORED_PIXELS), torch.from_numpy(kept).permute(2, 0, 1) / 255)
    assert torch.equal(load_image(path), read_image(path, policy=AS_DISPLAYED))
    # a policy mixing the two: EXIF applied, alpha dropped
    upright = read_pixels(path, policy=DecodePolicy(apply_exif=True, alpha="drop"))
    assert np.array_equal(upright, photo)
    with pytest.raises(ValueError, match="'drop' or 'white'"):
        DecodePolicy(apply_exif=False, alpha="black")  # type: ignore[arg-type]


def test_a_dataset_reads_the_stored_grid_its_masks_refer_to(photo, tmp_path):
    """A mask-folder dataset whose image carries an EXIF rotation: the image stays in the stored
    grid (as its masks are), so the two line up; prediction would see it upright."""
    item = tmp_path / "data" / "a"
    (item / "images").mkdir(parents=True)
    (item / "masks").mkdir()
    stored = _rotated_rgba_png(photo, item / "images" / "a.png")
    mask = np.zeros(stored.shape[:2], np.uint8)
    mask[5:20, 3:9] = 255
    Image.fromarray(mask).save(item / "masks" / "m.png")
    sample = MaskFolderDataset(tmp_path / "data")[0]
    assert sample.image.shape == (3, 48, 32) and sample.targets.masks.shape == (1, 48, 32)
    assert torch.equal(sample.image, torch.from_numpy(stored[..., :3].copy()).permute(2, 0, 1) / 255)
    assert sample.targets.boxes.tolist() == [[3.0, 5.0, 9.0, 20.0]]
    assert load_image(item / "images" / "a.png").shape == (3, 32, 48)


def test_sixteen_bit_and_gray_rules_are_shared(tmp_path):
    ramp = (np.arange(12 * 16, dtype=np.uint16).reshape(12, 16) * 300).astype(np.uint16)  # up to 57300
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    for policy in (STORED_PIXELS, AS_DISPLAYED):
        image = read_image(tmp_path / "deep.png", policy=policy)
        assert image.shape == (3, 12, 16)
        assert torch.allclose(image[1], torch.from_numpy(ramp.astype(np.float32) / 65535))
        assert torch.equal(image[0], image[2])


def test_unreadable_files_name_the_file_under_both_policies(tmp_path):
    (tmp_path / "notes.jpg").write_text("not an image")
    for policy in (STORED_PIXELS, AS_DISPLAYED):
        with pytest.raises(ImageReadError, match=r"notes\.jpg: not an image file"):
            read_image(tmp_path / "notes.jpg", policy=policy)
        with pytest.raises(ImageReadError, match=r"absent\.png: file not found"):
            read_image(tmp_path / "absent.png", policy=policy)
    assert issubclass(ImageReadError, ValueError)


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "report.json"
    atomic_write_json(path, {"version": 1})

    def half_then_fail(f):
        f.write(b'{"version": 2, "tru')  # a partial write reaches the temporary file...
        raise OSError("disk full")  # ...then the writer fails

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_then_fail)
    assert json.loads(path.read_text()) == {"version": 1} and _files(tmp_path) == ["report.json"]
    # an object JSON cannot encode fails before the file is touched
    with pytest.raises(TypeError):
        atomic_write_json(path, {"version": object()})
    assert json.loads(path.read_text()) == {"version": 1} and _files(tmp_path) == ["report.json"]
    # a torch.save that fails half-way (an unpicklable object after a large tensor)
    atomic_save({"weights": torch.arange(4)}, tmp_path / "model.pt")
    with pytest.raises(Exception, match="pickle"):
        atomic_save({"weights": torch.zeros(100_000), "bad": lambda: None}, tmp_path / "model.pt")
    assert torch.equal(torch.load(tmp_path / "model.pt")["weights"], torch.arange(4))
    assert _files(tmp_path) == ["model.pt", "report.json"]


def test_the_temporary_file_of_a_write_killed_midway_is_removed_by_remove_partial_writes(tmp_path):
    path = tmp_path / "checkpoint.pt"
    atomic_write_text(path, "old")
    killed_midway = (
        "import os, signal\n"
        "from maskrcnn.files import atomic_write\n"
        "def half(f):\n"
        "    f.write(b'new, half of it')\n"
        "    f.flush()\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        f"atomic_write({str(path)!r}, half)\n"
    )
    assert subprocess.run([sys.executable, "-c", killed_midway], timeout=120).returncode == -signal.SIGKILL
    (left,) = [name for name in _files(tmp_path) if name != "checkpoint.pt"]  # nothing could clean up
    assert left.startswith(".checkpoint.pt.") and left.endswith(".tmp")
    assert path.read_text() == "old"  # the old file is whole
    (tmp_path / ".checkpoint.pt.keep").write_text("not a temporary file")
    (tmp_path / ".model.pt.x1.tmp").write_text("another file's")
    assert [p.name for p in remove_partial_writes(path)] == [left]
    assert _files(tmp_path) == [".checkpoint.pt.keep", ".model.pt.x1.tmp", "checkpoint.pt"]
    assert remove_partial_writes(tmp_path / "missing" / "checkpoint.pt") == []


def test_written_files_get_the_umask_mode_and_missing_folders(tmp_path):
    old = os.umask(0o027)
    try:
        path = atomic_write_text(tmp_path / "new" / "deeper" / "table.txt", "AP 0.5\n")
    finally:
        os.umask(old)
    assert path.read_text() == "AP 0.5\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # 0o666 less the umask, not mkstemp's 0o600
    atomic_write(path, lambda f: f.write("ünïcode\n".encode()))  # replacing an existing file
    assert path.read_text(encoding="utf-8") == "ünïcode\n" and _files(path.parent) == ["table.txt"]
