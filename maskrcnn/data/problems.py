"""Problems found in a dataset: what `maskrcnn check-data` reports and `maskrcnn train` acts on.

Every loader reads its files the same way for training and for checking; what it finds wrong is
recorded in a `ProblemLog` instead of being silently skipped:

- *fatal* problems would stop training (a missing or unreadable image, an image whose size differs
  from its annotation file, an unknown category, duplicate ids, a file that is not what its format
  says): `check-data` exits 1 and `train` stops before the first step with the report;
- *fixed* problems are repaired the same way every time, and the report says how (a polygon with
  fewer than 3 points is dropped, a box partly outside the image is clipped to it, a zero-area box
  or one entirely outside the image is dropped): `train` applies the fix and counts it in its log
  and `metrics.jsonl`;
- *notes* are not problems for training but worth knowing (an image without annotations is kept
  as a background image).

Each kind is declared once in `KINDS` (its severity, and for fixed ones what is done); a record
names the file, the image id and the annotation id where they exist (item: the format's own name
for the thing at fault, e.g. a labelme shape index or a YOLO label line).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from maskrcnn.errors import UserError
from maskrcnn.image_limits import MAX_ASPECT_RATIO

__all__ = ["KINDS", "DataProblemsError", "Kind", "Problem", "ProblemLog"]

Severity = Literal["fatal", "fixed", "note"]


@dataclass(frozen=True)
class Kind:
    severity: Severity
    what: str  # what is wrong, e.g. "polygon with fewer than 3 points"
    action: str = ""  # for fixed problems: what is done, e.g. "polygon dropped"


KINDS: dict[str, Kind] = {
    "missing_image": Kind("fatal", "image file missing"),
    "unreadable_image": Kind("fatal", "image file cannot be decoded"),
    "image_size_mismatch": Kind("fatal", "image size differs from the annotation file's width/height"),
    "unknown_category": Kind("fatal", "annotation of an unknown category"),
    "duplicate_image_id": Kind("fatal", "image id used twice"),
    "duplicate_annotation_id": Kind("fatal", "annotation id used twice"),
    "duplicate_category_id": Kind("fatal", "category id used twice"),
    "unknown_image": Kind("fatal", "annotation of an image id the file does not list"),
    "mask_size_mismatch": Kind("fatal", "mask size differs from its image's"),
    "image_too_thin": Kind("fatal", f"image too thin for the model (aspect ratio over {MAX_ASPECT_RATIO}:1)"),
    "malformed": Kind("fatal", "malformed record (missing key, wrong type, non-finite number)"),
    "polygon_too_few_points": Kind("fixed", "polygon with fewer than 3 points", "polygon dropped"),
    "zero_area": Kind("fixed", "zero-area box or mask", "annotation dropped"),
    "box_outside_image": Kind("fixed", "box partly outside the image", "box clipped to the image"),
    "box_entirely_outside_image": Kind("fixed", "box entirely outside the image", "annotation dropped"),
    "image_without_annotations": Kind("note", "image without annotations", "kept as a background image"),
    "shape_not_a_region": Kind("note", "point or line shape (not a region)", "skipped"),
    "duplicate_file_name": Kind("note", "image file listed by two image records", "both kept"),
    "duplicate_image_content": Kind("note", "image files with the same bytes", "both kept"),
    "bbox_disagrees_with_mask": Kind(
        "note", "bbox disagreeing with its mask (box IoU < 0.5)", "training uses the mask's box"
    ),
    "label_without_image": Kind("note", "label file without its image", "its instances are not used"),
}


@dataclass(frozen=True)
class Problem:
    kind: str  # a key of KINDS
    file: str  # the file at fault (annotation file, image file, label file)
    image_id: int | str | None = None
    annotation_id: int | str | None = None  # or the format's own item (shape index, label line)
    detail: str = ""  # the specifics, e.g. "polygon 1 has 2 points"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown problem kind {self.kind!r}; declare it in KINDS")

    @property
    def severity(self) -> Severity:
        return KINDS[self.kind].severity

    def where(self) -> str:
        """e.g. "ann.json (image 7, annotation 12)"."""
        parts = [
            f"image {self.image_id}" if self.image_id is not None else "",
            f"annotation {self.annotation_id}" if self.annotation_id is not None else "",
        ]
        inside = ", ".join(p for p in parts if p)
        return f"{self.file} ({inside})" if inside else self.file

    def line(self) -> str:
        """One line on its own, e.g. "ann.json (image 7, annotation 12): polygon 1 has 2 points ->
        polygon dropped" (the detail, or the kind's description when there is none)."""
        kind = KINDS[self.kind]
        text = f"{self.where()}: {self.detail or kind.what}"
        return text + (f" -> {kind.action}" if kind.action else "")

    def to_json(self) -> dict:
        return {
            "file": self.file,
            "image_id": self.image_id,
            "annotation_id": self.annotation_id,
            "detail": self.detail,
        }


