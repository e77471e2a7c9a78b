"""Session-wide fixtures: tiny models built once per test run (real transformers classes, random weights)."""

from __future__ import annotations

import os

import pytest
from transformers.utils import logging as hf_logging

from pipeline.models.tiny import make_tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may reach a hub here
hf_logging.disable_progress_bar()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    """family -> folder of a tiny random model of that family, built once per session."""
    root = tmp_path_factory.mktemp("models")
    return {family: str(make_tiny_model(family, root / family)) for family in ("llava", "idefics3")}
