"""Image preprocessing: optionally reorder channels to BGR and scale to 0..255 (detectron2's
models), normalize, resize (shorter side to `min_size`, longer side <= `max_size`), zero-pad
into one (N, 3, Hp, Wp) batch with Hp, Wp multiples of `size_divisible`.

The resize factor is min(min_size / shorter, max_size / longer) and the output size
floor(side * factor), bilinear without corner alignment (torchvision's arithmetic, exactly); or,
with resize="detectron2", detectron2's ResizeShortestEdge sizes (rounded) and an antialiased
bilinear downscale (close to its PIL resize of uint8 images, not equal).
Targets are mapped into the resized frame: boxes scaled, masks resized with nearest neighbour.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.boxes import scale_boxes
from ..ops.keypoints import scale_keypoints
from ..structures import ImageBatch, Targets
from .traceable import spatial_size

RESIZE_RULES = ("torchvision", "detectron2")
# images of more pixels are normalized and resized one channel at a time, one float plane held at a
# time (12000 × 9000: 432 MB instead of 1.3 GB); the same values up to the last bit of the bilinear
# resize (which, at one thread, rounds a 1-channel image differently from a 3-channel one); uint8
# images under it are divided by 255 whole, the floats `pixels_to_tensor` gives

BY_CHANNEL_PIXELS = 1 << 24


def resized_shape(
    height: int, width: int, *, min_size: float, max_size: float, rule: str = "torchvision"
) -> tuple[int, int]:
    """The resized (h, w): torchvision's floor(side * factor), or detectron2's ResizeShortestEdge
    (shorter side to min_size, both scaled down if the longer exceeds max_size, rounded). With
    `height` and `width` 0-dim int64 tensors (traced sizes), torchvision's rule in float64 tensor
    arithmetic, as Python computes it, giving 0-dim int64 tensors."""
    if isinstance(height, Tensor) or isinstance(width, Tensor):
        if rule != "torchvision":
            raise ValueError(f"resize rule {rule!r} has no traced form; only torchvision's")
        h, w = torch.as_tensor(height).to(torch.float64), torch.as_tensor(width).to(torch.float64)
        low, high = h.new_full((), float(min_size)), h.new_full((), float(max_size))
        factor = torch.minimum(low / torch.minimum(h, w), high / torch.maximum(h, w))
        return torch.floor(h * factor).to(torch.int64), torch.floor(w * factor).to(torch.int64)
    if rule == "detectron2":
        scale = min_size * 1.0 / min(height, width)
        new_h, new_w = (min_size * 1.0, scale * width) if height < width else (scale * height, min_size * 1.0)
        if max(new_h, new_w) > max_size:
            scale = max_size * 1.0 / max(new_h, new_w)
            new_h, new_w = new_h * scale, new_w * scale
        return int(new_h + 0.5), int(new_w + 0.5)
    factor = min(min_size / min(height, width), max_size / max(height, width))
    return math.floor(float(height) * factor), math.floor(float(width) * factor)


def padded_shape(sizes: list[tuple[int, int]], divisor: int) -> tuple[int, int]:
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    return int(math.ceil(h / divisor) * divisor), int(math.ceil(w / divisor) * divisor)


class Preprocessor(nn.Module):
    def __init__(
        self,
        *,
        pixel_mean: tuple[float, float, float],
        pixel_std: tuple[float, float, float],
        min_size: tuple[int, ...],
        max_size: int,
        size_divisible: int = 32,
        channel_order: str = "rgb",
        pixel_scale: float = 1.0,
        resize: str = "torchvision",
    ):
        """channel_order "bgr" reverses the (RGB) channels and pixel_scale multiplies the [0, 1]
        image before normalising (detectron2's MSRA models: BGR in 0..255)."""
        super().__init__()
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"unknown channel order {channel_order!r}; choose rgb or bgr")
        self.channel_order = channel_order
        if resize not in RESIZE_RULES:
            raise ValueError(f"unknown resize rule {resize!r}; choose one of {RESIZE_RULES}")
        self.resize = resize
        self.pixel_scale = float(pixel_scale)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)
        self.min_size = tuple(min_size)
        self.max_size = max_size
        self.size_divisible = size_divisible
        self.memory_format = torch.contiguous_format  # of the padded batch; see MaskRCNN.set_channels_last

    def _choose_min_size(self) -> int:
        if not self.training:
            return self.min_size[-1]
        # a torch-RNG choice (one draw per image, as torchvision) so that seeds reproduce runs
        index = int(torch.empty(1).uniform_(0.0, float(len(self.min_size))).item())
        return self.min_size[index]

    def forward(
        self, images: list[Tensor], targets: list[Targets] | None = None
    ) -> tuple[ImageBatch, list[Targets] | None]:
        resized, new_targets, sizes, originals = [], [], [], []
        for i, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(
                    f"image {i}: expected a (3, H, W) float tensor, got shape {tuple(image.shape)}"
                )
            if not image.is_floating_point() and image.dtype != torch.uint8:
                raise TypeError(f"image {i}: expected a float tensor in [0, 1] or uint8, got {image.dtype}")
            h, w = image.shape[-2:]
            originals.append((int(h), int(w)))
            image, size = self.resize_image(image, self._choose_min_size())
            resized.append(image[0])
            sizes.append(size)
            if targets is not None:
                new_targets.append(self._resize_targets(Targets.from_any(targets[i]), (h, w), size))
        batch = ImageBatch(tensor=self.pad(resized), image_sizes=sizes, original_sizes=originals)
        return batch, (new_targets if targets is not None else None)

    def normalize(self, image: Tensor) -> Tensor:
        """(3, H, W) RGB in [0, 1] -> the network's input values: channels reordered and scaled as
        configured, then (x - mean) / std. Eager inference and the exported graph both call it."""
        if self.channel_order == "bgr":
            image = image.flip(0)
        if self.pixel_scale != 1.0:
            image = image * self.pixel_scale
        return (image - self.pixel_mean.to(image.dtype)) / self.pixel_std.to(image.dtype)

    def resize_image(self, image: Tensor, min_size: int | None = None) -> tuple[Tensor, tuple]:
        """(3, H, W) RGB in [0, 1] -> the normalized, resized (1, 3, h, w) image and its (h, w) (at
        inference's size unless `min_size` is given). Trace-safe with the torchvision rule: (h, w)
        are then 0-dim tensors."""
        height, width = spatial_size(image)
        size = self.output_size(height, width, min_size)
        antialias = self.resize == "detectron2" and (size[0] < height or size[1] < width)
        if not torch.jit.is_tracing() and image.shape[-2] * image.shape[-1] > BY_CHANNEL_PIXELS:
            planes = [
                F.interpolate(
                    self._normalized_channel(image, k)[None],
                    size=size,
                    mode="bilinear",
                    align_corners=False,
                    antialias=antialias,
                )
                for k in range(3)
            ]
            return torch.cat(planes, dim=1), size
        if image.dtype == torch.uint8:  # what pixels_to_tensor gives: the same floats
            image = image.float().div_(255.0)
        image = self.normalize(image)
        image = F.interpolate(
            image[None], size=size, mode="bilinear", align_corners=False, antialias=antialias
        )
        return image, size

    def _normalized_channel(self, image: Tensor, k: int) -> Tensor:
        """Output channel k of `normalize(image)` as (1, H, W), from one input channel (uint8 ones
        divided by 255 here): the same values, one float plane at a time."""
        plane = image[2 - k if self.channel_order == "bgr" else k][None]
        plane = plane.float().div_(255.0) if plane.dtype == torch.uint8 else plane.clone()
        if self.pixel_scale != 1.0:
            plane.mul_(self.pixel_scale)
        return plane.sub_(self.pixel_mean[k].to(plane.dtype)).div_(self.pixel_std[k].to(plane.dtype))

    def pad_one(self, image: Tensor) -> Tensor:
        """One (1, 3, h, w) resized image -> (1, 3, Hp, Wp) zero-padded to multiples of
        `size_divisible` (what `pad` gives for a batch of one); trace-safe."""
        h, w = spatial_size(image)
        d = self.size_divisible
        return F.pad(image, (0, (w + d - 1) // d * d - w, 0, (h + d - 1) // d * d - h))

    def output_size(self, height: int, width: int, min_size: int | None = None) -> tuple[int, int]:
        """The resized size of an image (at inference's size unless `min_size` is given)."""
        min_size = self.min_size[-1] if min_size is None else min_size
        return resized_shape(height, width, min_size=min_size, max_size=self.max_size, rule=self.resize)

    def pad(self, images: list[Tensor]) -> Tensor:
        ph, pw = padded_shape([tuple(im.shape[-2:]) for im in images], self.size_divisible)
        shape = (len(images), images[0].shape[0], ph, pw)
        out = torch.empty(
            shape, dtype=images[0].dtype, device=images[0].device, memory_format=self.memory_format
        ).zero_()
        for i, im in enumerate(images):
            out[i, :, : im.shape[1], : im.shape[2]].copy_(im)
        return out

    @staticmethod
    def _resize_targets(t: Targets, old: tuple[int, int], new: tuple[int, int]) -> Targets:
        boxes = scale_boxes(t.boxes.to(torch.float32), old, new)
        masks = t.masks
        if masks is not None and masks.shape[0] == 0:
            masks = torch.zeros((0, *new), dtype=torch.uint8, device=masks.device)
        elif masks is not None:
            masks = F.interpolate(masks[:, None].float(), size=new, mode="nearest")[:, 0].to(torch.uint8)
        keypoints = None if t.keypoints is None else scale_keypoints(t.keypoints.to(torch.float32), old, new)
        return dataclasses.replace(
            t, boxes=boxes, labels=t.labels.to(torch.int64), masks=masks, keypoints=keypoints
        )
