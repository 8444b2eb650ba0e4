"""Overfitting one real image: the whole training path (targets, losses, sampler, optimizer) can
memorise the coco-2img train image (a motorcycle, two people and a bicycle), so that box and mask
AP measured by pycocotools on that same image reach 0.9. A bug anywhere in target encoding, loss
weighting or mask cropping keeps AP far below that."""

from __future__ import annotations

from maskrcnn.config import resolve
from maskrcnn.engine.train import train

OVERFIT = [
    # the image's own size (640x360). At 288 px (0.8 of it) the small person and the bicycle (36x48
    # and 31x35 px) reached mask IoUs of only 0.91-0.93, so that on a CPU whose rounding takes
    # training another way (AVX-512) one fell below 0.9 and mask AP to 0.867. At 360 px, with the
    # learning rate dropped at 270 of 400 iterations (see the schedule below), the motorcycle, the
    # small person and the bicycle reach 0.93-0.98 and the large person 0.92-0.95 (seeds 0, 1, 4):
    # mask AP 0.975-0.983, and AP stays >= 0.9 unless two instances fall below IoU 0.9. (300
    # iterations left single instances at 0.89 for some seeds: mask AP 0.900-0.983.)
    "model.input.min_size=[360]",
    "model.input.max_size=640",
    "model.backbone.norm=gn",  # batch 1: group norm, so training and evaluation normalise alike
    "model.anchors.sizes=[32,64,128,256,512]",
    "solver.ims_per_batch=1",
    "solver.optimizer=adamw",
    "solver.base_lr=0.001",
    "solver.weight_decay=0",
    "solver.warmup_iters=20",
    "data.hflip_prob=0",
    "data.num_workers=0",
    "train.checkpoint_period=0",
    "train.log_period=50",
    "model.roi_heads.mask_pool_size=28",  # 56x56 masks: the large person needs them for IoU > 0.9
]


def test_overfit_one_image_reaches_box_and_mask_ap_0_9(tmp_path, shared_data):
    root = shared_data / "coco-2img"
    spec = f"coco:{root / 'annotations/instances_train2017.json'}:{root / 'images/train2017'}"
    schedule = ["solver.max_iter=400", "solver.steps=[270]"]  # 130 iterations at lr/10 to settle
    result = train(
        resolve("shapes_demo", OVERFIT + schedule),
        train_data=spec,
        val_data=spec,
        out_dir=tmp_path,
        progress=False,
    )
    box_ap, mask_ap = result["metrics"]["bbox"]["AP"], result["metrics"]["segm"]["AP"]
    assert box_ap >= 0.9 and mask_ap >= 0.9, f"box AP {box_ap:.3f}, mask AP {mask_ap:.3f}"
