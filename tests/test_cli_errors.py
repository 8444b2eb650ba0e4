"""User errors on the command line: `train`, `evaluate`, `predict` and `show-data` given an unknown
category id, a missing image file, a missing annotation (or weights) file and a malformed option
each print one stderr line `error: ...` naming the culprit, exit with status 1 and show no traceback.

Most cases call `maskrcnn.cli.main` in this process (what the console script runs, and cheap); one
case per command runs a real `maskrcnn` process, and torchrun runs two training processes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from maskrcnn import cli
from maskrcnn.errors import UserError, UserKeyError, is_user_error
from tests.helpers import TINY

TRAIN_JSON = "coco-2img/annotations/instances_train2017.json"
TRAIN_IMAGES = "coco-2img/images/train2017"
BAD_ANNOTATION = 202758  # an annotation of the coco-2img train image, given category id 999 below
TRAIN_SETTINGS = [*TINY, "solver.ims_per_batch=1", "solver.max_iter=2"]  # seconds, were it to train
MAIN_FRAME = re.compile(r'File "[^"]*/maskrcnn/')  # a traceback frame of our package


@pytest.fixture(scope="module")
def files(tmp_path_factory, shared_data, tiny_weights) -> SimpleNamespace:
    """COCO files made from the real coco-2img train set, each with one defect; a tiny checkpoint."""
    folder = tmp_path_factory.mktemp("cli_errors")
    data = json.loads((shared_data / TRAIN_JSON).read_text())
    bad_category = json.loads(json.dumps(data))
    [ann] = [a for a in bad_category["annotations"] if a["id"] == BAD_ANNOTATION]
    ann["category_id"] = 999
    missing_image = json.loads(json.dumps(data))
    missing_image["images"][0]["file_name"] = "missing_image.jpg"
    paths = {"bad_category": bad_category, "missing_image": missing_image}
    for name, content in paths.items():
        (folder / f"{name}.json").write_text(json.dumps(content))
    images = shared_data / TRAIN_IMAGES
    return SimpleNamespace(
        folder=folder,
        weights=tiny_weights,
        image=next(images.iterdir()),
        bad_category=f"coco:{folder / 'bad_category.json'}:{images}",
        missing_image=f"coco:{folder / 'missing_image.json'}:{images}",
        missing_annotations=f"coco:{folder / 'absent.json'}:{images}",
    )


def _argv(command: str, case: str, files: SimpleNamespace, out: Path) -> tuple[list[str], list[str]]:
    """The command line of one case and the texts its error line must contain."""
    spec = {
        "unknown_category": files.bad_category,
        "missing_image": files.missing_image,
        "missing_annotations": files.missing_annotations,
    }.get(case)
    culprit = {
        "unknown_category": [f"annotation {BAD_ANNOTATION}", "unknown category id 999", "bad_category.json"],
        "missing_image": ["missing_image.jpg", "not found"],
        "missing_annotations": ["absent.json", "does not exist"],
    }.get(case, [])
    if command == "train":
        argv = ["train", "--out", str(out), "--no-progress", "--train-data"]
        if case == "malformed":  # a `key=value` override without its `=`
            argv += [files.bad_category, *TRAIN_SETTINGS, "solver.base_lr"]
            return argv, ["'solver.base_lr'", "key=value"]
        return [*argv, spec, *TRAIN_SETTINGS], culprit
    if command == "evaluate":
        argv = ["evaluate", "--no-progress", "--weights", str(files.weights), "--out", str(out)]
        if case == "malformed":  # a dataset spec without its image folder
            bad = f"coco:{files.folder / 'bad_category.json'}"
            return [*argv, "--data", bad], [repr(bad), "coco:ANNOTATIONS.json:IMAGE_DIR"]
        return [*argv, "--data", spec], culprit
    if command == "show-data":
        argv = ["show-data", "--out", str(out)]
        if case == "malformed":
            return [*argv, "--limit", "-3", files.bad_category], ["--limit", "-3"]
        return [*argv, spec], culprit
    assert command == "predict"
    argv = ["predict", "--no-progress", "--out", str(out)]
    weights = ["--weights", str(files.weights)]
    if case == "unknown_category":  # a category id the model does not have
        return [*argv, *weights, "--classes", "999", str(files.image)], ["--classes", "'999'"]
    if case == "missing_image":
        missing = files.folder / "no_such_image.jpg"
        return [*argv, *weights, str(files.image), str(missing)], [str(missing), "not found"]
    if case == "missing_annotations":  # predict reads no annotations: its other input file
        absent = files.folder / "absent.pt"
        return [*argv, "--weights", str(absent), str(files.image)], [str(absent), "not found"]
    return [*argv, *weights, "--score-thresh", "1.5", str(files.image)], ["--score-thresh", "1.5"]


def _check_one_error_line(code: int, stderr: str, culprit: list[str], *, report: bool = False) -> None:
    """One `error:` line naming the culprit; with `report`, after the report of train's data check
    (maskrcnn.engine.data_check), which starts "the training data: "."""
    assert code == 1, stderr
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    if report:
        assert lines[0].startswith("the training data: ") and not any(
            x.startswith("error") for x in lines[:-1]
        )
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for text in culprit:
        assert text in lines[0]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # warnings are not silenced: a user would see them, and they would break the one-line promise
    return subprocess.run(
        [sys.executable, "-m", "maskrcnn", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


COMMANDS = ["train", "evaluate", "predict", "show-data"]
CASES = ["unknown_category", "missing_image", "missing_annotations", "malformed"]
# one real process per command (the rest run in this process)
IN_A_PROCESS = {
    ("train", "missing_image"),  # found by the data check before training
    ("evaluate", "unknown_category"),
    ("predict", "unknown_category"),
    ("show-data", "missing_annotations"),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("command", COMMANDS)
def test_user_error_is_one_line_naming_the_culprit(command, case, files, tmp_path, capfd):
    out = tmp_path / "out"
    argv, culprit = _argv(command, case, files, out)
    report = command == "train" and case in ("unknown_category", "missing_image")  # bad data
    if (command, case) in IN_A_PROCESS:
        result = _run(*argv, cwd=tmp_path)
        _check_one_error_line(result.returncode, result.stderr, culprit, report=report)
    else:
        code = cli.main(argv)
        _check_one_error_line(code, capfd.readouterr().err, culprit, report=report)
    assert not (out / "predictions.json").exists() and not (out / "model_final.pt").exists()


@pytest.mark.parametrize(
    "override, culprit",
    [
        ("solver.base_lr=fast", "solver.base_lr: expected a number, got 'fast'"),
        ("solver.base_rl=0.1", "unknown config key 'solver.base_rl'"),
        ("solver.steps=[100,", "override 'solver.steps=[100,': the value is not valid YAML"),
    ],
)
def test_train_bad_override_values(override, culprit, files, tmp_path, capfd):
    argv = ["train", "--train-data", files.bad_category, "--out", str(tmp_path), override]
    _check_one_error_line(cli.main(argv), capfd.readouterr().err, [culprit])


def test_train_checks_the_validation_data_before_training(files, tmp_path, capfd):
    argv = ["train", "--train-data", "shapes:2", "--val-data", files.missing_annotations]
    code = cli.main([*argv, "--out", str(tmp_path), "--no-progress", *TRAIN_SETTINGS])
    _check_one_error_line(code, capfd.readouterr().err, ["absent.json", "does not exist"])
    assert not (tmp_path / "checkpoint.pt").exists()


def test_the_other_commands_report_one_line_too(files, tmp_path, capfd):
    garbage = tmp_path / "notes.pth"
    garbage.write_text("not a state dict\n")
    out, gt = str(tmp_path / "out"), str(files.folder / "missing_image.json")
    cases = [
        (["convert", "--from", "torchvision-v1", str(garbage), out], ["notes.pth", "torch.save"]),
        (["evaluate-results", "--results", str(garbage), "--annotations", gt,
          "--out", out], ["notes.pth", "not valid JSON"]),
        (["convert-dataset", files.bad_category, out], [f"annotation {BAD_ANNOTATION}"]),
        (["inspect", "--weights", str(files.weights), "--out", out, str(tmp_path / "nope.jpg")],
         ["nope.jpg", "not found"]),
        (["demo", "--out", out, "--no-progress", "solver.max_iter=many"], ["solver.max_iter", "'many'"]),
    ]  # fmt: skip
    for argv, culprit in cases:
        _check_one_error_line(cli.main(argv), capfd.readouterr().err, culprit)


def test_bad_device_names_the_option(files, tmp_path, capfd):
    argv = ["evaluate", "--weights", str(files.weights), "--data", files.bad_category, "--out", str(tmp_path)]
    code = cli.main([*argv, "--device", "gpu0"])
    _check_one_error_line(code, capfd.readouterr().err, ["--device", "'gpu0'"])


def test_debug_shows_the_traceback(files, tmp_path):
    result = _run("--debug", "show-data", files.bad_category, "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr and MAIN_FRAME.search(result.stderr)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("maskrcnn.data.problems.DataProblemsError: ")  # a UserError
    assert f"annotation {BAD_ANNOTATION}" in last


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    """Only user errors are shortened: a ValueError or KeyError that is not a UserError is a bug."""

    def broken(args):
        _, _ = [1, 2, 3]  # ValueError: too many values to unpack

    from maskrcnn.engine import dataset_commands

    monkeypatch.setattr(dataset_commands, "cmd_show_data", broken)
    with pytest.raises(ValueError, match="too many values to unpack"):
        cli.main(["show-data", "shapes:1", "--out", str(tmp_path)])
    assert not is_user_error(ValueError("x")) and not is_user_error(KeyError("x"))
    assert not is_user_error(RuntimeError("x")) and not is_user_error(TypeError("x"))
    assert is_user_error(UserError("x")) and is_user_error(FileNotFoundError("x"))
    # UserKeyError stays a KeyError (callers catching KeyError keep working) but prints unquoted
    assert isinstance(UserKeyError("x"), KeyError)
    assert str(UserKeyError("unknown key 'a'")) == "unknown key 'a'"


def test_usage_errors_exit_2(tmp_path):
    result = _run("train", "--out", str(tmp_path), cwd=tmp_path)  # --train-data is missing
    assert result.returncode == 2 and "the following arguments are required: --train-data" in result.stderr


def test_under_torchrun_each_process_prints_one_line_and_the_launch_exits_1(files, tmp_path):
    """Two CPU training processes (gloo) on a file with an unknown category id. torchrun adds its
    own report (and its own traceback) of the failed launch; our processes print one line each."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "maskrcnn", "train", "--train-data", files.bad_category, "--out", str(tmp_path)]
    command += ["--no-progress", *TRAIN_SETTINGS, "solver.ims_per_batch=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 1
    ours = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    # torchrun may stop the second process as soon as the first one has exited
    assert 1 <= len(ours) <= 2, result.stderr
    for line in ours:
        assert f"annotation {BAD_ANNOTATION}): unknown category id 999" in line
    assert not MAIN_FRAME.search(result.stderr), result.stderr
