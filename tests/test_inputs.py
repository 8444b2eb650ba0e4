"""Images as people have them: every common file kind and pixel mode loads upright as 3-channel RGB;
in-memory images (PIL, numpy) are coerced the same way; inputs are found in folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn.inputs import (
    ImageReadError,
    as_image_tensor,
    as_rgb_uint8,
    collect_inputs,
    load_image,
    read_rgb,
)
from tests.helpers import PHOTO, small_photo


@pytest.fixture(scope="module")
def photo(shared_data: Path) -> np.ndarray:
    """A real photo, made small and non-square (96 wide, 64 high) so rotations show in the shape."""
    return small_photo(shared_data, (96, 64))


def _gray(rgb: np.ndarray) -> np.ndarray:
    return np.array(Image.fromarray(rgb).convert("L"))


@pytest.mark.parametrize(
    "orientation, stored",
    # EXIF orientation -> how the upright image is stored (the viewer undoes it)
    [(3, Image.Transpose.ROTATE_180), (6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270)],
)
def test_jpeg_exif_orientation_is_applied(photo, tmp_path, orientation, stored):
    path = tmp_path / f"o{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(photo).transpose(stored).save(path, exif=exif.tobytes(), quality=95)
    with Image.open(path) as raw:  # stored sideways (or upside down), as a camera writes it
        assert raw.getexif()[0x0112] == orientation
    image = load_image(path)
    assert image.shape == (3, 64, 96) and image.dtype == torch.float32
    loaded = read_rgb(path).astype(int)
    assert loaded.shape == (64, 96, 3)
    error = np.abs(loaded - photo).mean()
    assert error < 4, error  # JPEG noise only
    assert error < np.abs(loaded - photo[::-1, ::-1]).mean() / 4  # and not upside down


def test_lossless_formats_load_exactly(photo, tmp_path):
    for suffix, options in [(".png", {}), (".bmp", {}), (".tif", {}), (".webp", {"lossless": True})]:
        path = tmp_path / f"photo{suffix}"
        Image.fromarray(photo).save(path, **options)
        assert np.array_equal(read_rgb(path), photo), suffix
        assert torch.equal(load_image(path), torch.from_numpy(photo).permute(2, 0, 1).float() / 255)


def test_grayscale_and_16_bit_scale_to_8_bit(photo, tmp_path):
    gray = _gray(photo)
    Image.fromarray(gray).save(tmp_path / "gray.png")
    loaded = read_rgb(tmp_path / "gray.png")
    assert loaded.shape == (64, 96, 3) and all(np.array_equal(loaded[..., c], gray) for c in range(3))
    # 16-bit: v * 257 spans 0..65535; it must come back as v, not clipped to 255
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "gray16.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "gray16.tif")
    for name in ("gray16.png", "gray16.tif"):
        with Image.open(tmp_path / name) as im:
            assert im.mode == "I;16"
        assert 50 < gray.mean() < 200 and np.array_equal(read_rgb(tmp_path / name)[..., 1], gray), name
        tensor = load_image(tmp_path / name)
        assert tensor.shape == (3, 64, 96)
        assert torch.allclose(tensor[0], torch.from_numpy(gray).float() / 255, atol=1e-6)


def test_transparency_is_composited_on_white(photo, tmp_path):
    alpha = np.full((64, 96), 255, dtype=np.uint8)
    alpha[:, :32], alpha[:, 32:48] = 0, 128  # transparent, half transparent, opaque
    rgba = np.dstack([photo, alpha])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    loaded = read_rgb(tmp_path / "rgba.png").astype(int)
    assert loaded.shape == (64, 96, 3)
    assert (loaded[:, :32] == 255).all()
    assert np.array_equal(loaded[:, 48:], photo[:, 48:])
    half = (photo[:, 32:48].astype(int) * 128 + 255 * 127 + 127) // 255
    assert np.array_equal(loaded[:, 32:48], half)
    # LA: gray with alpha
    Image.fromarray(np.dstack([_gray(photo), alpha]), "LA").save(tmp_path / "la.png")
    la = read_rgb(tmp_path / "la.png")
    assert (la[:, :32] == 255).all() and np.array_equal(la[:, 48:, 0], _gray(photo)[:, 48:])
    # a palette image with a transparent index
    palette = Image.fromarray(photo).quantize(16)
    index = np.asarray(palette)
    palette.save(tmp_path / "p.png", transparency=int(index[0, 0]))
    with Image.open(tmp_path / "p.png") as im:
        assert im.mode == "P" and "transparency" in im.info
    p = read_rgb(tmp_path / "p.png")
    clear = index == index[0, 0]
    colors = np.asarray(palette.convert("RGB"))
    assert p.shape == (64, 96, 3) and (p[clear] == 255).all() and np.array_equal(p[~clear], colors[~clear])


def test_unreadable_files_name_the_file_and_the_reason(shared_data, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not a picture\n")
    truncated = tmp_path / "cut.jpg"
    data = (shared_data / PHOTO).read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageReadError, match=r"notes\.jpg: not an image file"):
        load_image(text)
    with pytest.raises(ImageReadError, match=r"cut\.jpg: truncated image data"):
        load_image(truncated)
    with pytest.raises(ImageReadError, match="file not found"):
        load_image(tmp_path / "absent.png")


def test_in_memory_images_are_coerced(photo):
    expected = torch.from_numpy(photo).permute(2, 0, 1).float() / 255
    tensor = torch.rand(3, 5, 7)
    assert as_image_tensor(tensor) is tensor  # tensors pass untouched
    assert torch.equal(as_image_tensor(photo), expected)
    assert torch.equal(as_image_tensor(Image.fromarray(photo)), expected)
    assert torch.equal(as_image_tensor(photo.astype(np.float32) / 255), expected)
    gray = _gray(photo)
    assert torch.equal(as_image_tensor(gray), torch.from_numpy(gray).float().div(255).expand(3, -1, -1))
    assert torch.equal(as_image_tensor(gray[..., None]), as_image_tensor(gray))
    assert np.array_equal(as_rgb_uint8(gray.astype(np.uint16) * 257), np.dstack([gray] * 3))
    rgba = np.dstack([photo, np.zeros((64, 96), np.uint8)])
    assert (as_rgb_uint8(rgba) == 255).all()
    with pytest.raises(
        ValueError, match=rf"values must be in \[0, 1\], found \[{photo.min()}, {photo.max()}\]"
    ):
        as_image_tensor(photo.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W\), \(H, W, 3\) or \(H, W, 4\)"):
        as_image_tensor(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(TypeError, match="got list"):
        as_image_tensor([[0, 1]])


def test_collect_inputs_finds_images_and_videos(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for name in ("b.JPG", "a.png", "sub/c.webp", "notes.txt", "sub/clip.mp4"):
        (folder / name).write_bytes(b"x")
    single = tmp_path / "single.jpg"
    single.write_bytes(b"x")
    items, problems = collect_inputs([str(folder), str(single), str(folder / "a.png")])
    assert [(i.name, i.kind) for i in items] == [
        ("a.png", "image"),
        ("b.JPG", "image"),
        ("sub/c.webp", "image"),
        ("single.jpg", "image"),
    ]
    assert problems == []
    items, _ = collect_inputs([folder], glob="*.mp4")
    assert [(i.name, i.kind) for i in items] == [("sub/clip.mp4", "video")]
    items, problems = collect_inputs([folder], glob="*.gif")
    assert items == [] and problems == [(str(folder), "folder has no files matching '*.gif'")]
    with pytest.raises(FileNotFoundError, match="input not found: .*nowhere"):
        collect_inputs([single, tmp_path / "nowhere"])
