"""The code version written into every output's and registry version's record."""

from __future__ import annotations

import subprocess
from importlib.metadata import version
from pathlib import Path


def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            text=True,
            capture_output=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{version('qcurate')}+{sha}" if sha else version("qcurate")
