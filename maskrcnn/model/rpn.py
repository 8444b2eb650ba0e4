"""Region Proposal Network (Faster R-CNN §3.1) over the FPN levels P2..P6.

Shapes: N images, A anchors per location, L levels, A_l = H_l * W_l * A anchors on level l,
A_all = sum_l A_l.

head:      [P_l (N, D, H_l, W_l)] -> objectness [(N, A, H_l, W_l)], deltas [(N, 4A, H_l, W_l)]
proposals: per level, the top `pre_nms_topk` anchors by objectness are decoded, clipped,
           filtered by size and score; NMS runs per level (batched); the best `post_nms_topk`
           per image remain (torchvision's rule; Detectron's training-time rule is per batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..ops.box_coder import BoxCoder
from ..ops.boxes import clip_boxes, nonempty_boxes
from ..ops.nms import batched_nms
from ..structures import Proposals, Targets
from .anchors import AnchorGenerator
from .losses import rpn_loss
from .matcher import Matcher, match_labels
from .sampler import BalancedSampler


@dataclass
class Candidates:
    """The boxes of one image that enter the RPN's NMS (T of them)."""

    boxes: Tensor  # (T, 4) in resized-image pixels
    scores: Tensor  # (T,) objectness probabilities
    levels: Tensor  # (T,) index of the FPN level each comes from


