"""mPLUG-Owl2 checkpoints (OneAlign, Q-Align IQA/IAA/VQA, DeQA-Score) as level scorers, on the native model.

The prompt is the reference's mPLUG-Owl2 chat format with one `<|image|>` slot; a video's frames fill that slot in
frame order. Images are padded to a square with the CLIP mean colour, then CLIP-preprocessed (pipeline.models.owl2).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer

from pipeline.models import PIXEL_NORM, batch_norm, compact, finish_pixels, pad_stack, pixel_norm
from pipeline.models.owl2 import (
    DEFAULT_IMAGE_TOKEN,
    MPLUGOwl2LlamaForCausalLM,
    load_image_processor,
    preprocess_frames,
    tokenize_prompt,
)
from pipeline.qalign.recipes import Q_ALIGN, PromptRecipe

VIDEO_ONE_SLOT = True  # a video's frames fill the one <|image|> slot in frame order


@dataclass
class Owl2Processor:
    tokenizer: Any
    image_processor: Any


def load_processor(path: str, revision: str | None = None, trust_remote_code: bool = False) -> Owl2Processor:
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    return Owl2Processor(tokenizer, load_image_processor(path, revision=revision))


def tokenizer_of(processor: Owl2Processor):
    return processor.tokenizer


def render_prompt(
    processor: Owl2Processor, question: str, answer_prefix: str, n_images: int, recipe: PromptRecipe = Q_ALIGN
) -> str:
    """mPLUG-Owl2's chat format (it has no chat template): the question, then the one image slot (all frames go
    there), unless the recipe puts the image first; the recipe's turn end before ASSISTANT."""
    turn = f"{DEFAULT_IMAGE_TOKEN}\n{question}" if recipe.image_first else f"{question}\n{DEFAULT_IMAGE_TOKEN}"
    return f"USER: {turn}{recipe.turn_end}ASSISTANT: {answer_prefix}"


def prepare(
    processor: Owl2Processor,
    frames: list[np.ndarray],
    question: str,
    answer_prefix: str,
    recipe: PromptRecipe = Q_ALIGN,
) -> dict:
    ids = tokenize_prompt(render_prompt(processor, question, answer_prefix, len(frames), recipe), processor.tokenizer)
    # raw 0..255 pixels (uint8 where exact), normalised by collate or on the scorer's device
    pixels = compact(preprocess_frames(frames, processor.image_processor, raw=True).numpy())
    return {
        "input_ids": np.asarray(ids, dtype=np.int64),
        "pixel_values": pixels,
        PIXEL_NORM: pixel_norm(processor.image_processor),
    }


def image_major_keys(processor: Owl2Processor, recipe: PromptRecipe = Q_ALIGN) -> frozenset[str]:
    return frozenset({"pixel_values"})


def collate(
    items: list[dict], image_major: frozenset[str], pad_token_id: int, raw_pixels: bool = False
) -> dict[str, torch.Tensor]:
    """Right-pad the token ids (masked); all frames of the batch in one tensor, with each row's frame count.
    Pixels normalised, or raw with their PIXEL_NORM record (as pipeline.models.hf.collate)."""
    ids = [item["input_ids"] for item in items]
    batch = {
        "input_ids": torch.from_numpy(pad_stack(ids, pad_token_id)),
        "attention_mask": torch.from_numpy(pad_stack([np.ones_like(i) for i in ids], 0)),
        "pixel_values": torch.from_numpy(np.concatenate([item["pixel_values"] for item in items])),
        "frame_counts": torch.tensor([len(item["pixel_values"]) for item in items]),
    }
    return finish_pixels(batch, batch_norm(items), raw_pixels)


def load_model(
    path: str, dtype: torch.dtype, device: str, revision: str | None = None, trust_remote_code: bool = False
) -> MPLUGOwl2LlamaForCausalLM:
    model = MPLUGOwl2LlamaForCausalLM.from_pretrained(path, revision=revision, dtype=dtype, attn_implementation="sdpa")
    return model.to(device).eval()


def hidden_states(
    model: MPLUGOwl2LlamaForCausalLM, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    images = list(torch.split(batch["pixel_values"], batch["frame_counts"].tolist()))
    return model.hidden_states(batch["input_ids"], images, batch["attention_mask"])
