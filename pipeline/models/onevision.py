"""LLaVA-OneVision as a level scorer, with or without torchvision.

`LlavaOnevisionProcessor` cannot be built without torchvision: its video processor needs it, and the processor
refuses to exist without one. Where AutoProcessor works (GPU images) it is used as is. Where it does not, the same
processor class is built without its video part (`ImagesOnly`): the image processor's PIL backend, the tokenizer, the
chat template and the processor's own settings from processor_config.json, so the anyres tiling and the number of
`<image>` tokens per image are transformers' own. Video frames go in as images (one `<image>` each), as the generic
recipe asks anyway. Everything else (collate, the forward pass) is the native family's.
"""

from __future__ import annotations

import json
from typing import Any

from transformers import AutoImageProcessor, AutoTokenizer, LlavaOnevisionProcessor, ProcessorMixin
from transformers.utils import cached_file, is_torchvision_available

from pipeline.models import hf, saved_chat_template

SETTINGS = ("num_image_tokens", "vision_feature_select_strategy", "vision_aspect_ratio", "image_token", "video_token")


def __getattr__(name: str):
    """The rest of the family interface (collate, load_model, ...) is the native family's."""
    return getattr(hf, name)


class ImagesOnly(LlavaOnevisionProcessor):
    """LlavaOnevisionProcessor without its video processor (the parent's __init__ passes it on positionally; with
    `video_processor` not among the attributes, ProcessorMixin drops it, and __call__ skips the video path)."""

    @classmethod
    def get_attributes(cls) -> list[str]:
        return [a for a in super().get_attributes() if a != "video_processor"]


def load_processor(path: str, revision: str | None = None, trust_remote_code: bool = False) -> ProcessorMixin:
    """The model's own processor where torchvision is there; else the same class without its video part."""
    if is_torchvision_available():
        return hf.load_processor(path, revision, trust_remote_code)
    found = cached_file(path, "processor_config.json", revision=revision, _raise_exceptions_for_missing_entries=False)
    settings: dict[str, Any] = {}
    if found:
        with open(found) as f:
            settings = {k: v for k, v in json.load(f).items() if k in SETTINGS}
    tokenizer = AutoTokenizer.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "right"  # we read each row at its own last real token
    image_processor = AutoImageProcessor.from_pretrained(path, revision=revision, backend="pil")
    return ImagesOnly(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=saved_chat_template(path, revision),
        **settings,
    )
