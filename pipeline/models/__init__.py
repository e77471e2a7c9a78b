"""Model families a scorer can run. Each family module offers the same functions:

load_processor, tokenizer_of, prepare (CPU, one item and a prompt recipe -> numpy arrays), image_major_keys,
collate (a batch -> tensors),
load_model and hidden_states (a batch -> the language model's final hidden states [B, L, H] and the mask of real
positions [B, L]; mPLUG-Owl2 merges the visual tokens into the sequence itself, so its mask is the merged one).
The scorer reads `last_real` of those; training reads the answer positions before it. VIDEO_ONE_SLOT says where a
video's frames go: all in the prompt's one image slot (mPLUG-Owl2), or one image each.
"""

from __future__ import annotations

import importlib
import json
from types import ModuleType

import numpy as np
import torch
from transformers import PretrainedConfig


def model_type(path: str, revision: str | None = None) -> str:
    config, _ = PretrainedConfig.get_config_dict(path, revision=revision)
    return config.get("model_type", "")


# model_type -> the module that holds its differences; every other model is a native transformers one (hf)
FAMILY_MODULES = {
    "mplug_owl2": "owl2_family",
    "qwen3_5": "qwen",
    "qwen3_vl": "qwen",
    "qwen2_5_vl": "qwen",
    "llava_onevision": "onevision",
    "instructblip": "instructblip",
}


def family(path: str, revision: str | None = None) -> ModuleType:
    """The module that knows how to prepare inputs for and run the model in `path`."""
    return importlib.import_module(f"pipeline.models.{FAMILY_MODULES.get(model_type(path, revision), 'hf')}")


def saved_chat_template(path: str, revision: str | None = None) -> str | None:
    """The chat template a checkpoint ships: chat_template.jinja (current layout) or chat_template.json (older)."""
    from transformers.utils import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        found = cached_file(path, name, revision=revision, _raise_exceptions_for_missing_entries=False)
        if found:
            with open(found) as f:
                return f.read() if name.endswith(".jinja") else json.load(f)["chat_template"]
    return None


def pad_stack(arrays: list[np.ndarray], value: float) -> np.ndarray:
    """Stack along a new leading axis, padding every other axis at its end to the largest size."""
    shape = np.max([a.shape for a in arrays], axis=0)
    out = np.full((len(arrays), *shape), value, dtype=arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[(i, *(slice(0, s) for s in a.shape))] = a
    return out


def concat_padded(arrays: list[np.ndarray], value: float) -> np.ndarray:
    """Concatenate along the first axis, padding every other axis at its end to the largest size."""
    if len({a.shape[1:] for a in arrays}) == 1:  # the usual case (fixed-size images): no padding copy per batch
        return np.concatenate(arrays)
    shape = np.max([a.shape[1:] for a in arrays], axis=0)
    padded = [
        np.pad(a, [(0, 0), *((0, s - n) for s, n in zip(shape, a.shape[1:]))], constant_values=value) for a in arrays
    ]
    return np.concatenate(padded)


def last_real(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's hidden state at its last real position: [B, L, H] and a right-padded mask [B, L] -> [B, H]."""
    last = mask.sum(dim=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def check_recipe(family: ModuleType, recipe) -> None:
    """A recipe whose video frame placement the family cannot do is refused before any item is prepared."""
    wanted = recipe.video.one_slot
    if wanted is not None and wanted != family.VIDEO_ONE_SLOT:
        how = "in one image slot" if wanted else "as one image each"
        raise ValueError(
            f"prompt recipe {recipe.name!r} gives video frames {how}; {family.__name__} cannot: choose another recipe"
        )
