"""Balanced sampling of positives and negatives (Faster R-CNN §3.1.3, Fast R-CNN §2.3).

Per image, up to `batch_size * positive_fraction` positives (label >= 1) are drawn at random, and
negatives (label == 0) fill the rest; label -1 is ignored. The random draws happen per image in
the order (positives, negatives), the same sequence of `torch.randperm` calls as torchvision, so
equal seeds give equal samples.
"""

from __future__ import annotations

import torch
from torch import Tensor


class BalancedSampler:
    def __init__(self, *, batch_size_per_image: int, positive_fraction: float):
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __call__(self, labels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per-image (P,) labels -> per-image boolean masks (positives, negatives)."""
        positives, negatives = [], []
        for labels_i in labels:
            pos = torch.where(labels_i >= 1)[0]
            neg = torch.where(labels_i == 0)[0]
            num_pos = min(pos.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(neg.numel(), self.batch_size_per_image - num_pos)
            pos = pos[torch.randperm(pos.numel(), device=pos.device)[:num_pos]]
            neg = neg[torch.randperm(neg.numel(), device=neg.device)[:num_neg]]
            pos_mask = torch.zeros_like(labels_i, dtype=torch.bool)
            neg_mask = torch.zeros_like(labels_i, dtype=torch.bool)
            pos_mask[pos] = True
            neg_mask[neg] = True
            positives.append(pos_mask)
            negatives.append(neg_mask)
        return positives, negatives
