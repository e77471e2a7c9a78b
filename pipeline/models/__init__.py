"""Model families a scorer can run. Each family module offers the same functions:

load_processor, tokenizer_of, prepare (CPU, one item and a prompt recipe -> numpy arrays), image_major_keys,
collate (a batch -> tensors),
load_model and hidden_states (a batch -> the language model's final hidden states [B, L, H] and the mask of real
positions [B, L]; mPLUG-Owl2 merges the visual tokens into the sequence itself, so its mask is the merged one).
The scorer reads `last_real` of those; training reads the answer positions before it. VIDEO_ONE_SLOT says where a
video's frames go: all in the prompt's one image slot (mPLUG-Owl2), or one image each.

Pixels leave `prepare` raw: the processor's geometric steps (pad, resize, crop, tiling, patchifying) are done, its
rescale and normalise steps are not, and the values are stored as uint8 where they are exact 8-bit values (4x fewer
bytes through Ray's object store than float32). `PIXEL_NORM` in each item says how to finish them; `collate` does it
on CPU by default (training), and the scorer asks for raw pixels and finishes them on its device (`to_device`).
"""

from __future__ import annotations

import importlib
import json
from types import ModuleType

import numpy as np
import torch

from pipeline.qalign.recipes import model_type

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
    out = np.full((len(arrays), *shape), value, dtype=np.result_type(*arrays))  # uint8 and float pixels: float
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


# The item key that says how its raw pixels become the model's: [scale, mean (3), std (3)] of the processor's own
# rescale and normalise steps (1, 0, 1 where the processor turns a step off). Not a model input.
PIXEL_NORM = "pixel_norm"
# prepare's processor call: the geometric steps only
RAW_PIXELS = {"do_rescale": False, "do_normalize": False}


def pixel_norm(image_processor) -> np.ndarray:
    """The processor's rescale and normalise steps, as PIXEL_NORM holds them."""
    scale = float(image_processor.rescale_factor) if image_processor.do_rescale else 1.0
    mean, std = np.zeros(3), np.ones(3)
    if image_processor.do_normalize:  # a scalar mean/std applies to every channel, as the processor does it
        mean = np.broadcast_to(np.asarray(image_processor.image_mean, np.float64), 3)
        std = np.broadcast_to(np.asarray(image_processor.image_std, np.float64), 3)
    return np.concatenate([[scale], mean, std])


def compact(pixels: np.ndarray) -> np.ndarray:
    """uint8 when every value is an exact 8-bit value (what resizing, cropping and padding 8-bit images with the PIL
    or torchvision backends give), else float32 unchanged: a processor whose geometric steps make fractions keeps
    them, and `normalise` handles both."""
    pixels = np.asarray(pixels)
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.size and (pixels.min() < 0 or pixels.max() > 255 or not np.array_equal(pixels, np.round(pixels))):
        return pixels.astype(np.float32, copy=False)
    return pixels.astype(np.uint8)


def _lookup_table(norm: np.ndarray) -> np.ndarray:
    """[3, 256] float32: each channel's model value of every 8-bit value, computed as the PIL backend computes it
    (float64 rescale rounded to float32, then float32 (x - mean) / std), so uint8 pixels normalise bit for bit."""
    scale, mean, std = norm[0], norm[1:4].astype(np.float32), norm[4:7].astype(np.float32)
    rescaled = (np.arange(256, dtype=np.float64) * scale).astype(np.float32)
    return (rescaled[None, :] - mean[:, None]) / std[:, None]


def _channels_at(pixels: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The pixels viewed with channels on an axis of their own, and the broadcast shape of a per-channel vector:
    [..., 3, H, W] images keep their layout; 2-D pixel_values are Qwen's flattened patches, whose columns are
    channel-major (channel, time, row, column), viewed as [patches, 3, rest]."""
    if pixels.ndim == 2:
        return pixels.reshape(pixels.shape[0], 3, -1), (1, 3, 1)
    return pixels, (3, 1, 1)


def normalise(pixels: torch.Tensor, norm: np.ndarray, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Raw pixels (uint8 or float, as `prepare` left them) -> the processor's normalised float32 pixels, on the
    pixels' device. `valid` ([..., H, W], Idefics3's pixel_attention_mask): positions outside it become 0, as the
    processor pads after normalising (and as the all-zero padding images that the model skips must stay)."""
    shaped, channel_shape = _channels_at(pixels)
    if pixels.dtype == torch.uint8:  # a table lookup: exact, and one gather on the device
        table = torch.from_numpy(_lookup_table(norm)).to(pixels.device)
        offsets = torch.arange(3, device=pixels.device, dtype=torch.int32).view(channel_shape) * 256
        out = table.flatten()[shaped.int() + offsets]
    else:
        mean, std = (torch.tensor(v, dtype=torch.float32, device=pixels.device) for v in (norm[1:4], norm[4:7]))
        rescaled = (shaped.double() * float(norm[0])).float()
        out = (rescaled - mean.view(channel_shape)) / std.view(channel_shape)
    out = out.reshape(pixels.shape)
    if valid is not None:
        out = torch.where(valid.bool().unsqueeze(-3), out, 0.0)
    return out


def batch_norm(items: list[dict]) -> np.ndarray | None:
    """The batch's PIXEL_NORM (one processor made every item, so one record), or None for items without pixels."""
    norms = [item[PIXEL_NORM] for item in items if PIXEL_NORM in item]
    if not norms:
        return None
    if any(not np.array_equal(n, norms[0]) for n in norms):
        raise ValueError("a batch mixes items prepared with different pixel normalisations")
    return norms[0]


def finish_pixels(batch: dict[str, torch.Tensor], norm: np.ndarray | None, raw: bool) -> dict[str, torch.Tensor]:
    """The end of every family's collate: normalise the pixels here (raw=False), or leave them raw and carry the
    record for `to_device` (raw=True: the scorer, which normalises on its device)."""
    if norm is None or "pixel_values" not in batch:
        return batch
    if raw:
        return {**batch, PIXEL_NORM: torch.from_numpy(norm)}
    return {**batch, "pixel_values": normalise(batch["pixel_values"], norm, batch.get("pixel_attention_mask"))}


def to_device(batch: dict[str, torch.Tensor], device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Move a collated batch to the device: raw pixels travel as they are (uint8: a quarter of float32's bytes over
    PCIe) and are normalised there, then every float input takes the model dtype."""
    batch = dict(batch)
    norm = batch.pop(PIXEL_NORM, None)
    moved = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
    if norm is not None:
        moved["pixel_values"] = normalise(moved["pixel_values"], norm.numpy(), moved.get("pixel_attention_mask"))
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in moved.items()}


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
