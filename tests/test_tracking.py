"""The tracker (`maskrcnn.tracking`) on tiny hand-computed cases: IoU, the Hungarian assignment, one
Kalman step worked out by hand, crossing objects, a missed object coming back, ByteTrack's
low-score round, classes and track ends."""

from __future__ import annotations

import numpy as np
import pytest

from maskrcnn.tracking import BoxKalmanFilter, Tracker, TrackerConfig, assign, box_iou


def test_box_iou_by_hand():
    iou = box_iou(
        np.array([[0, 0, 2, 2], [0, 0, 1, 1]]), np.array([[1, 1, 3, 3], [2, 2, 3, 3], [0, 0, 2, 2]])
    )
    expected = [[1 / 7, 0.0, 1.0], [0.0, 0.0, 1 / 4]]
    assert iou == pytest.approx(np.array(expected))
    assert box_iou(np.array([[0, 0, 0, 5]]), np.array([[0, 0, 0, 5]]))[0, 0] == 0.0  # no area


def test_assignment_maximises_the_total_iou_then_drops_weak_pairs():
    iou = np.array([[0.9, 0.8], [0.85, 0.1]])
    # greedy would take (0, 0) = 0.9 and leave (1, 1) = 0.1; the optimum is 0.8 + 0.85
    assert assign(iou, min_iou=0.3) == [(0, 1), (1, 0)]
    assert assign(iou, min_iou=0.82) == [(1, 0)]
    assert assign(np.array([[-1.0, 0.5]]), min_iou=0.3) == [(0, 1)]  # -1: forbidden
    assert assign(np.zeros((0, 3)), min_iou=0.3) == []


def test_one_kalman_step_by_hand():
    # box 10 x 10 at centre (5, 5): position std 2/20 * 10 = 1, velocity std 10/160 * 10 = 0.625
    kf = BoxKalmanFilter(np.array([0.0, 0.0, 10.0, 10.0]))
    kf.predict()  # at rest: the mean stays; P_cx = 1 + 0.625**2 + 0.5**2, cov(cx, vx) = 0.625**2
    assert kf.box == pytest.approx([0, 0, 10, 10])
    assert kf.covariance[0, 0] == pytest.approx(1.640625)
    assert kf.covariance[0, 4] == pytest.approx(0.390625)
    kf.update(np.array([2.0, 0.0, 12.0, 10.0]))  # measured 2 px to the right; R_cx = 0.5**2
    s = 1.640625 + 0.25
    assert kf.mean[0] == pytest.approx(5 + 2 * 1.640625 / s)  # 6.7355...
    assert kf.mean[4] == pytest.approx(2 * 0.390625 / s)  # the velocity it infers: 0.4132...
    assert kf.mean[1] == pytest.approx(5.0) and kf.mean[2:4] == pytest.approx([10, 10])


def test_the_filter_learns_a_constant_velocity():
    kf = BoxKalmanFilter(np.array([0.0, 0.0, 20.0, 20.0]))
    for t in range(1, 15):
        kf.predict()
        kf.update(np.array([5.0 * t, 0.0, 20 + 5.0 * t, 20.0]))
    kf.predict()
    assert kf.box == pytest.approx([75, 0, 95, 20], abs=0.3)
    assert kf.mean[4] == pytest.approx(5.0, abs=0.2)  # 4.84 after 14 frames, converging


def _boxes(t: int) -> np.ndarray:
    a = [6.0 * t, 0.0, 20 + 6.0 * t, 20.0]  # left to right
    b = [96 - 6.0 * t, 6.0, 116 - 6.0 * t, 26.0]  # right to left, overlapping a while they cross
    return np.array([a, b])


def test_crossing_objects_of_one_class_keep_their_ids():
    tracker = Tracker()
    seen = []
    for t in range(18):
        boxes = _boxes(t)
        order = [1, 0] if t % 2 else [0, 1]  # the detector's order changes from frame to frame
        ids = tracker.update(boxes[order], [0.9, 0.8], [1, 1])
        seen.append(dict(zip(order, ids.tolist())))
    assert max(box_iou(_boxes(8)[:1], _boxes(8)[1:])[0, 0], 0) > 0.4  # they do overlap at t = 8
    assert {s[0] for s in seen} == {1} and {s[1] for s in seen} == {2}


def test_a_missed_object_gets_its_id_back_where_its_motion_took_it():
    tracker = Tracker()
    box = lambda t: np.array([[10.0 * t, 0.0, 30 + 10.0 * t, 30.0]])  # noqa: E731
    for t in range(6):
        assert tracker.update(box(t), [0.9], [1]).tolist() == [1]
    for _ in range(6, 9):  # hidden for 3 frames: by then it is 30 px from where it was last seen
        assert tracker.update(np.zeros((0, 4)), [], []).tolist() == []
    assert box_iou(box(5), box(9))[0, 0] == 0.0  # plain IoU with the last box would not find it
    assert tracker.update(box(9), [0.9], [1]).tolist() == [1]


def test_low_scores_continue_tracks_but_start_none_and_classes_never_mix():
    tracker = Tracker(TrackerConfig(high_score=0.5))
    assert tracker.update([[0, 0, 10, 10]], [0.9], [1]).tolist() == [1]
    # the same object at a low score keeps id 1; a low-scoring thing elsewhere gets no track
    ids = tracker.update([[1, 0, 11, 10], [50, 50, 60, 60]], [0.3, 0.3], [1, 1])
    assert ids.tolist() == [1, 0]
    # another class on top of track 1 starts its own track
    assert tracker.update([[1, 0, 11, 10], [1, 0, 11, 10]], [0.9, 0.9], [1, 2]).tolist() == [1, 2]


def test_tracks_end_after_max_lost_frames_and_are_summarised():
    tracker = Tracker(TrackerConfig(max_lost=2))
    for _ in range(3):
        tracker.update([[0, 0, 10, 10]], [0.8], [1])
    for _ in range(3):  # frames 3, 4, 5 without it: more than 2 frames lost, it ends
        tracker.update(np.zeros((0, 4)), [], [])
    assert tracker.update([[0, 0, 10, 10]], [0.6], [1]).tolist() == [2]
    first, second = tracker.summary()
    assert first == {
        "track_id": 1,
        "label": 1,
        "first_frame": 0,
        "last_frame": 2,
        "length": 3,
        "detections": 3,
        "mean_score": 0.8,
    }
    assert (second["track_id"], second["first_frame"], second["last_frame"], second["length"]) == (2, 6, 6, 1)
    named = tracker.summary(class_names=["cat"], category_ids=[17])
    assert (named[0]["category_id"], named[0]["class"]) == (17, "cat") and "label" not in named[0]
