"""Checkpoints that cannot run code (`maskrcnn.safe_load`): a payload whose unpickling calls
`os.system("touch MARKER")`, written as a torch.save zip (`.pt`), torch's older non-zip format
(`.pth`) and a plain pickle (`.pkl`), is refused by `maskrcnn.load` and by every command that reads
weights (predict, evaluate, convert, export, serve, train --resume): exit 1, one `error:` line naming
the file and `posix.system`, no traceback, and the marker never appears. Control: the same files,
unpickled the unsafe way, do create it. Damaged or wrong-shaped checkpoints are one error line
too; a detectron2 model-zoo-like pickle of numpy arrays (protocol 2 from Python 3, and as Python 2
wrote it) loads.

Most command cases call `maskrcnn.cli.main` in this process (what the console script runs); predict
and serve run as real processes.
"""

from __future__ import annotations

import os
import pickle
import random
import shlex
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import maskrcnn
from maskrcnn import cli
from maskrcnn.checkpoints import read_checkpoint
from maskrcnn.engine.resume import rng_state, set_rng_state
from maskrcnn.errors import UserError
from maskrcnn.safe_load import load_weights_file
from tests.helpers import REPO_ROOT, train_args

EVIL_GLOBAL = f"{os.system.__module__}.system"  # posix.system (nt.system on Windows)
SUFFIXES = (".pt", ".pth", ".pkl")


class Evil:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def write_payload(path: Path, marker: Path) -> Path:
    """The issue's payload: a checkpoint-looking dict whose unpickling runs `touch marker`;
    .pt: torch.save's zip, .pth: torch.save's older format, .pkl: pickle.dump."""
    payload = {"format": "maskrcnn", "version": 2, "x": Evil(f"touch {shlex.quote(str(marker))}")}
    if path.suffix == ".pkl":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path, _use_new_zipfile_serialization=path.suffix == ".pt")
    return path


@pytest.fixture(scope="module")
def evil(tmp_path_factory) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("evil")
    marker = folder / "PWNED"
    files = {suffix[1:]: write_payload(folder / f"evil{suffix}", marker) for suffix in SUFFIXES}
    return SimpleNamespace(folder=folder, marker=marker, **files)


def refusal_of(path: Path) -> str:
    return f"{path}: refused to load: it needs {EVIL_GLOBAL}, which could run code"


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_the_payload_is_refused_and_nothing_runs(suffix, evil, tmp_path):
    path = getattr(evil, suffix[1:])
    for read in (load_weights_file, read_checkpoint, maskrcnn.load):
        with pytest.raises(UserError) as raised:
            read(path)
        assert str(raised.value).startswith(refusal_of(path)), raised.value
    assert not evil.marker.exists()
    # control: the same bytes, read the unsafe way, do run the command
    control = tmp_path / "RAN"
    unsafe = write_payload(tmp_path / f"control{suffix}", control)
    if suffix == ".pkl":
        pickle.loads(unsafe.read_bytes())
    else:
        torch.load(unsafe, weights_only=False)
    assert control.exists()


@pytest.mark.parametrize(
    "name, payload",
    [
        ("builtins.eval", (eval, ("1 + 1",))),  # protocol 2 writes Python 2's names: __builtin__.eval
        ("subprocess.Popen", (subprocess.Popen, (["true"],))),  # and commands.Popen
        ("pathlib.Path", (Path, ("x",))),  # harmless, but not data either
    ],
)
@pytest.mark.parametrize("protocol", [2, 4])  # GLOBAL and STACK_GLOBAL opcodes
def test_a_pickle_naming_any_other_global_is_refused(name, payload, protocol, tmp_path):
    class Call:
        def __reduce__(self):
            return payload

    path = tmp_path / "other.pkl"
    path.write_bytes(pickle.dumps({"model": {"w": np.zeros(2)}, "x": Call()}, protocol=protocol))
    with pytest.raises(UserError) as raised:
        load_weights_file(path)
    assert str(raised.value).startswith(f"{path}: refused to load: it needs {name}, which could run code")


