"""RoI heads: the box branch and the optional per-instance branches (mask; keypoints next) that
run on the RPN's proposals.

    training:   proposals + ground truth --match, sample (512/image, 25% fg)--> RoIs
                box branch on all sampled RoIs; every other branch on the positive ones
    inference:  proposals --box branch--> detections (input frame) --each branch--> its fields
                --to_original--> boxes rescaled, masks pasted, ... in original-image pixels

A branch is a module with a `name`, `loss(features, positives, targets)` and
`predict(features, detections)`, and `to_original(det, input_size=, original_size=)` for its
fields (`RoIBranch`). Adding one is a new module and a line in `build_model`; nothing here or in
the box and mask branches changes.

Shapes: N images, P_i proposals of image i, R sampled RoIs, R+ positives, D_i detections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

from torch import Tensor, nn

from ..structures import Detections, Proposals, Targets
from .box_branch import BoxBranch
from .matcher import Matcher
from .sampler import BalancedSampler
from .targets import PositiveRoIs, sample_rois


@dataclass
class HeadsRecord:
    """What the branches computed on the way to their fields, filled in when one is passed to
    `RoIHeads.predict(record=...)` (what `maskrcnn.inspect` shows); over the batch's D detections."""

    mask_logits: Optional[Tensor] = None  # (D, M, M) log-odds of each detection's class mask
    keypoint_heatmaps: Optional[Tensor] = None  # (D, J, S, S) heatmap logits


class RoIBranch(Protocol):
    """What a branch other than the box branch provides (the mask branch is one)."""

    name: str

    def loss(self, features: list[Tensor], rois: PositiveRoIs, targets: list[Targets]) -> dict[str, Tensor]:
        """Its losses on the positive RoIs of a batch."""
        ...

    def predict(
        self, features: list[Tensor], detections: list[Detections], *, record: HeadsRecord | None = None
    ) -> list[Detections]:
        """Each image's detections (input frame) with the branch's fields added (and what it
        computed on the way in `record`, which is passed only when one is given: a branch may
        leave the keyword out)."""
        ...

    def to_original(
        self, det: Detections, *, input_size: tuple[int, int], original_size: tuple[int, int]
    ) -> Detections:
        """Its fields mapped to original-image pixels (the boxes are already rescaled)."""
        ...


class RoIHeads(nn.Module):
    def __init__(
        self,
        *,
        box: BoxBranch,
        branches: list[nn.Module],
        matcher: Matcher,
        sampler: BalancedSampler,
    ):
        super().__init__()
        self.box = box
        names = [b.name for b in branches]
        if len(set(names)) != len(names) or "box" in names:
            raise ValueError(f"branch names must be unique and not 'box', got {names}")
        for branch in branches:  # registered by name: state-dict keys roi_heads.mask.*, ...
            self.add_module(branch.name, branch)
        self.branch_names = names
        self.matcher = matcher
        self.sampler = sampler

    @property
    def branches(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.branch_names]

    def branch(self, name: str) -> nn.Module | None:
        """The branch called `name`, or None when the model has none."""
        return getattr(self, name) if name in self.branch_names else None

    def loss(
        self, features: list[Tensor], proposals: list[Proposals], targets: list[Targets]
    ) -> dict[str, Tensor]:
        rois = sample_rois(
            [p.boxes for p in proposals],
            targets,
            matcher=self.matcher,
            sampler=self.sampler,
            box_coder=self.box.box_coder,
        )
        losses = self.box.loss(features, rois)
        positives = rois.positives()
        for branch in self.branches:
            losses.update(branch.loss(features, positives, targets))
        return losses

    def predict(
        self,
        features: list[Tensor],
        proposals: list[Proposals],
        image_sizes: list[tuple[int, int]],
        *,
        score_thresh: float | None = None,
        record: HeadsRecord | None = None,
    ) -> list[Detections]:
        """Detections of every image in the input frame, each branch's fields filled in; `record`:
        filled with the branches' intermediate results."""
        detections = self.box.predict(
            features, [p.boxes for p in proposals], image_sizes, score_thresh=score_thresh
        )
        # a branch without `record` (one of yours, say) runs everywhere but under inspect
        extra = {} if record is None else {"record": record}
        for branch in self.branches:
            detections = branch.predict(features, detections, **extra)
        return detections

    def to_original(
        self,
        detections: list[Detections],
        image_sizes: list[tuple[int, int]],
        original_sizes: list[tuple[int, int]],
    ) -> list[Detections]:
        """Input-frame detections -> original-image pixels (boxes first, then each branch)."""
        out = []
        for det, size, original in zip(detections, image_sizes, original_sizes):
            for branch in [self.box, *self.branches]:
                det = branch.to_original(det, input_size=size, original_size=original)
            out.append(det)
        return out
