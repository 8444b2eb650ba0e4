"""What CI relies on: missing optional tools fail under CI instead of skipping, and the import
contracts in pyproject.toml catch a model that reads files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail_in_ci
from tests.helpers import REPO_ROOT


def test_a_missing_tool_skips_here_and_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium is not installed .CI is set"):
        skip_or_fail_in_ci("chromium is not installed")
    for value in ("", "0", "false"):
        monkeypatch.setenv("CI", value)
        with pytest.raises(pytest.skip.Exception, match="chromium is not installed"):
            skip_or_fail_in_ci("chromium is not installed")


def test_layers_contract_rejects_a_model_that_imports_inputs(tmp_path):
    lint = Path(sys.executable).parent / "lint-imports"
    if not lint.is_file():
        skip_or_fail_in_ci("lint-imports is not installed (the dev extra installs import-linter)")
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO_ROOT / "maskrcnn", tmp_path / "maskrcnn", ignore=skip)
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "maskrcnn/model/anchors.py", "a") as f:
        f.write("\nfrom ..inputs import load_image  # noqa: E402\n")
    with open(tmp_path / "maskrcnn/engine/optim.py", "a") as f:
        f.write("\nfrom ..cli import main  # noqa: E402\n")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([str(lint)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "maskrcnn.model is not allowed to import maskrcnn.inputs" in result.stdout
    assert "maskrcnn.model.anchors -> maskrcnn.inputs" in result.stdout
    assert "maskrcnn.engine is not allowed to import maskrcnn.cli" in result.stdout
