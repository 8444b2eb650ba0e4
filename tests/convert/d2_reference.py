"""Helpers for the detectron2 parity tests: detectron2's own models (from its source in
../shared/detectron2, put on sys.path here) with seeded weights made decisive, saved as its
checkpointer and its model zoo save them (`Built`: those files and our model converted from them),
and images at the test size in both models' formats."""

from __future__ import annotations

import io
import json
import pickle
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from maskrcnn.checkpoints import model_from_checkpoint
from maskrcnn.convert.detectron2 import from_detectron2
from tests.helpers import SHARED_DATA

D2_ROOT = SHARED_DATA.parent / "detectron2"
CONFIGS = D2_ROOT / "configs"


def import_detectron2():
    """detectron2's modules (from the shared source tree, not installed)."""
    if str(D2_ROOT) not in sys.path:
        sys.path.insert(0, str(D2_ROOT))
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    return get_cfg, build_model


def d2_config(config: str, *, min_size: int, max_size: int, **changes):
    """detectron2's CfgNode for `config` (relative to its configs/), on the CPU, at a test size."""
    get_cfg, _ = import_detectron2()
    cfg = get_cfg()
    cfg.merge_from_file(str(CONFIGS / config))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.INPUT.MIN_SIZE_TEST = min_size
    cfg.INPUT.MAX_SIZE_TEST = max_size
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = getattr(node, p)
        setattr(node, last, value)
    return cfg


def d2_model(cfg, seed: int = 0) -> torch.nn.Module:
    """detectron2's model for `cfg` with its own random init (seeded), then made decisive: random
    FrozenBN statistics, damped residual branches (bounded activations through the deep trunk) and
    sharper classifier / objectness layers, so that the random model detects many things with
    distinct scores (not saturated at 1.0)."""
    _, build_model = import_detectron2()
    torch.manual_seed(seed)
    model = build_model(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, module in model.named_modules():
            if type(module).__name__ == "FrozenBatchNorm2d":
                c = module.running_mean.shape[0]
                module.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
                module.weight.copy_(torch.rand(c, generator=gen) * 0.5 + 0.5)
                module.bias.copy_(torch.randn(c, generator=gen) * 0.1)
                if name.endswith(("conv3.norm", "conv2.norm")) and ".res" in name:
                    module.weight.mul_(0.3)
        if max(cfg.MODEL.PIXEL_STD) == 1.0:
            # MSRA-style inputs in 0..255 (std 1): the stem scaled as if the std were ImageNet's, so that
            # activations (and scores) stay in the same range as for the ResNeXt's normalised inputs
            # instead of saturating (every score 1.0 would make the score comparison vacuous)
            model.backbone.bottom_up.stem.conv1.weight.div_(58.0)
        heads = model.roi_heads
        heads.box_predictor.cls_score.weight.mul_(40.0)
        heads.box_predictor.bbox_pred.weight.mul_(5.0)
        model.proposal_generator.rpn_head.objectness_logits.weight.mul_(10.0)
    return model.eval()


def save_pth(model, path: Path) -> Path:
    """As detectron2's DetectionCheckpointer.save: torch.save({"model": state dict, ...})."""
    torch.save({"model": model.state_dict(), "iteration": 0}, path)
    return path


def save_pkl(model, path: Path) -> Path:
    """As the model zoo's model_final_*.pkl: a pickle of numpy arrays."""
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    with open(path, "wb") as f:
        pickle.dump({"model": arrays, "__author__": "tests", "matching_heuristics": True}, f)
    return path


# smaller proposal and detection counts than the zoo's (1000 / 1000 / 100) keep CI fast on 2 cores
# (the mask and keypoint heads' cost grows with the detections: 20 masks, 6 keypoint sets per image)
SMALL = {
    "MODEL.RPN.PRE_NMS_TOPK_TEST": 500,
    "MODEL.RPN.POST_NMS_TOPK_TEST": 300,
    "TEST.DETECTIONS_PER_IMAGE": 20,
}
KEYPOINT_SMALL = {**SMALL, "TEST.DETECTIONS_PER_IMAGE": 6}


class Built:
    """detectron2's model, its files, and ours converted from the .pth with its dumped config."""

    def __init__(self, tmp_path, config: str, *, min_size: int, max_size: int, seed: int = 0, **changes):
        self.config, self.min_size, self.max_size = config, min_size, max_size
        self.d2_cfg = d2_config(config, min_size=min_size, max_size=max_size, **changes)
        self.d2 = d2_model(self.d2_cfg, seed=seed)
        stem = config.split("/")[-1].replace(".yaml", "")
        self.pth = save_pth(self.d2, tmp_path / f"{stem}.pth")
        self.pkl = save_pkl(self.d2, tmp_path / f"{stem}.pkl")
        self.yaml = tmp_path / f"{stem}.config.yaml"  # what detectron2 writes as OUTPUT_DIR/config.yaml
        self.yaml.write_text(self.d2_cfg.dump())
        obj = torch.load(self.pth, map_location="cpu", weights_only=True)
        self.ckpt = from_detectron2(obj, d2_config=self.yaml, source=str(self.pth))
        self.ours = model_from_checkpoint(self.ckpt)


class _PlainUnpickler(pickle.Unpickler):
    """Only numpy's array reconstruction (and builtins containers): what a zoo .pkl needs."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refused {module}.{name}")
        return super().find_class(module, name)


def read_pkl(path: Path):
    """A zoo-style .pkl read with a restricted unpickler (tests only; the package has its own)."""
    return _PlainUnpickler(io.BytesIO(Path(path).read_bytes())).load()


def coco_mini_val(count: int, *, offset: int = 0) -> list[Path]:
    ann = json.loads((SHARED_DATA / "coco-mini/annotations/instances_val2017.json").read_text())
    names = sorted(im["file_name"] for im in ann["images"])[offset : offset + count]
    return [SHARED_DATA / "coco-mini/val2017" / n for n in names]


def image_at_size(path: Path, *, min_size: int, max_size: int) -> torch.Tensor:
    """An RGB image resized as detectron2's ResizeShortestEdge would (shorter side `min_size`, longer
    at most `max_size`), rounded to 0..255 integers: (3, H, W) float32."""
    from maskrcnn.predict import load_image

    image = load_image(path)  # (3, H, W) RGB in [0, 1]
    h, w = image.shape[-2:]
    scale = min(min_size / min(h, w), max_size / max(h, w))
    size = (int(h * scale + 0.5), int(w * scale + 0.5))
    resized = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
    return (resized * 255).round().clamp(0, 255)


def run_d2(model, rgb255: torch.Tensor):
    """detectron2's instances for one RGB 0..255 image already at the test size (fed as BGR)."""
    h, w = rgb255.shape[-2:]
    with torch.no_grad():
        return model([{"image": rgb255.flip(0), "height": h, "width": w}])[0]["instances"]


def run_ours(model, rgb255: torch.Tensor):
    """Our detections for the same image (RGB in [0, 1]); min/max size make our resize the identity."""
    h, w = rgb255.shape[-2:]
    p = model.preprocessor
    p.min_size, p.max_size = (min(h, w),), max(h, w)
    return model.predict([rgb255 / 255.0])[0]