class RPNHead(nn.Module):
    """`num_convs` shared 3×3 convs + ReLU, then 1×1 convs for objectness (A) and deltas (4A)."""

    def __init__(self, *, in_channels: int, num_anchors: int, num_convs: int = 1):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, in_channels, 3, padding=1) for _ in range(num_convs)
        )
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.deltas = nn.Conv2d(in_channels, num_anchors * 4, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        objectness, deltas = [], []
        for x in features:
            for conv in self.convs:
                x = torch.relu(conv(x))
            objectness.append(self.objectness(x))
            deltas.append(self.deltas(x))
        return objectness, deltas


def flatten_predictions(objectness: list[Tensor], deltas: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Per-level head outputs -> objectness (N, A_all) and deltas (N, A_all, 4), anchor order."""
    flat_obj, flat_deltas = [], []
    for obj, dl in zip(objectness, deltas):
        n, a, h, w = obj.shape
        # (N, A, H, W) -> (N, H, W, A) -> (N, H*W*A)
        flat_obj.append(obj.permute(0, 2, 3, 1).reshape(n, -1))
        # (N, A*4, H, W) -> (N, A, 4, H, W) -> (N, H, W, A, 4) -> (N, H*W*A, 4)
        flat_deltas.append(dl.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4))
    return torch.cat(flat_obj, dim=1), torch.cat(flat_deltas, dim=1)


class RegionProposalNetwork(nn.Module):
    def __init__(
        self,
        *,
        head: RPNHead,
        anchor_generator: AnchorGenerator,
        box_coder: BoxCoder,
        matcher: Matcher,
        sampler: BalancedSampler,
        pre_nms_topk: tuple[int, int],
        post_nms_topk: tuple[int, int],
        nms_thresh: float,
        min_size: float,
        score_thresh: float,
        box_loss: str,
        smooth_l1_beta: float,
        min_size_exclusive: bool = False,
    ):
        """pre_nms_topk / post_nms_topk: (training, inference). Proposals need width and height
        >= min_size (> min_size with `min_size_exclusive`, detectron2's rule)."""
        super().__init__()
        self.head = head
        self.anchor_generator = anchor_generator
        self.box_coder = box_coder
        self.matcher = matcher
        self.sampler = sampler
        self.pre_nms_topk = pre_nms_topk
        self.post_nms_topk = post_nms_topk
        self.nms_thresh = nms_thresh
        self.min_size = min_size
        self.min_size_exclusive = min_size_exclusive
        self.score_thresh = score_thresh
        self.box_loss = box_loss
        self.smooth_l1_beta = smooth_l1_beta

    def forward(
        self,
        features: list[Tensor],
        image_sizes: list[tuple[int, int]],
        padded_size: tuple[int, int],
        targets: list[Targets] | None = None,
    ) -> tuple[list[Proposals], dict[str, Tensor]]:
        """Proposals per image (in resized-image pixels); losses when targets are given.

        image_sizes: (h, w) of each image inside the padded batch of size `padded_size`.
        """
        objectness, deltas = self.head(features)
        feature_sizes = [tuple(f.shape[-2:]) for f in features]
        anchors = self.anchor_generator(feature_sizes, padded_size, features[0].device)
        anchors_per_level = [len(a) for a in anchors]
        all_anchors = torch.cat(anchors, dim=0)  # (A_all, 4)
        objectness, deltas = flatten_predictions(objectness, deltas)

        proposals = self.select_proposals(
            objectness.detach(), deltas.detach(), all_anchors, anchors_per_level, image_sizes
        )
        losses: dict[str, Tensor] = {}
        if targets is not None:
            gt_labels, gt_deltas = self.anchor_targets(all_anchors, targets)
            sampled_pos, sampled_neg = self.sampler(list(gt_labels))
            losses = rpn_loss(
                objectness.reshape(-1),
                deltas.reshape(-1, 4),
                gt_labels.reshape(-1),
                gt_deltas.reshape(-1, 4),
                torch.cat(sampled_pos),
                torch.cat(sampled_neg),
                box_loss=self.box_loss,
                beta=self.smooth_l1_beta,
            )
        return proposals, losses

    def select_proposals(
        self,
        objectness: Tensor,
        deltas: Tensor,
        anchors: Tensor,
        anchors_per_level: list[int],
        image_sizes: list[tuple[int, int]],
    ) -> list[Proposals]:
        """Top-k per level -> decode -> clip -> drop tiny/low-score -> per-level NMS -> top-k per image."""
        candidates = self.candidates(objectness, deltas, anchors, anchors_per_level, image_sizes)
        return [self.suppress(c) for c in candidates]

    def candidates(
        self,
        objectness: Tensor,
        deltas: Tensor,
        anchors: Tensor,
        anchors_per_level: list[int],
        image_sizes: list[tuple[int, int]],
    ) -> list[Candidates]:
        """What enters NMS, per image: the top `pre_nms_topk` anchors of each level by objectness,
        decoded, clipped to the image, without tiny boxes and scores below `score_thresh`.

        objectness (N, A_all) logits, deltas (N, A_all, 4), anchors (A_all, 4)."""
        pre_k = self.pre_nms_topk[0] if self.training else self.pre_nms_topk[1]
        num_images = objectness.shape[0]
        top_index, top_level = [], []
        offset = 0
        for level, count in enumerate(anchors_per_level):
            level_scores = objectness[:, offset : offset + count]  # (N, A_l)
            _, idx = level_scores.topk(min(pre_k, count), dim=1)
            top_index.append(idx + offset)
            top_level.append(torch.full_like(idx, level))
            offset += count
        top_index = torch.cat(top_index, dim=1)  # (N, T)
        top_level = torch.cat(top_level, dim=1)
        batch = torch.arange(num_images, device=objectness.device)[:, None]
        scores = objectness[batch, top_index].sigmoid()  # (N, T)
        # decode only the selected anchors: (N*T, 4) -> (N, T, 4)
        boxes = self.box_coder.decode(deltas[batch, top_index].reshape(-1, 4), anchors[top_index.reshape(-1)])
        boxes = boxes.reshape(num_images, -1, 4)

        results = []
        for boxes_i, scores_i, level_i, size in zip(boxes, scores, top_level, image_sizes):
            boxes_i = clip_boxes(boxes_i, size)
            keep = nonempty_boxes(boxes_i, self.min_size, exclusive=self.min_size_exclusive)
            boxes_i, scores_i, level_i = boxes_i[keep], scores_i[keep], level_i[keep]
            keep = torch.where(scores_i >= self.score_thresh)[0]
            results.append(Candidates(boxes=boxes_i[keep], scores=scores_i[keep], levels=level_i[keep]))
        return results

    def suppress(self, candidates: Candidates) -> Proposals:
        """NMS within each level, then the best `post_nms_topk` of the image."""
        post_k = self.post_nms_topk[0] if self.training else self.post_nms_topk[1]
        c = candidates
        keep = batched_nms(c.boxes, c.scores, c.levels, self.nms_thresh)[:post_k]
        return Proposals(boxes=c.boxes[keep], scores=c.scores[keep])

    def anchor_targets(self, anchors: Tensor, targets: list[Targets]) -> tuple[Tensor, Tensor]:
        """Labels (N, A_all) in {1, 0, -1} and regression targets (N, A_all, 4) for every anchor."""
        labels, regression = [], []
        for t in targets:
            ones = torch.ones(len(t), dtype=torch.float32, device=anchors.device)
            matched, label = match_labels(self.matcher, t.boxes, ones, anchors)
            labels.append(label)
            if len(t) == 0:
                regression.append(torch.zeros_like(anchors))
            else:
                regression.append(self.box_coder.encode(t.boxes[matched], anchors))
        return torch.stack(labels), torch.stack(regression)
