"""Qwen vision-language models (Qwen3.5 / Q-ReAlign, Qwen3-VL, Qwen2.5-VL) as level scorers, with or without
torchvision.

These processors (`Qwen3VLProcessor`, `Qwen2_5_VLProcessor`) cannot even be built without torchvision: their video
processor needs it, and the processor refuses to exist without one. Where AutoProcessor works (GPU images), it is
used as is. Where it does not, `QwenImageProcessor` does the processor's image path from its parts: the PIL image
processor (`Qwen2VLImageProcessorPil`), the tokenizer and the chat template; video frames are given as images, which
is what the prompt recipes ask anyway. Both produce the same model inputs: input_ids with each `<|image_pad|>`
expanded to its image's merged patch count, mm_token_type_ids (1 at image tokens: mRoPE's position ids are computed
from them), pixel_values [patches, dim] and image_grid_thw [images, 3].

Batches are right-padded (pipeline.models.hf.collate): the models compute mRoPE positions over the real tokens only
(get_rope_index with the attention mask), and Qwen3.5's linear-attention layers are causal recurrences, so right
padding never reaches a real position; each row is read at its own last real token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from transformers import AutoImageProcessor, AutoTokenizer, ProcessorMixin
from transformers.utils import is_torchvision_available

from pipeline.models import hf, saved_chat_template
from pipeline.qalign.recipes import GENERIC, PromptRecipe, check_aspect_ratio

IMAGE_TOKEN = "<|image_pad|>"


# Qwen's processors (and qwen_vl_utils) refuse an image whose longer side is over 200 times its shorter one
MAX_ASPECT_RATIO = 200


def __getattr__(name: str):
    """The rest of the family interface (collate, load_model, ...) is the native family's."""
    return getattr(hf, name)


def prepare(
    processor: ProcessorMixin | QwenImageProcessor,
    frames: list[np.ndarray],
    question: str,
    answer_prefix: str,
    recipe: PromptRecipe = GENERIC,
) -> dict:
    """The native preparation, after the aspect-ratio check: an image Qwen cannot take is a row error of its own
    kind (aspect_ratio, naming the ratio and the limit), not the processor's ValueError."""
    for frame in frames:
        check_aspect_ratio(frame, MAX_ASPECT_RATIO, "Qwen")
    return hf.prepare(processor, frames, question, answer_prefix, recipe)


@dataclass
class QwenImageProcessor:
    """The image path of a Qwen VL processor, built from its parts (no torchvision, no video processor)."""

    tokenizer: Any
    image_processor: Any
    chat_template: str

    def apply_chat_template(self, conversation: list[dict], add_generation_prompt: bool = False, **options) -> str:
        return self.tokenizer.apply_chat_template(
            conversation,
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
            **options,
        )

    def __call__(
        self,
        text: list[str],
        images: list[list[np.ndarray]],
        return_tensors: str = "np",
        input_data_format: str = "channels_last",
        **image_options: Any,
    ) -> dict:
        """One prompt with its images -> the processor's outputs, batch dimension kept (as the real processor).
        `image_options` go to the image processor, as the real processor routes them (e.g. do_normalize=False)."""
        if len(text) != 1:
            raise ValueError("one prompt at a time")
        frames = images[0]
        n_slots = text[0].count(IMAGE_TOKEN)
        if n_slots != len(frames):
            raise ValueError(f"the prompt has {n_slots} image slots for {len(frames)} images")
        out: dict[str, np.ndarray] = {}
        pieces = text[0].split(IMAGE_TOKEN)
        if frames:
            pixels = self.image_processor(
                images=list(frames), return_tensors="np", input_data_format=input_data_format, **image_options
            )
            out["pixel_values"] = np.asarray(pixels["pixel_values"])
            out["image_grid_thw"] = np.asarray(pixels["image_grid_thw"])
            merge = self.image_processor.merge_size**2
            counts = [int(np.prod(grid)) // merge for grid in out["image_grid_thw"]]
            expanded = pieces[0] + "".join(IMAGE_TOKEN * n + piece for n, piece in zip(counts, pieces[1:]))
        else:
            expanded = text[0]
        ids = np.asarray(self.tokenizer(expanded)["input_ids"], dtype=np.int64)
        image_id = self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        return {
            "input_ids": ids[None],
            "attention_mask": np.ones_like(ids)[None],
            "mm_token_type_ids": (ids == image_id).astype(np.int64)[None],
            **out,
        }


def load_processor(
    path: str, revision: str | None = None, trust_remote_code: bool = False
) -> ProcessorMixin | QwenImageProcessor:
    """The model's own processor where torchvision is there; else its image path built from the parts."""
    if is_torchvision_available():
        return hf.load_processor(path, revision, trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    image_processor = AutoImageProcessor.from_pretrained(path, revision=revision, backend="pil")
    return QwenImageProcessor(tokenizer, image_processor, saved_chat_template(path, revision) or "")
