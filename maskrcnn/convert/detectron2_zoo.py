"""detectron2's model zoo (its MODEL_ZOO.md): the R-CNN checkpoints with a ResNet / ResNeXt FPN
backbone that `convert.detectron2` reads, with their download paths and published COCO val2017 AP.

The file names end in the md5 prefix of the file (MODEL_ZOO.md: "any model on this page contains
its md5 prefix in its file name"), which `maskrcnn.weights` checks after a download. The settings
their weights cannot tell, as config overrides: the training sizes (MIN_SIZE_TRAIN 640..800; the
last is the test size) and, for keypoint models, Base-Keypoint-RCNN-FPN.yaml's training settings.
"""

from __future__ import annotations

ZOO_BASE = "https://dl.fbaipublicfiles.com/detectron2/"

_TRAIN_SIZES = ("model.input.min_size=[640,672,704,736,768,800]",)
_KEYPOINT = (
    *_TRAIN_SIZES,
    "model.rpn.post_nms_topk_train=1500",
    "model.roi_heads.box_loss=smooth_l1",
    "model.roi_heads.smooth_l1_beta=0.5",
)
_MASK_DIR = "COCO-InstanceSegmentation/mask_rcnn_"
_KEYPOINT_DIR = "COCO-Keypoints/keypoint_rcnn_"

# (registry name, path under ZOO_BASE, published AP, config overrides)
ZOO: list[tuple[str, str, dict[str, float], tuple[str, ...]]] = [
    (
        "detectron2_mask_rcnn_R_50_FPN_1x",
        _MASK_DIR + "R_50_FPN_1x/137260431/model_final_a54504.pkl",
        {"box_map": 38.6, "mask_map": 35.2},
        _TRAIN_SIZES,
    ),
    (
        "detectron2_mask_rcnn_R_50_FPN_3x",
        _MASK_DIR + "R_50_FPN_3x/137849600/model_final_f10217.pkl",
        {"box_map": 41.0, "mask_map": 37.2},
        _TRAIN_SIZES,
    ),
    (
        "detectron2_mask_rcnn_R_101_FPN_3x",
        _MASK_DIR + "R_101_FPN_3x/138205316/model_final_a3ec72.pkl",
        {"box_map": 42.9, "mask_map": 38.6},
        _TRAIN_SIZES,
    ),
    (
        "detectron2_mask_rcnn_X_101_32x8d_FPN_3x",
        _MASK_DIR + "X_101_32x8d_FPN_3x/139653917/model_final_2d9806.pkl",
        {"box_map": 44.3, "mask_map": 39.5},
        _TRAIN_SIZES,
    ),
    (
        "detectron2_keypoint_rcnn_R_50_FPN_1x",
        _KEYPOINT_DIR + "R_50_FPN_1x/137261548/model_final_04e291.pkl",
        {"box_map": 53.6, "kp_map": 64.0},
        _KEYPOINT,
    ),
    (
        "detectron2_keypoint_rcnn_R_50_FPN_3x",
        _KEYPOINT_DIR + "R_50_FPN_3x/137849621/model_final_a6e10b.pkl",
        {"box_map": 55.4, "kp_map": 65.5},
        _KEYPOINT,
    ),
    (
        "detectron2_keypoint_rcnn_R_101_FPN_3x",
        _KEYPOINT_DIR + "R_101_FPN_3x/138363331/model_final_997cc7.pkl",
        {"box_map": 56.4, "kp_map": 66.1},
        _KEYPOINT,
    ),
    (
        "detectron2_keypoint_rcnn_X_101_32x8d_FPN_3x",
        _KEYPOINT_DIR + "X_101_32x8d_FPN_3x/139686956/model_final_5ad38f.pkl",
        {"box_map": 57.3, "kp_map": 66.0},
        _KEYPOINT,
    ),
]
