"""Model families a scorer can run. Each family module offers the same functions:

load_processor, tokenizer_of, prepare (CPU, one item -> numpy arrays), image_major_keys, collate (a batch -> tensors),
load_model and last_hidden (a batch -> each row's final hidden state at its last real token).
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
from transformers import PretrainedConfig


def model_type(path: str, revision: str | None = None) -> str:
    config, _ = PretrainedConfig.get_config_dict(path, revision=revision)
    return config.get("model_type", "")


def family(path: str, revision: str | None = None) -> ModuleType:
    """The module that knows how to prepare inputs for and run the model in `path`."""
    if model_type(path, revision) == "mplug_owl2":
        from pipeline.models import owl2_family

        return owl2_family
    from pipeline.models import hf

    return hf


def pad_stack(arrays: list[np.ndarray], value: float) -> np.ndarray:
    """Stack along a new leading axis, padding every other axis at its end to the largest size."""
    shape = np.max([a.shape for a in arrays], axis=0)
    out = np.full((len(arrays), *shape), value, dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[(i, *(slice(0, s) for s in a.shape))] = a
    return out
