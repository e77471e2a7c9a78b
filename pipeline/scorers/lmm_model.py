"""Score decoded media with an LMM: one forward pass per batch, the next-token logits of the level words only.

`Preprocessor` is the CPU half (no weights: safe to run in many decode workers); `Scorer` holds the model and turns a
batch of prepared items into level probabilities. Scores follow from the probabilities (pipeline.qalign.levels).
"""

from __future__ import annotations

import numpy as np
import torch

from pipeline import methods, models
from pipeline.infra.media import Media
from pipeline.qalign import recipes
from pipeline.qalign.levels import DEFAULT_LEVELS, Levels
from pipeline.qalign.recipes import TASKS, Prompt  # noqa: F401  (re-exported: callers import them from here)


def prompt_for(task: str, media_type: str) -> Prompt:
    """The reference (mPLUG-Owl2 / Q-Align) prompts, which the generic recipe asks too."""
    return recipes.GENERIC.prompt(task, media_type)


def level_token_ids(tokenizer, answer_prefix: str, levels: Levels) -> list[int]:
    """The id of each level word as it follows the answer prefix (for SentencePiece: '▁good', not 'good'), the
    generic and q-align rule; a word that is not exactly one token there is an error (pipeline.qalign.recipes)."""
    return recipes.GENERIC.level_ids(tokenizer, answer_prefix, levels)


class Preprocessor:
    """Turns decoded media into one item's model inputs, on CPU, from the model folder's processor alone.

    `recipe` names a prompt recipe (pipeline.qalign.recipes); None: the checkpoint's own (qcurate.json or model_type).
    """

    def __init__(
        self,
        model_path: str,
        task: str = "quality",
        levels: Levels = DEFAULT_LEVELS,
        revision: str | None = None,
        trust_remote_code: bool = False,
        recipe: str | None = None,
    ) -> None:
        self.family = models.family(model_path, revision)
        self.recipe = recipes.for_checkpoint(model_path, revision, recipe)
        models.check_recipe(self.family, self.recipe)
        self.processor = self.family.load_processor(model_path, revision, trust_remote_code)
        self.recipe.check_processor(self.processor)
        self.task, self.levels = task, levels
        tokenizer = self.family.tokenizer_of(self.processor)
        # The level ids must be one token for every prompt this task uses (images and videos end alike in words).
        self.level_ids = self.recipe.level_ids(tokenizer, self.recipe.prompt(task, "image").answer_prefix, levels)
        if task == "quality":
            video_ids = self.recipe.level_ids(tokenizer, self.recipe.prompt(task, "video").answer_prefix, levels)
            if video_ids != self.level_ids:
                raise ValueError(f"level ids differ between image and video prompts: {self.level_ids} {video_ids}")
        self.image_major = self.family.image_major_keys(self.processor, self.recipe)
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def prompt_text(self, media_type: str, n_frames: int = 1) -> str:
        """The prompt as text, before the processor expands image slots: what the recipe asks this model."""
        prompt = self.recipe.prompt(self.task, media_type)
        return self.family.render_prompt(self.processor, prompt.question, prompt.answer_prefix, n_frames, self.recipe)

    def __call__(self, media: Media) -> dict[str, np.ndarray]:
        prompt = self.recipe.prompt(self.task, media.media_type)
        frames = self.recipe.frames(media.frames, media.media_type, self.processor)
        return self.family.prepare(self.processor, frames, prompt.question, prompt.answer_prefix, self.recipe)


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
        recipe: str | None = None,
        model: torch.nn.Module | None = None,
    ) -> None:
        """`model`: the model of `model_path` already built on the device (benchmarks of random full-size models,
        which would otherwise be loaded back from disk through the CPU); None: loaded from `model_path`."""
        self.device = device or default_device()
        self.dtype = dtype or (torch.bfloat16 if self.device.startswith("cuda") else torch.float32)
        self.preprocessor = Preprocessor(model_path, task, levels, revision, trust_remote_code, recipe)
        self.family, self.levels = self.preprocessor.family, levels
        if model is None:
            model = self.family.load_model(model_path, self.dtype, self.device, revision, trust_remote_code)
        self.model = model
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
        # Raw pixels (uint8) cross to the device and are normalised there, in the model dtype.
        batch = self.family.collate(
            prepared, self.preprocessor.image_major, self.preprocessor.pad_token_id, raw_pixels=True
        )
        batch = models.to_device(batch, self.device, self.dtype)
        for addition in self.additions:
            batch = addition.transform(batch)
        hidden = models.last_real(*self.family.hidden_states(self.model, batch)).float()
        logits = hidden @ self.level_weight.T
        return logits if self.level_bias is None else logits + self.level_bias

    def probabilities(self, prepared: list[dict[str, np.ndarray]]) -> np.ndarray:
        """[batch, n_levels] close-set softmax over the level words."""
        return self.levels.probabilities(self.level_logits(prepared).cpu().numpy())

    def score_media(self, media: list[Media]) -> tuple[np.ndarray, np.ndarray]:
        """Convenience for small jobs: prepare and score in one call. Returns (probabilities, scores)."""
        probs = self.probabilities([self.preprocessor(m) for m in media])
        return probs, self.levels.score(probs)