@dataclass
class ProblemLog:
    """The problems of one dataset, in the order they were found."""

    problems: list[Problem] = field(default_factory=list)
    # how many are fatal, kept up to date by add/extend: datasets ask `raise_if_fatal` on every
    # item they serve, which must not scan a log of (say) thousands of fixed problems each time
    _fatal_count: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._fatal_count = sum(p.severity == "fatal" for p in self.problems)

    def add(
        self,
        kind: str,
        file: object,
        *,
        image_id: int | str | None = None,
        annotation_id: int | str | None = None,
        detail: str = "",
    ) -> None:
        problem = Problem(kind, str(file), image_id, annotation_id, detail)
        self.problems.append(problem)
        self._fatal_count += problem.severity == "fatal"

    def extend(self, other: ProblemLog) -> None:
        self.problems.extend(other.problems)
        self._fatal_count += other._fatal_count

    def __len__(self) -> int:
        return len(self.problems)

    def counts(self) -> Counter:
        """kind -> number of problems of that kind."""
        return Counter(p.kind for p in self.problems)

    def of(self, severity: Severity) -> list[Problem]:
        return [p for p in self.problems if p.severity == severity]

    @property
    def fatal(self) -> bool:
        return self._fatal_count > 0

    def summary(self) -> dict[str, int]:
        """Counts by kind, for logs and metrics.jsonl (e.g. {"polygon_too_few_points": 3})."""
        return dict(sorted(self.counts().items()))

    def _by_kind(self) -> list[tuple[str, list[Problem]]]:
        """(kind, its problems in the order found), fatal kinds first, then fixed, then notes."""
        groups: dict[str, list[Problem]] = {}
        for p in self.problems:
            groups.setdefault(p.kind, []).append(p)
        return sorted(groups.items(), key=lambda kp: (_ORDER[KINDS[kp[0]].severity], kp[0]))

    def report(self, *, examples: int = 3) -> str:
        """Human-readable: per kind (fatal first), its count and the first `examples` problems."""
        if not self.problems:
            return "no problems found"
        lines = []
        for kind, found in self._by_kind():
            spec = KINDS[kind]
            action = f" ({spec.action})" if spec.action else ""
            lines.append(f"{spec.severity}: {len(found)} x {spec.what}{action}")
            for p in found[:examples]:
                lines.append(f"    {p.where()}" + (f": {p.detail}" if p.detail else ""))
            if len(found) > examples:
                lines.append(f"    ... and {len(found) - examples} more")
        return "\n".join(lines)

    def summary_line(self) -> str:
        """The problems that did not stop anything, on one line, e.g. "3 x polygon with fewer than
        3 points (polygon dropped); note: 1 x image without annotations (kept as a background
        image)"; "" when there are none."""
        parts = []
        for kind, found in self._by_kind():
            spec = KINDS[kind]
            if spec.severity != "fatal":
                note = "note: " if spec.severity == "note" else ""
                parts.append(f"{note}{len(found)} x {spec.what} ({spec.action})")
        return "; ".join(parts)

    def to_json(self, *, examples: int = 10) -> dict:
        """For `check-data --json`: whether any is fatal, the counts by kind, and per kind its
        severity, description, action, count and first `examples` problems."""
        return {
            "fatal": self.fatal,
            "counts": self.summary(),
            "kinds": {
                kind: {
                    "severity": KINDS[kind].severity,
                    "what": KINDS[kind].what,
                    "action": KINDS[kind].action,
                    "count": len(found),
                    "examples": [p.to_json() for p in found[:examples]],
                }
                for kind, found in self._by_kind()
            },
        }

    def raise_if_fatal(self, what: str = "the data", *, hint: str = "") -> None:
        """Raise DataProblemsError when a problem is fatal ("the data has 3 fatal problems: the
        first (and 2 more; `hint`)"): what datasets do when an item is read from data with a fatal
        problem, and training before its first step."""
        fatal = self._fatal_count
        if fatal:
            counted = f"{what} has {'a fatal problem' if fatal == 1 else f'{fatal} fatal problems'}"
            raise DataProblemsError(counted, self, hint=hint or CHECK_HINT)


_ORDER = {"fatal": 0, "fixed": 1, "note": 2}
CHECK_HINT = "`maskrcnn check-data` lists them all"


class DataProblemsError(UserError):
    """A dataset with fatal problems; `log` holds all of them. The message names `what` (the
    dataset), the first fatal problem and how many more there are, then `hint` (where to see them).

    `DataProblemsError(message)` alone (log None) is a plain message, as the DataLoader re-raises
    a worker's exception from its text."""

    def __init__(self, what: str, log: ProblemLog | None = None, *, hint: str = CHECK_HINT):
        self.log = log if log is not None else ProblemLog()
        fatal = self.log.of("fatal")
        if not fatal:
            super().__init__(what)
            return
        more = f" (and {len(fatal) - 1} more; {hint})" if len(fatal) > 1 else ""
        super().__init__(f"{what}: {fatal[0].line()}{more}")