def py2_pickle(arrays: dict[str, np.ndarray], author: str) -> bytes:
    """{"model": arrays, "__author__": author} as Python 2's cPickle (protocol 2) wrote detectron2's
    model-zoo files: byte strings (BINSTRING, read as latin-1 text) for every str and array
    buffer, numpy under numpy.core."""

    def text(value: str | bytes) -> bytes:
        raw = value.encode("latin1") if isinstance(value, str) else value
        return b"T" + struct.pack("<i", len(raw)) + raw

    def small_int(value: int) -> bytes:
        return b"J" + struct.pack("<i", value)

    def array(a: np.ndarray) -> bytes:
        dtype = (
            b"cnumpy\ndtype\n" + text(a.dtype.str[1:]) + small_int(0) + small_int(1) + b"\x87R"
            b"(" + small_int(3) + text("<") + b"NNN" + small_int(-1) + small_int(-1) + small_int(0) + b"tb"
        )
        shape = b"(" + b"".join(small_int(n) for n in a.shape) + b"t"
        empty = b"cnumpy\nndarray\n(" + small_int(0) + b"t" + text("b") + b"\x87R"  # ndarray, (0,), "b"
        state = b"(" + small_int(1) + shape + dtype + b"\x89" + text(a.tobytes()) + b"tb"
        return b"cnumpy.core.multiarray\n_reconstruct\n" + empty + state

    model = b"}(" + b"".join(text(k) + array(v) for k, v in arrays.items()) + b"u"
    return b"\x80\x02}(" + text("model") + model + text("__author__") + text(author) + b"u."


