"""Outlines of instance masks, for the formats that store polygons (labelme, YOLO segmentation).

Coordinates are continuous image coordinates (x to the right, y down): pixel (row r, column c) is
the square [c, c+1] x [r, r+1], as in COCO. Polygons are rasterised with pycocotools (`frPyObjects`,
as COCO polygons are), which fills them with the even-odd rule.

Reading (`checked_polygon`): a polygon from a file is validated and repaired the same way in every
format: a non-finite coordinate is an error naming the item; fewer than 3 points, no area, or no
part inside the image drop it; a polygon partly outside the image is clipped to it (Sutherland-
Hodgman against the image rectangle; the pixels it covers inside the image are unchanged). Each
repair is reported through a callback with a `maskrcnn.data.problems` kind.

Writing (`mask_outlines`, `join_loops`): a binary mask becomes the loops of its pixel edges (outer
boundaries clockwise on screen, holes counter-clockwise, collinear corners removed), which
pycocotools rasterises back to exactly the same pixels; `join_loops` makes one polygon of several
loops (several parts, holes) by zero-width bridges, each walked there and back, so that the even-odd
fill of the single polygon is the mask again (YOLO holds one polygon per instance).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from maskrcnn.errors import UserError

__all__ = [
    "checked_polygon",
    "clip_polygon",
    "instance_rle",
    "join_loops",
    "mask_outlines",
    "polygon_area",
]

# Coordinates beyond this are clamped before clipping (no image is this large; it keeps the
# clipping arithmetic finite for absurd values such as 1e300).
_FAR = 1e12

# Unit steps east, south, west, north: clockwise on screen (y down).
_STEPS = ((1, 0), (0, 1), (-1, 0), (0, -1))


def polygon_area(points: np.ndarray) -> float:
    """Signed shoelace area of an (N, 2) polygon (positive: clockwise on screen, y down)."""
    if len(points) < 3:
        return 0.0
    x, y = points[:, 0], points[:, 1]
    # np.roll(v, -1), spelled out: the same numbers, without np.roll's overhead (this runs for every
    # polygon of a COCO file as it is read)
    y_next, x_next = np.concatenate((y[1:], y[:1])), np.concatenate((x[1:], x[:1]))
    return 0.5 * float(np.dot(x, y_next) - np.dot(x_next, y))


def clip_polygon(points: np.ndarray, width: float, height: float) -> np.ndarray:
    """The part of the (N, 2) polygon inside [0, width] x [0, height] (Sutherland-Hodgman); (0, 2)
    when nothing of it is inside."""
    pts = np.clip(np.asarray(points, dtype=np.float64), -_FAR, _FAR)
    for axis, bound, below in (
        (0, 0.0, False),
        (0, float(width), True),
        (1, 0.0, False),
        (1, float(height), True),
    ):
        if not len(pts):
            break
        inside = pts[:, axis] <= bound if below else pts[:, axis] >= bound
        out: list[np.ndarray] = []
        for k in range(len(pts)):
            p, q = pts[k - 1], pts[k]
            if inside[k] != inside[k - 1]:  # the edge p -> q crosses the boundary
                t = (bound - p[axis]) / (q[axis] - p[axis])
                crossing = p + t * (q - p)
                crossing[axis] = bound
                out.append(crossing)
            if inside[k]:
                out.append(q)
        pts = np.array(out, dtype=np.float64).reshape(-1, 2)
    return pts


def checked_polygon(
    points: np.ndarray,
    width: int,
    height: int,
    *,
    where: str,
    report: Callable[[str, str], None],
) -> np.ndarray | None:
    """The (N, 2) polygon of an annotation, clipped to the image, or None when it is dropped.

    `where` names the file and item in the error raised for a non-finite coordinate; `report(kind,
    detail)` is called for each repair (kinds of `maskrcnn.data.problems.KINDS`).
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(pts).all():
        raise UserError(f"{where}: polygon coordinates must be finite numbers")
    if len(pts) < 3:
        report("polygon_too_few_points", f"polygon has {len(pts)} point{'' if len(pts) == 1 else 's'}")
        return None
    outside = bool((pts[:, 0] < 0).any() or (pts[:, 0] > width).any())
    outside = outside or bool((pts[:, 1] < 0).any() or (pts[:, 1] > height).any())
    if outside:
        clipped = clip_polygon(pts, width, height)
        if len(clipped) < 3 or polygon_area(clipped) == 0.0:
            report("box_entirely_outside_image", "polygon has no area inside the image")
            return None
        report("box_outside_image", "polygon partly outside the image, clipped to it")
        pts = clipped
    if polygon_area(pts) == 0.0:
        report("zero_area", "polygon has no area")
        return None
    return pts


