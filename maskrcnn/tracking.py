"""Multi-object tracking by detection, in the manner of SORT / ByteTrack: each track's box follows a
constant-velocity Kalman filter, and each frame's detections are assigned to the tracks' predicted
boxes by IoU with the Hungarian algorithm (`scipy.optimize.linear_sum_assignment`). Pure numpy: no
model, no files. Shapes: N detections of a frame, T live tracks.

Per frame (`Tracker.update(boxes (N, 4) xyxy, scores (N,), labels (N,))` -> track ids (N,)):
1. every live track's filter predicts its box in this frame;
2. detections scoring at least `high_score` are assigned to the tracks (cost 1 - IoU; a pair of
   another class, or below `match_iou`, is never assigned);
3. ByteTrack's second round: the detections below `high_score` are assigned to the tracks left;
4. assigned tracks update their filter with the detection's box; unassigned detections scoring at
   least `high_score` start new tracks (ids 1, 2, ... in order of appearance); unassigned low ones
   get no track (id 0);
5. a track unseen for more than `max_lost` frames ends; until then it is predicted on (its box
   keeps moving), so an object missed or hidden for a few frames gets its id back.

The Kalman filter: state (cx, cy, w, h, vx, vy, vw, vh) per frame, measurement (cx, cy, w, h);
process and measurement noise scale with the box's size (weights `POSITION_NOISE`, `VELOCITY_NOISE`,
as in ByteTrack's filter, with the width and height each scaled by themselves).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["BoxKalmanFilter", "Track", "Tracker", "TrackerConfig", "assign", "box_iou"]

POSITION_NOISE = 1.0 / 20
VELOCITY_NOISE = 1.0 / 160


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, B) IoU of xyxy boxes (A, 4) and (B, 4); 0 where a box has no area."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def assign(iou: np.ndarray, *, min_iou: float) -> list[tuple[int, int]]:
    """(row, column) pairs of the assignment of largest total IoU (Hungarian), keeping only the pairs
    with IoU >= min_iou. Entries set to -1 are forbidden."""
    if iou.size == 0:
        return []
    rows, cols = linear_sum_assignment(1.0 - iou)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if iou[r, c] >= min_iou and iou[r, c] > 0]


def _xyxy_to_cxcywh(box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = (float(v) for v in box)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dtype=np.float64)


class BoxKalmanFilter:
    """Constant-velocity Kalman filter of one box (see the module docstring)."""

    def __init__(self, box: np.ndarray):
        z = _xyxy_to_cxcywh(box)
        self.mean = np.concatenate([z, np.zeros(4)])
        size = np.array([z[2], z[3], z[2], z[3]])
        std = np.concatenate([2 * POSITION_NOISE * size, 10 * VELOCITY_NOISE * size])
        self.covariance = np.diag(std**2)
        self.motion = np.eye(8)
        self.motion[:4, 4:] = np.eye(4)  # x += v per frame
        self.observe = np.eye(4, 8)

    def _size(self) -> np.ndarray:
        w, h = max(self.mean[2], 1e-3), max(self.mean[3], 1e-3)
        return np.array([w, h, w, h])

    def predict(self) -> None:
        """Advance one frame: mean <- F mean, covariance <- F P F' + Q."""
        size = self._size()
        q = np.diag(np.concatenate([POSITION_NOISE * size, VELOCITY_NOISE * size]) ** 2)
        self.mean = self.motion @ self.mean
        self.covariance = self.motion @ self.covariance @ self.motion.T + q

    def update(self, box: np.ndarray) -> None:
        """Correct with a measured xyxy box (the standard Kalman update, measurement noise R)."""
        r = np.diag((POSITION_NOISE * self._size()) ** 2)
        s = self.observe @ self.covariance @ self.observe.T + r
        gain = np.linalg.solve(s, self.observe @ self.covariance).T  # P H' S^-1 (S, P symmetric)
        self.mean = self.mean + gain @ (_xyxy_to_cxcywh(box) - self.observe @ self.mean)
        self.covariance = (np.eye(8) - gain @ self.observe) @ self.covariance

    @property
    def box(self) -> np.ndarray:
        """The filter's xyxy box."""
        cx, cy, w, h = self.mean[:4]
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


