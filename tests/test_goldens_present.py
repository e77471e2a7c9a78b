"""A golden test fails, never skips, when its golden folder is missing (a skipped golden would pass unseen)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a pytest subprocess (imports torch)
def test_the_owl2_golden_test_fails_when_its_folder_is_missing(tmp_path):
    env = {**os.environ, "OWL2_GOLDEN": str(tmp_path / "absent"), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_owl2_golden.py"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
        env=env,
    )
    out = result.stdout + result.stderr
    assert result.returncode not in (0, 5), out  # 0: passed, 5: nothing collected (what a module skip gives)
    assert f"no golden folder at {tmp_path / 'absent'}" in out and "skipped" not in out, out