def instance_rle(
    polygons: Sequence[np.ndarray], patches: Sequence[tuple[int, int, np.ndarray]], height: int, width: int
) -> dict:
    """Compressed RLE of one instance: the union of its polygons ((N, 2), N >= 3, inside the image)
    and its mask patches ((x0, y0, (h, w) bool array) placed at column x0, row y0, inside the image)."""
    rles = (
        list(mask_utils.frPyObjects([p.ravel().tolist() for p in polygons], height, width))
        if polygons
        else []
    )
    for x0, y0, patch in patches:
        full = np.zeros((height, width), dtype=np.uint8, order="F")
        full[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]] = patch
        rles.append(mask_utils.encode(full))
    if not rles:
        return mask_utils.encode(np.zeros((height, width), dtype=np.uint8, order="F"))
    return mask_utils.merge(rles) if len(rles) > 1 else rles[0]


def mask_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """The closed loops along the pixel edges of a binary (H, W) mask, as (N, 2) float arrays of
    their corners: outer boundaries clockwise on screen (positive `polygon_area`), holes counter-
    clockwise. Pixels touching only at a corner belong to separate loops. Empty mask: []."""
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    above, below = m[:-1, 1:-1], m[1:, 1:-1]  # the pixels either side of horizontal edge (y, c)
    left, right = m[1:-1, :-1], m[1:-1, 1:]  # the pixels either side of vertical edge (r, x)
    starts: dict[tuple[int, int], list[int]] = {}
    edge_sets = (
        (below & ~above, 0, 0, 0),  # top edge of a pixel: from (c, y) east
        (above & ~below, 1, 0, 2),  # bottom edge: from (c + 1, y) west
        (left & ~right, 0, 0, 1),  # right edge: from (x, r) south
        (right & ~left, 0, 1, 3),  # left edge: from (x, r + 1) north
    )
    for edges, dx, dy, step in edge_sets:  # each edge set is indexed (row, column) of its array
        rows, cols = np.nonzero(edges)
        for row, col in zip(rows.tolist(), cols.tolist()):
            starts.setdefault((col + dx, row + dy), []).append(step)
    loops: list[np.ndarray] = []
    while starts:
        start = next(iter(starts))
        first = starts[start].pop()
        if not starts[start]:
            del starts[start]
        corners, vertex, step = [], start, first
        while True:
            nxt = (vertex[0] + _STEPS[step][0], vertex[1] + _STEPS[step][1])
            options = starts.get(nxt, [])
            if nxt == start:
                options = [*options, first]
            # prefer turning right (hugging the pixel: corner-touching pixels stay apart), then straight
            new = next(s for s in ((step + 1) % 4, step, (step + 3) % 4) if s in options)
            if new != step:
                corners.append(nxt)
            if nxt == start and new == first:
                break
            starts[nxt].remove(new)
            if not starts[nxt]:
                del starts[nxt]
            vertex, step = nxt, new
        loops.append(np.array(corners, dtype=np.float64))
    return loops


def join_loops(loops: Sequence[np.ndarray]) -> np.ndarray:
    """One polygon whose even-odd fill is that of all `loops` together: each further loop is
    spliced in at a vertex near it by a bridge walked there and back (which fills nothing)."""
    if not loops:
        return np.zeros((0, 2), dtype=np.float64)
    order = sorted(range(len(loops)), key=lambda k: -abs(polygon_area(loops[k])))
    joined = loops[order[0]]
    for k in order[1:]:
        loop = loops[k]
        i = int(np.argmin(((joined - loop[0]) ** 2).sum(1)))  # the vertex of `joined` nearest the loop
        j = int(np.argmin(((loop - joined[i]) ** 2).sum(1)))  # and the loop's vertex nearest that one
        turned = np.roll(loop, -j, axis=0)
        joined = np.concatenate([joined[: i + 1], turned, turned[:1], joined[i:]])
    return joined