def test_a_model_zoo_pickle_of_numpy_arrays_loads(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {
        "backbone.bottom_up.stem.conv1.weight": rng.standard_normal((4, 3, 7, 7)).astype(np.float32),
        "roi_heads.box_predictor.cls_score.bias": rng.standard_normal(3),
        "backbone.bottom_up.res2.0.conv1.norm.running_var": rng.random(4).astype(np.float32) + 0.5,
        "proposal_generator.anchor_generator.cell_anchors.0": np.arange(12, dtype=np.int64).reshape(3, 4),
    }
    zoo = {"model": arrays, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}
    (tmp_path / "zoo.pkl").write_bytes(pickle.dumps(zoo, protocol=2))
    (tmp_path / "py2.pkl").write_bytes(py2_pickle(arrays, "Detectron"))
    for name, author in (("zoo.pkl", "Detectron2 Model Zoo"), ("py2.pkl", "Detectron")):
        got = load_weights_file(tmp_path / name)
        assert got["__author__"] == author and list(got["model"]) == list(arrays)
        for key, value in arrays.items():
            assert got["model"][key].dtype == value.dtype and np.array_equal(got["model"][key], value)
    # torch.save files may hold numpy arrays and scalars too
    torch.save({"model": {"w": torch.ones(2)}, "a": arrays["roi_heads.box_predictor.cls_score.bias"],
                "iteration": np.int64(7)}, tmp_path / "d2.pth")  # fmt: skip
    got = load_weights_file(tmp_path / "d2.pth")
    assert torch.equal(got["model"]["w"], torch.ones(2)) and got["iteration"] == 7
    assert np.array_equal(got["a"], arrays["roi_heads.box_predictor.cls_score.bias"])


# ---- damaged and wrong-shaped checkpoints: one UserError naming the file ------------------------


@pytest.fixture(scope="module")
def broken(tmp_path_factory, tiny_weights) -> SimpleNamespace:
    folder = tmp_path_factory.mktemp("broken")
    good = read_checkpoint(tiny_weights)
    data = tiny_weights.read_bytes()
    paths = SimpleNamespace(folder=folder)
    for name, content in {
        "truncated.pt": data[: len(data) // 2],
        "empty.pt": b"",
        "garbage.pt": b"not a checkpoint at all\n",
    }.items():
        (folder / name).write_bytes(content)
    legacy = folder / "legacy.pt"
    torch.save(good, legacy, _use_new_zipfile_serialization=False)
    (folder / "truncated_legacy.pt").write_bytes(legacy.read_bytes()[:-100])
    (folder / "truncated.pkl").write_bytes(pickle.dumps({"model": {"w": np.zeros(100)}})[:-50])
    torch.save({k: v for k, v in good.items() if k != "config"}, folder / "no_config.pt")
    wrong = dict(good["model"], **{"roi_heads.box.predictor.cls_score.weight": torch.zeros(7, 64)})
    torch.save({**good, "model": wrong}, folder / "wrong_shape.pt")
    torch.save([1, 2, 3], folder / "a_list.pt")
    torch.save({**good, "config": [1, 2]}, folder / "config_list.pt")
    return paths


@pytest.mark.parametrize(
    "name, problem",
    [
        ("truncated.pt", "not a readable checkpoint"),
        ("truncated_legacy.pt", "not a readable checkpoint"),
        ("truncated.pkl", "not a readable checkpoint"),
        ("empty.pt", "the file is empty"),
        ("garbage.pt", "not a readable checkpoint"),
        ("no_config.pt", "a maskrcnn checkpoint without its 'config' entry"),
        ("config_list.pt", "its 'config' entry is a list, not a dict"),
        (
            "wrong_shape.pt",
            "its weights do not fit the model its config describes (1 shape mismatches: "
            "roi_heads.box.predictor.cls_score.weight: (7, 64) in the file, (3, 64) in the model)",
        ),
        ("a_list.pt", "not a maskrcnn checkpoint (no format='maskrcnn' entry; it holds a list)"),
    ],
)
def test_a_damaged_or_wrong_checkpoint_is_one_user_error_naming_it(name, problem, broken):
    path = broken.folder / name
    with pytest.raises(UserError) as raised:
        maskrcnn.load(str(path))
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message, message


def test_the_older_torch_format_of_our_checkpoint_still_loads(broken, tiny_weights):
    a, b = maskrcnn.load(str(tiny_weights)).model, maskrcnn.load(str(broken.folder / "legacy.pt")).model
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---- the RNG state of training checkpoints ---------------------------------------------------


def draws() -> tuple:
    python = [random.random() for _ in range(3)] + [random.gauss(0, 1)]
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), np.random.randn(), python


def test_rng_state_loads_weights_only_and_restores_every_generator_also_in_the_older_layout(tmp_path):
    cpu = torch.device("cpu")
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # a cached Gaussian in numpy's state
    torch.save({"rng": rng_state(cpu)}, tmp_path / "rng.pt")
    older = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    expected = draws()
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"], cpu)  # torch's own safe mode
    assert draws() == expected
    set_rng_state(older, cpu)  # checkpoints written before: numpy's tuple with its array, python's tuple
    assert draws() == expected


# ---- the commands ----------------------------------------------------------------------------


def check_one_error_line(code: int, stderr: str, *texts: str) -> None:
    assert code == 1, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for text in texts:
        assert text in lines[0], lines[0]


def test_every_command_refuses_the_payload_with_one_error_line(
    evil, broken, tiny_weights, shared_data, tmp_path, capfd
):
    image = str(next((shared_data / "coco-2img/images/val2017").iterdir()))
    out = tmp_path / "out"
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(evil.pt.read_bytes())
    in_process = [
        (["predict", "--no-progress", "--weights", str(evil.pkl), "--out", str(out), image], evil.pkl),
        (["evaluate", "--no-progress", "--weights", str(evil.pth), "--data", "shapes:2", "--out", str(out)],
         evil.pth),
        (["convert", "--from", "torchvision-v1", str(evil.pkl), str(out / "c.pt")], evil.pkl),
        (["convert", "--from", "torchvision-v1", str(evil.pt), str(out / "c.pt")], evil.pt),
        (["export", "--weights", str(evil.pth), "--out", str(out / "m.onnx")], evil.pth),
        (train_args(run_dir, "solver.max_iter=1", "data.num_workers=0"), run_dir / "checkpoint.pt"),
    ]  # fmt: skip
    for argv, culprit in in_process:
        code = cli.main(argv)
        check_one_error_line(code, capfd.readouterr().err, refusal_of(culprit))
    assert (run_dir / "checkpoint.pt").read_bytes() == evil.pt.read_bytes()  # the planted file is kept
    # a model checkpoint (no optimizer state) planted as RUN/checkpoint.pt: nothing to continue
    (run_dir / "checkpoint.pt").write_bytes(tiny_weights.read_bytes())
    code = cli.main(train_args(run_dir, "solver.max_iter=1", "data.num_workers=0"))
    no_state = f"{run_dir / 'checkpoint.pt'}: holds no training state (no 'optimizer' entry)"
    check_one_error_line(code, capfd.readouterr().err, no_state)
    assert (run_dir / "checkpoint.pt").read_bytes() == tiny_weights.read_bytes()
    # damaged checkpoints through a command
    for name, text in [("truncated.pt", "not a readable checkpoint"), ("no_config.pt", "'config'"),
                       ("wrong_shape.pt", "roi_heads.box.predictor.cls_score.weight: (7, 64)")]:  # fmt: skip
        weights = broken.folder / name
        code = cli.main(["predict", "--no-progress", "--weights", str(weights), "--out", str(out), image])
        check_one_error_line(code, capfd.readouterr().err, f"{weights}: ", text)

    # real processes: predict, and serve, which must exit instead of serving
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    commands = [
        (["predict", "--no-progress", "--weights", str(evil.pt), "--out", str(out), image], evil.pt),
        (["serve", "--weights", str(evil.pth), "--port", "0"], evil.pth),
    ]
    for argv, culprit in commands:
        result = subprocess.run(
            [sys.executable, "-m", "maskrcnn", *argv],
            capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120,
        )  # fmt: skip
        check_one_error_line(result.returncode, result.stderr, refusal_of(culprit))
        assert "serving" not in result.stdout
    assert not evil.marker.exists()
    assert not (out / "predictions.json").exists() and not (out / "c.pt").exists()
