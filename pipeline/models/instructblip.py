"""InstructBLIP (a Q-Former between a frozen image encoder and the LLM: the query-based family of the method's
lineage) as a level scorer.

The prompt goes through the processor like any native model (pipeline.models.hf), which puts the query tokens'
slots before it; the Q-Former reads the instruction (the question) with its own tokenizer. The language model runs on
the prompt embeddings with the projected queries scattered into those slots, and the level logits come from its
final hidden state. One image per prompt: a video needs an InstructBLIP-Video checkpoint (`instructblipvideo`),
which qcurate does not run, so a video is a row error (video_not_supported).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import PreTrainedModel, ProcessorMixin

from pipeline.infra.media import MediaError
from pipeline.models import hf
from pipeline.qalign.recipes import GENERIC, PromptRecipe


def __getattr__(name: str):
    """The rest of the family interface (collate, load_model, ...) is the native family's."""
    return getattr(hf, name)


def prepare(
    processor: ProcessorMixin,
    frames: list[np.ndarray],
    question: str,
    answer_prefix: str,
    recipe: PromptRecipe = GENERIC,
) -> dict:
    if len(frames) != 1:
        raise MediaError(
            "video_not_supported",
            f"InstructBLIP scores one image per prompt, got {len(frames)} frames: videos need an InstructBLIP-Video "
            "checkpoint (model_type instructblipvideo), which qcurate does not run",
        )
    out = hf.prepare(processor, frames, question, answer_prefix, recipe)
    # The Q-Former reads the instruction only (as InstructBLIP was trained), not the chat frame or the answer: so a
    # training input (the answer appended) gives the Q-Former the very input the scorer gives it.
    instruction = processor.qformer_tokenizer(question, return_tensors="np")
    out["qformer_input_ids"] = instruction["input_ids"][0]
    out["qformer_attention_mask"] = instruction["attention_mask"][0]
    return out


def hidden_states(model: PreTrainedModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The language model's final hidden states [B, L, H] (its decoder, before the output head) and the mask."""
    queries = model.get_image_features(
        batch["pixel_values"],
        qformer_input_ids=batch["qformer_input_ids"],
        qformer_attention_mask=batch["qformer_attention_mask"],
        return_dict=True,
    ).pooler_output
    embeds = model.get_input_embeddings()(batch["input_ids"])
    slots = model.get_placeholder_mask(batch["input_ids"], inputs_embeds=embeds)
    embeds = embeds.masked_scatter(slots, queries.to(embeds.dtype))
    decoder = model.language_model.get_decoder()
    out = decoder(inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False)
    return out.last_hidden_state, batch["attention_mask"]
