"""`lmm`: an LMM asked "the quality of the image is <level>", read back as level probabilities and a score.

Preparation decodes the item and runs the model's own processor on it (pipeline.scorers.lmm_model.Preprocessor); the
device step is one forward pass per batch, reading the level words' next-token logits only
(pipeline.scorers.lmm_model.Scorer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from pipeline import registry
from pipeline.infra.media import MediaOptions, draft_side_for, load_media
from pipeline.qalign import recipes
from pipeline.qalign.levels import DEFAULT_LEVELS, Levels
from pipeline.qalign.syllabus import augment
from pipeline.registry import checkpoint
from pipeline.scorers import Prepared, ScorerArgs
from schemas.scores import ScoreColumns, level_columns


@dataclass
class LevelScorer:
    model: str
    model_path: str
    revision: str | None = None
    task: str = "quality"
    levels: Levels = DEFAULT_LEVELS
    recipe: str | None = None  # None: the checkpoint's own
    recipe_name: str = ""  # the recipe that applies, resolved on the driver from the small config files
    recipe_version: int = 1
    recipe_spec: dict = field(default_factory=dict)  # its fingerprint: what a rerun into the output must match
    name: str = "lmm"
    reads: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    # frames is an output column; tokens (the prompt's length) only orders rows into batches of like shape
    # (pipeline.scoring.stages.order_by_shape) and is not written
    prepared_columns: tuple[str, ...] = ("frames", "tokens")
    runs_on_device: bool = True
    constants: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.constants = {"task": self.task}

    @property
    def columns(self) -> ScoreColumns:
        return level_columns(self.levels)

    @property
    def videos_allowed(self) -> bool:
        return self.task == "quality"  # the other tasks' prompts speak of images

    def identity(self) -> dict:
        return {
            "scorer": self.name,
            "model": self.model,
            "model_revision": self.revision,
            "prompt_recipe": self.recipe_name,
            "recipe_version": self.recipe_version,
            "recipe": self.recipe_spec,
            "task": self.task,
            "levels": list(self.levels.words),
            "score_range": list(self.columns.score_range),
        }

    def preparer(self, options: MediaOptions, crop: int | None = None) -> Callable[[dict], Prepared]:
        from pipeline.scorers.lmm_model import Preprocessor

        pre = Preprocessor(registry.local_path(self.model_path), self.task, self.levels, recipe=self.recipe)
        options = pre.recipe.video.media_options(options)  # e.g. Q-ReAlign's 8 uniform frames
        if pre.recipe.image_resize is not None:
            # the recipe resizes from the full image, as its authors' code decodes it (no reduced-scale JPEG decode)
            options = replace(options, draft=False)
        elif crop is None:  # a crop is in source pixels: the source must keep its scale
            image_processor = getattr(pre.processor, "image_processor", pre.processor)
            # Every size the processor may resize to: anyres grids (LLaVA-NeXT/OneVision) reach far above `size`.
            settings = ("size", "crop_size", "image_grid_pinpoints", "max_image_size", "max_pixels")
            side = draft_side_for(*(getattr(image_processor, name, None) for name in settings))
            options = replace(options, draft_side=side)

        def prepare(row: dict) -> Prepared:
            media = load_media(row["uri"], row["media_type"], options)
            media.frames = augment(media.frames, crop, False, None)
            inputs = pre(media)
            return Prepared(inputs, {"frames": len(media.frames), "tokens": len(inputs["input_ids"])})

        return prepare

    def device_step(self, device: str) -> Callable[[list[Any]], dict[str, np.ndarray]]:
        from pipeline.scorers.lmm_model import Scorer

        scorer = Scorer(registry.local_path(self.model_path), self.task, self.levels, device, recipe=self.recipe)

        def step(inputs: list[Any]) -> dict[str, np.ndarray]:
            probs = scorer.probabilities(inputs)
            return {**{c: probs[:, j] for j, c in enumerate(self.levels.columns)}, "score": self.levels.score(probs)}

        return step


def create(name: str, args: ScorerArgs) -> LevelScorer:
    if not args.model_path:
        raise ValueError("--scorer lmm needs --model (a folder, registry entry or hub id)")
    # Only the small config files: the weights are the actors' to fetch, on their own nodes.
    recipe = recipes.for_checkpoint(checkpoint.metadata_folder(args.model_path), None, args.recipe)
    # The five standard words score on the recipe's published scale; a level set of one's own brings its own scores.
    levels = recipe.levels() if args.levels == DEFAULT_LEVELS else args.levels
    return LevelScorer(
        args.model,
        args.model_path,
        args.revision,
        args.task,
        levels,
        args.recipe,
        recipe.name,
        recipe.version,
        recipe.fingerprint(),
    )
