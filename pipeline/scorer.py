"""Score decoded media with an LMM: one forward pass per batch, the next-token logits of the level words only.

`Preprocessor` is the CPU half (no weights: safe to run in many decode workers); `Scorer` holds the model and turns a
batch of prepared items into level probabilities. Scores follow from the probabilities (pipeline.levels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipeline import methods, models
from pipeline.levels import DEFAULT_LEVELS, Levels
from pipeline.media import Media

TASKS = ("quality", "aesthetics")


@dataclass(frozen=True)
class Prompt:
    question: str
    answer_prefix: str  # the answer up to the level word: "The quality of the image is"


def prompt_for(task: str, media_type: str) -> Prompt:
    """The reference (mPLUG-Owl2 / Q-Align) prompts. Aesthetics is an image task only."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if media_type == "video" and task != "quality":
        raise ValueError(f"task {task!r} is for images; videos are scored for quality")
    noun = "image" if media_type == "image" else "video"
    return Prompt(f"How would you rate the {task} of this {noun}?", f"The {task} of the {noun} is")


def level_token_ids(tokenizer, answer_prefix: str, levels: Levels) -> list[int]:
    """The id of each level word as it follows the answer prefix (for SentencePiece: '▁good', not 'good').

    Found as the tokens that `prefix + ' ' + word` adds to `prefix`, so it holds for any tokenizer family; a word that
    is not exactly one token there cannot be read from one next-token distribution and is an error.
    """
    base = tokenizer(answer_prefix, add_special_tokens=False)["input_ids"]
    ids = []
    for word in levels.words:
        full = tokenizer(f"{answer_prefix} {word}", add_special_tokens=False)["input_ids"]
        if full[: len(base)] != base or len(full) != len(base) + 1:
            pieces = tokenizer.convert_ids_to_tokens(full[len(base) :] if full[: len(base)] == base else full)
            raise ValueError(f"level word {word!r} is not a single token after {answer_prefix!r}: {pieces}")
        if full[-1] == tokenizer.unk_token_id:
            raise ValueError(f"level word {word!r} is not in the tokenizer's vocabulary (maps to the unknown token)")
        ids.append(full[-1])
    if len(set(ids)) != len(ids):
        raise ValueError(f"level words share token ids {ids}: {levels.words}")
    return ids


class Preprocessor:
    """Turns decoded media into one item's model inputs, on CPU, from the model folder's processor alone."""

    def __init__(
        self,
        model_path: str,
        task: str = "quality",
        levels: Levels = DEFAULT_LEVELS,
        revision: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        self.family = models.family(model_path, revision)
        self.processor = self.family.load_processor(model_path, revision, trust_remote_code)
        self.task, self.levels = task, levels
        tokenizer = self.family.tokenizer_of(self.processor)
        # The level ids must be one token for every prompt this task uses (images and videos end alike in words).
        self.level_ids = level_token_ids(tokenizer, prompt_for(task, "image").answer_prefix, levels)
        if task == "quality":
            video_ids = level_token_ids(tokenizer, prompt_for(task, "video").answer_prefix, levels)
            if video_ids != self.level_ids:
                raise ValueError(f"level ids differ between image and video prompts: {self.level_ids} {video_ids}")
        prompt = prompt_for(task, "image")
        self.image_major = self.family.image_major_keys(self.processor, prompt.question, prompt.answer_prefix)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def __call__(self, media: Media) -> dict[str, np.ndarray]:
        prompt = prompt_for(self.task, media.media_type)
        return self.family.prepare(self.processor, media.frames, prompt.question, prompt.answer_prefix)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class Scorer:
    """Holds one model on one device and scores batches: bf16 + SDPA on GPU, float32 on CPU."""

    def __init__(
        self,
        model_path: str,
        task: str = "quality",
        levels: Levels = DEFAULT_LEVELS,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        self.device = device or default_device()
        self.dtype = dtype or (torch.bfloat16 if self.device.startswith("cuda") else torch.float32)
        self.preprocessor = Preprocessor(model_path, task, levels, revision, trust_remote_code)
        self.family, self.levels = self.preprocessor.family, levels
        self.model = self.family.load_model(model_path, self.dtype, self.device, revision, trust_remote_code)
        head = self.model.get_output_embeddings()
        # Only the level rows of the output head are ever needed: no full-vocabulary logits.
        ids = torch.tensor(self.preprocessor.level_ids, device=self.device)
        self.level_weight = head.weight[ids].detach().float()
        self.level_bias = head.bias[ids].detach().float() if head.bias is not None else None
        # A version made by an additive method (a pixel prompt, a llama-adapter) is the frozen model plus that
        # method's artifact: each method puts its own on the model (pipeline.methods).
        self.additions = methods.apply_all(self.model, model_path)

    @torch.inference_mode()
    def level_logits(self, prepared: list[dict[str, np.ndarray]]) -> torch.Tensor:
        """[batch, n_levels] next-token logits of the level words, float32."""
        batch = self.family.collate(prepared, self.preprocessor.image_major, self.preprocessor.pad_token_id)
        batch = {
            k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device) for k, v in batch.items()
        }
        for addition in self.additions:
            batch = addition.transform(batch)
        hidden = models.last_real(*self.family.hidden_states(self.model, batch)).float()
        logits = hidden @ self.level_weight.T
        return logits if self.level_bias is None else logits + self.level_bias

    def probabilities(self, prepared: list[dict[str, np.ndarray]]) -> np.ndarray:
        """[batch, n_levels] close-set softmax over the level words."""
        return self.levels.probabilities(self.level_logits(prepared).cpu())

    def score_media(self, media: list[Media]) -> tuple[np.ndarray, np.ndarray]:
        """Convenience for small jobs: prepare and score in one call. Returns (probabilities, scores)."""
        probs = self.probabilities([self.preprocessor(m) for m in media])
        return probs, self.levels.score(probs)
