"""Native transformers image-text-to-text models (LLaVA, Idefics3/SmolVLM, LLaVA-OneVision, ...) as level scorers.

A prompt goes through the model's own processor and chat template; frames of a video are passed as that many images
in the one user turn. The CPU side (`prepare`) turns one item into numpy arrays; the model side (`collate`,
`hidden_states`) right-pads a batch, masks the padding and runs the language model.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, PreTrainedModel, ProcessorMixin

from pipeline.models import (
    PIXEL_NORM,
    RAW_PIXELS,
    batch_norm,
    compact,
    concat_padded,
    finish_pixels,
    pad_stack,
    pixel_norm,
    saved_chat_template,
)
from pipeline.qalign.recipes import GENERIC, PromptRecipe

VIDEO_ONE_SLOT = False  # a video's frames go in as that many images
# per-token outputs of one prompt (right-padded in a batch); InstructBLIP's Q-Former reads the prompt too
TEXT_KEYS = (
    "input_ids",
    "attention_mask",
    "token_type_ids",
    "mm_token_type_ids",
    "qformer_input_ids",
    "qformer_attention_mask",
)


def load_processor(path: str, revision: str | None = None, trust_remote_code: bool = False) -> ProcessorMixin:
    processor = AutoProcessor.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    processor.tokenizer.padding_side = "right"  # we read each row at its own last real token
    if processor.chat_template is None:
        # Some processors (InstructBLIP's) do not take a chat template in their constructor, so from_pretrained
        # drops the one the checkpoint ships: without it the prompt would not be the model's.
        processor.chat_template = saved_chat_template(path, revision)
    return processor


def tokenizer_of(processor: ProcessorMixin):
    return processor.tokenizer


def render_prompt(
    processor: ProcessorMixin, question: str, answer_prefix: str, n_images: int, recipe: PromptRecipe = GENERIC
) -> str:
    """The chat template up to the assistant turn (with the recipe's options and image placement), then the start
    of the answer whose next word is the level, joined the recipe's way (pipeline.qalign.recipes: stem_space)."""
    images = [{"type": "image"}] * n_images
    question_part = [{"type": "text", "text": question}]
    content = images + question_part if recipe.image_first else question_part + images
    text = processor.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, **recipe.chat_options
    )
    if recipe.stem_space or not text[-1:].isspace():
        return f"{text} {answer_prefix}"
    return text + answer_prefix


def prepare(
    processor: ProcessorMixin,
    frames: list[np.ndarray],
    question: str,
    answer_prefix: str,
    recipe: PromptRecipe = GENERIC,
) -> dict:
    """One item's model inputs as numpy arrays, batch dimension dropped from the text keys; pixels raw (the
    processor's geometric steps only, uint8 where exact) with the record of how to finish them (PIXEL_NORM)."""
    text = render_prompt(processor, question, answer_prefix, len(frames), recipe)
    # The channel axis is stated, never inferred: the processor would guess channels-first for an HxWx3 array whose
    # first axis is 1 or 3 (a 3-pixel-high strip, a 1x1 image) and score misread pixels.
    out = processor(
        text=[text],
        images=[list(frames)],
        return_tensors="np",
        input_data_format="channels_last",
        **RAW_PIXELS,
        **recipe.processor_options,
    )
    item = {k: (v[0] if k in TEXT_KEYS else v) for k, v in out.items()}
    item["pixel_values"] = compact(item["pixel_values"])
    if "pixel_attention_mask" in item:  # Idefics3's 0/1 mask comes as int64: 8 bytes a pixel position, 1 suffice
        item["pixel_attention_mask"] = item["pixel_attention_mask"].astype(np.uint8)
    item[PIXEL_NORM] = pixel_norm(processor.image_processor)
    return item


def image_major_keys(processor: ProcessorMixin, recipe: PromptRecipe = GENERIC) -> frozenset[str]:
    """Which non-text outputs are stacked per image (concatenate) rather than per prompt (pad then stack).

    Processors differ (LLaVA: pixel_values [n_images, 3, H, W]; Idefics3: [1, n_images, 3, H, W]), so ask the
    processor once with a two-image prompt instead of hard-coding a list per family.
    """
    probe = np.full((32, 32, 3), 128, dtype=np.uint8)
    prompt = recipe.prompt("quality", "image")
    out = prepare(processor, [probe, probe], prompt.question, prompt.answer_prefix, recipe)
    return frozenset(k for k, v in out.items() if k not in (*TEXT_KEYS, PIXEL_NORM) and v.shape[0] != 1)


def collate(
    items: list[dict], image_major: frozenset[str], pad_token_id: int, raw_pixels: bool = False
) -> dict[str, torch.Tensor]:
    """Right-pad text to the longest row (masked), and batch the pixel inputs the processor's way.

    Pixels come out normalised (the model's input, on CPU), or with raw_pixels raw and their PIXEL_NORM record, for
    the scorer to normalise on its device (pipeline.models.to_device)."""
    batch = {}
    for key in (k for k in items[0] if k != PIXEL_NORM):
        arrays = [item[key] for item in items]
        if key in TEXT_KEYS:
            batch[key] = pad_stack(arrays, pad_token_id if key == "input_ids" else 0)
        elif key in image_major:
            # LLaVA-OneVision cuts each image into its own number of tiles: padded with zero tiles, which the
            # model drops (it counts each image's tiles from image_sizes)
            batch[key] = concat_padded(arrays, 0)
        else:  # per-prompt arrays with a leading 1: padding images are all zeros, which the models skip
            batch[key] = pad_stack([a[0] for a in arrays], 0)
    if "pixel_attention_mask" in batch:
        batch["pixel_attention_mask"] = batch["pixel_attention_mask"].astype(np.int64)  # the processor's dtype
    tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
    return finish_pixels(tensors, batch_norm(items), raw_pixels)


def load_model(
    path: str, dtype: torch.dtype, device: str, revision: str | None = None, trust_remote_code: bool = False
) -> PreTrainedModel:
    model = AutoModelForImageTextToText.from_pretrained(
        path,
        revision=revision,
        dtype=dtype,
        attn_implementation="sdpa",
        use_safetensors=True,
        trust_remote_code=trust_remote_code,
    )
    return model.to(device).eval()


def hidden_states(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The language model's final hidden states [B, L, H] and the mask of real tokens [B, L]."""
    return model.model(**batch, use_cache=False).last_hidden_state, batch["attention_mask"]