@dataclass(frozen=True)
class TrackerConfig:
    high_score: float = 0.5  # detections at least this start tracks and are assigned first
    match_iou: float = 0.2  # the least IoU of an assigned (track, detection) pair (ByteTrack's 0.8 cost)
    max_lost: int = 30  # frames a track is kept without a detection


@dataclass
class Track:
    track_id: int
    label: int
    filter: BoxKalmanFilter
    first_frame: int
    last_frame: int
    hits: int = 1  # frames with a detection
    scores: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        """{"track_id", "label", "first_frame", "last_frame", "length" (frames first..last),
        "detections" (frames with a detection), "mean_score"}."""
        return {
            "track_id": self.track_id,
            "label": self.label,
            "first_frame": self.first_frame,
            "last_frame": self.last_frame,
            "length": self.last_frame - self.first_frame + 1,
            "detections": self.hits,
            "mean_score": round(float(np.mean(self.scores)), 5) if self.scores else None,
        }


class Tracker:
    """Links detections across frames (see the module docstring). Frames are numbered by
    `update` calls (0, 1, ...) unless `frame` is given."""

    def __init__(self, config: TrackerConfig | None = None):
        self.config = config or TrackerConfig()
        self.live: list[Track] = []
        self.ended: list[Track] = []
        self.frame = -1
        self._next_id = 1

    def _round(self, tracks: list[Track], boxes, labels, dets: list[int]) -> tuple[list, list, list]:
        """Assign detections `dets` to `tracks` -> (pairs (track, det), tracks left, dets left)."""
        if not tracks or not dets:
            return [], tracks, dets
        predicted = np.stack([t.filter.box for t in tracks])
        iou = box_iou(predicted, boxes[dets])
        other = np.array([t.label for t in tracks])[:, None] != labels[dets][None, :]
        iou[other] = -1.0
        pairs = [(tracks[r], dets[c]) for r, c in assign(iou, min_iou=self.config.match_iou)]
        taken_t, taken_d = {id(t) for t, _ in pairs}, {d for _, d in pairs}
        return pairs, [t for t in tracks if id(t) not in taken_t], [d for d in dets if d not in taken_d]

    def update(self, boxes, scores, labels, *, frame: int | None = None) -> np.ndarray:
        """Track ids (N,) int64 of this frame's detections (0: a low-scoring one that continues no
        track)."""
        self.frame = self.frame + 1 if frame is None else int(frame)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        for track in self.live:
            track.filter.predict()
        high = [i for i in range(len(boxes)) if scores[i] >= self.config.high_score]
        low = [i for i in range(len(boxes)) if scores[i] < self.config.high_score]
        pairs, left, new = self._round(self.live, boxes, labels, high)
        more, _, _ = self._round(left, boxes, labels, low)
        ids = np.zeros(len(boxes), dtype=np.int64)
        for track, d in pairs + more:
            track.filter.update(boxes[d])
            track.last_frame, track.hits = self.frame, track.hits + 1
            track.scores.append(float(scores[d]))
            ids[d] = track.track_id
        for d in new:
            track = Track(self._next_id, int(labels[d]), BoxKalmanFilter(boxes[d]), self.frame, self.frame)
            track.scores.append(float(scores[d]))
            self.live.append(track)
            ids[d] = track.track_id
            self._next_id += 1
        gone = [t for t in self.live if self.frame - t.last_frame > self.config.max_lost]
        self.ended += gone
        self.live = [t for t in self.live if self.frame - t.last_frame <= self.config.max_lost]
        return ids

    def summary(self, *, class_names=None, category_ids=None) -> list[dict]:
        """Every track so far (ended and live), by id (see `Track.summary`); with `class_names` and
        `category_ids` (of labels 1..K), "category_id" and "class" in place of "label"."""
        out = [t.summary() for t in sorted(self.ended + self.live, key=lambda t: t.track_id)]
        if class_names is None:
            return out
        for t in out:
            label = t.pop("label")
            t["category_id"], t["class"] = int(category_ids[label - 1]), str(class_names[label - 1])
        return out
