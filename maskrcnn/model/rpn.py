"""Region Proposal Network (Faster R-CNN §3.1) over the FPN levels P2..P6.

Shapes: N images, A anchors per location, L levels, A_l = H_l * W_l * A anchors on level l,
A_all = sum_l A_l.

head:      [P_l (N, D, H_l, W_l)] -> objectness [(N, A, H_l, W_l)], deltas [(N, 4A, H_l, W_l)]
proposals: per level, the top `pre_nms_topk` anchors by objectness are decoded, clipped,
           filtered by size and score; NMS runs per level (batched); the best `post_nms_topk`
           per image remain (torchvision's rule; Detectron's training-time rule is per batch).
           Trace-safe (`traceable`): the exported graph runs this same code.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..ops.box_coder import BoxCoder
from ..ops.boxes import nonempty_boxes, nonempty_mask
from ..structures import Proposals, Targets
from .anchors import AnchorGenerator
from .losses import rpn_loss
from .matcher import Matcher, match_labels
from .sampler import BalancedSampler
from .traceable import capped, clip_boxes, grouped_nms, spatial_size, tracing


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


def flatten_level(objectness: Tensor, deltas: Tensor) -> tuple[Tensor, Tensor]:
    """One level's head outputs (N, A, H, W), (N, 4A, H, W) -> objectness (N, H*W*A) and deltas
    (N, H*W*A, 4) in anchor order (row, column, anchor); trace-safe (no size arithmetic)."""
    n, a = objectness.shape[:2]
    # (N, A, H, W) -> (N, H, W, A) -> (N, H*W*A)
    flat_obj = objectness.permute(0, 2, 3, 1).reshape(n, -1)
    # (N, A*4, H, W) -> (N, A, 4, H*W) -> (N, H*W, A, 4) -> (N, H*W*A, 4)
    flat_deltas = deltas.reshape(n, a, 4, -1).permute(0, 3, 1, 2).reshape(n, -1, 4)
    return flat_obj, flat_deltas


@dataclass
class ProposalRecord:
    """What the RPN computed on the way to its proposals, filled in when one is passed to
    `RegionProposalNetwork.forward(record=...)` (what `maskrcnn.inspect` shows)."""

    feature_sizes: list = field(default_factory=list)  # (H_l, W_l) per level
    anchors: list = field(default_factory=list)  # per level (A_l, 4)
    candidates: list = field(default_factory=list)  # per image Candidates (what enters NMS)


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
        image_sizes: list[tuple],
        padded_size: tuple,
        targets: list[Targets] | None = None,
        *,
        record: ProposalRecord | None = None,
    ) -> tuple[list[Proposals], dict[str, Tensor]]:
        """Proposals per image (in resized-image pixels); losses when targets are given.

        image_sizes: (h, w) of each image inside the padded batch of size `padded_size` (ints, or
        0-dim tensors while tracing). `record`: filled with the anchors and NMS candidates.
        """
        objectness, deltas = self.head(features)
        feature_sizes = [spatial_size(f) for f in features]
        anchors = self.anchor_generator(feature_sizes, padded_size, features[0].device)
        flat = [flatten_level(obj, dl) for obj, dl in zip(objectness, deltas)]
        objectness, deltas = [f[0] for f in flat], [f[1] for f in flat]
        candidates = self.candidates(
            [o.detach() for o in objectness], [d.detach() for d in deltas], anchors, image_sizes
        )
        proposals = [self.suppress(c, num_levels=len(anchors)) for c in candidates]
        if record is not None:
            record.feature_sizes, record.anchors, record.candidates = feature_sizes, anchors, candidates
        losses: dict[str, Tensor] = {}
        if targets is not None:
            all_anchors = torch.cat(anchors, dim=0)  # (A_all, 4)
            objectness, deltas = torch.cat(objectness, dim=1), torch.cat(deltas, dim=1)
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

    def candidates(
        self,
        objectness: list[Tensor],
        deltas: list[Tensor],
        anchors: list[Tensor],
        image_sizes: list[tuple],
    ) -> list[Candidates]:
        """What enters NMS, per image: the top `pre_nms_topk` anchors of each level by objectness,
        decoded, clipped to the image, without tiny boxes and scores below `score_thresh`.

        Per level: objectness (N, A_l) logits, deltas (N, A_l, 4), anchors (A_l, 4). Trace-safe."""
        pre_k = self.pre_nms_topk[0] if self.training else self.pre_nms_topk[1]
        top_scores, top_deltas, top_anchors, top_level = [], [], [], []
        for level, (obj, dl, anchor) in enumerate(zip(objectness, deltas, anchors)):
            scores, idx = obj.topk(capped(obj, pre_k, dim=1), dim=1)  # (N, k)
            top_scores.append(scores)
            top_deltas.append(dl.gather(1, idx[..., None].expand(-1, -1, 4)))
            top_anchors.append(anchor[idx])
            top_level.append(torch.full_like(idx, level))
        scores = torch.cat(top_scores, dim=1).sigmoid()  # (N, T)
        levels = torch.cat(top_level, dim=1)
        # decode only the selected anchors: (N*T, 4) -> (N, T, 4)
        boxes = self.box_coder.decode(
            torch.cat(top_deltas, dim=1).reshape(-1, 4), torch.cat(top_anchors, dim=1).reshape(-1, 4)
        )
        boxes = boxes.reshape(scores.shape[0], -1, 4)

        if not tracing():  # both filters as one mask, kept in order: one wait for the batch
            boxes = torch.stack([clip_boxes(b, size) for b, size in zip(boxes, image_sizes)])
            ok = nonempty_mask(boxes, self.min_size, exclusive=self.min_size_exclusive)
            ok &= scores >= self.score_thresh
            first = torch.argsort((~ok).to(torch.uint8), dim=1, stable=True)  # (N, T): kept ones first
            return [
                Candidates(boxes=b[f[:n]], scores=s[f[:n]], levels=lv[f[:n]])
                for b, s, lv, f, n in zip(boxes, scores, levels, first, ok.sum(1).tolist())
            ]
        results = []  # traced: the graph's counts stay dynamic
        for boxes_i, scores_i, level_i, size in zip(boxes, scores, levels, image_sizes):
            boxes_i = clip_boxes(boxes_i, size)
            keep = nonempty_boxes(boxes_i, self.min_size, exclusive=self.min_size_exclusive)
            boxes_i, scores_i, level_i = boxes_i[keep], scores_i[keep], level_i[keep]
            keep = torch.where(scores_i >= self.score_thresh)[0]
            results.append(Candidates(boxes=boxes_i[keep], scores=scores_i[keep], levels=level_i[keep]))
        return results

    def suppress(self, candidates: Candidates, *, num_levels: int) -> Proposals:
        """NMS within each level, then the best `post_nms_topk` of the image."""
        post_k = self.post_nms_topk[0] if self.training else self.post_nms_topk[1]
        c = candidates
        keep = grouped_nms(c.boxes, c.scores, c.levels, self.nms_thresh, group_ids=range(num_levels))
        keep = keep[:post_k]
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
