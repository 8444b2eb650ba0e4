"""What a training run writes besides the model: the TensorBoard events (the optional extra, installed
in CI), the one line saying whether it logs to TensorBoard, and the training-curves figure."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest
from PIL import Image

from maskrcnn.config import apply_overrides, get_preset
from maskrcnn.data.shapes import ShapesDataset
from maskrcnn.engine.train import MetricsWriter, train
from tests.conftest import skip_or_fail_in_ci
from tests.helpers import TINY_NET

SCHEDULE = [
    "solver.max_iter=3",
    "solver.ims_per_batch=2",
    "solver.warmup_iters=1",
    "solver.steps=[2]",
    "train.eval_period=2",
    "data.num_workers=0",
    "train.log_period=1",
]


def test_run_writes_tensorboard_events_and_training_curves(tmp_path, capsys):
    if importlib.util.find_spec("tensorboard") is None:
        skip_or_fail_in_ci("the tensorboard extra is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    cfg = apply_overrides(get_preset("shapes_demo"), [*TINY_NET, *SCHEDULE])
    train(cfg, train_data=ShapesDataset(4, seed=0), val_data=ShapesDataset(2, seed=9), out_dir=run,
          progress=False)  # fmt: skip
    printed = capsys.readouterr().out.splitlines()
    notes = [line for line in printed if line.startswith("TensorBoard:")]
    assert notes == [
        f"TensorBoard: logging scalars to {run / 'tensorboard'} (tensorboard --logdir {run / 'tensorboard'})"
    ]

    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "eval" not in r]
    evals = [r for r in records if "eval" in r]
    assert [r["iteration"] for r in steps] == [1, 2, 3] and [r["iteration"] for r in evals] == [2, 3]

    events = sorted((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss", "loss_mask", "lr", "bbox/AP", "segm/AP"} <= tags
    for key in ("loss", "loss_mask", "lr"):
        logged = [(e.step, e.value) for e in acc.Scalars(key)]
        assert [s for s, _ in logged] == [1, 2, 3]
        assert [v for _, v in logged] == pytest.approx([r[key] for r in steps], rel=1e-6)  # float32
    for key in ("bbox/AP", "segm/AP"):
        assert [e.step for e in acc.Scalars(key)] == [2, 3]
        assert [e.value for e in acc.Scalars(key)] == pytest.approx([r[key] for r in evals], rel=1e-6)

    with Image.open(run / "training_curves.png") as im:
        assert im.format == "PNG" and im.size == (1380, 380)  # losses, lr and AP panels


def test_without_tensorboard_the_run_says_how_to_enable_it(tmp_path, monkeypatch):
    # tensorboard not importable, as in an environment without the extra
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    for name in [m for m in sys.modules if m.startswith("torch.utils.tensorboard")]:
        monkeypatch.delitem(sys.modules, name)
    writer = MetricsWriter(tmp_path, enabled=True)
    assert writer.tb is None
    assert writer.tensorboard_note == (
        f"TensorBoard: off (to also log scalars to {tmp_path / 'tensorboard'}: "
        "pip install 'maskrcnn[tensorboard]')"
    )
    writer.write({"iteration": 1, "loss": 0.5})
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
    # other processes than the main one write nothing and say nothing
    quiet = MetricsWriter(tmp_path / "rank1", enabled=False)
    assert quiet.tb is None and quiet.tensorboard_note == ""


def test_a_resumed_log_keeps_the_lines_up_to_its_checkpoint_and_drops_a_cut_line(tmp_path):
    lines = [json.dumps({"iteration": i, "loss": 1.0 / i}) for i in (1, 2, 3)]
    lines.append(json.dumps({"iteration": 3, "eval": "eval_0000003", "bbox/AP": 0.5}))
    written = "".join(line + "\n" for line in lines) + '{"iteration": 4, "lo'  # killed mid-line
    (tmp_path / "metrics.jsonl").write_text(written)
    writer = MetricsWriter(tmp_path, enabled=False)  # what any process may do: nothing
    writer.keep_until(2)
    assert (tmp_path / "metrics.jsonl").read_text() == written
    writer = MetricsWriter(tmp_path, True, start_iteration=3)
    writer.keep_until(
        3
    )  # resumed at iteration 3: the line cut short is dropped, the others kept as they were
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(line + "\n" for line in lines)
    writer.keep_until(2)
    assert (tmp_path / "metrics.jsonl").read_text() == "".join(line + "\n" for line in lines[:2])
    writer.write({"iteration": 3, "loss": 0.25})
    writer.close()
    assert (tmp_path / "metrics.jsonl").read_text().splitlines()[2:] == ['{"iteration": 3, "loss": 0.25}']
