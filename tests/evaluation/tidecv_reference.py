"""The reference of the error-analysis tests: tidecv 1.0.1 (dbolya/tide) on a ground-truth and a
results file, run as its README does (TIDE().evaluate(datasets.COCO(gt), datasets.COCOResult(res),
mode=...)), in its own process, since TIDE() sets seaborn's global matplotlib style.

    python tests/evaluation/tidecv_reference.py GT.json RESULTS.json  ->  JSON on stdout:
    {"bbox": {"AP50": AP, "Cls": dAP, ..., "FalseNeg": dAP, "per_class": {category id: {type: dAP}}},
     "segm": {...}}

Per-class dAP is read from tidecv's own objects: the class's AP in `run.fix_errors(...)` (what
`fix_main_errors` / `fix_special_errors` average) minus its AP in `run.ap_data`, main errors clamped
at 0 as tidecv clamps the mean.

tidecv imports OpenCV, pandas and seaborn for its plots and pictures, none of which this run uses;
CI installs it without them (`pip install --no-deps tidecv==1.0.1 appdirs`, .ci/run), so where
they are missing this script puts minimal stand-ins for them in sys.modules (test-side only).
"""

from __future__ import annotations

import json
import sys
import types


def _stand_ins() -> None:
    for name in ("cv2", "seaborn", "pandas"):
        try:
            __import__(name)
        except ImportError:
            module = types.ModuleType(name)
            module.FONT_HERSHEY_SIMPLEX = 0  # cv2: a default argument of tidecv's Error.show
            module.set_palette = module.set = module.despine = lambda *a, **k: None  # seaborn
            module.color_palette = lambda *a, **k: [(0.5, 0.5, 0.5)] * 10
            sys.modules[name] = module


def main(gt_file: str, results_file: str) -> dict:
    _stand_ins()
    from tidecv import TIDE, datasets
    from tidecv.errors.main_errors import FalseNegativeError, FalsePositiveError

    out = {}
    gt = datasets.COCO(gt_file)
    for iou_type, mode in (("bbox", TIDE.BOX), ("segm", TIDE.MASK)):
        tide = TIDE()
        run = tide.evaluate(gt, datasets.COCOResult(results_file), mode=mode, name=iou_type)
        errors = tide.get_all_errors()
        row = {"AP50": run.ap, **errors["main"][iou_type], **errors["special"][iou_type]}
        base = {k: obj.get_ap() for k, obj in run.ap_data.objs.items() if not obj.is_empty()}
        fixed = {e.short_name: run.fix_errors(lambda x, e=e: isinstance(x, e)) for e in TIDE._error_types}
        fixed[FalsePositiveError.short_name] = run.fix_errors(transform=FalsePositiveError.fix)
        fixed[FalseNegativeError.short_name] = run.fix_errors(false_neg_dict=run.false_negatives)
        row["per_class"] = {
            str(k): {
                t: (
                    max(d.objs[k].get_ap() - ap, 0)
                    if t in ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
                    else d.objs[k].get_ap() - ap
                )
                for t, d in fixed.items()
            }
            for k, ap in base.items()
        }
        out[iou_type] = row
    return out


if __name__ == "__main__":
    json.dump(main(sys.argv[1], sys.argv[2]), sys.stdout)
