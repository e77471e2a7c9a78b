"""Prompt recipes: how a published scorer was asked, so that it is run the way it was trained.

Each scorer was trained with its own prompt (DESIGN section 2). A recipe names everything that changes the tokens a
model sees or the ids its score is read from:

- the question and the answer stem (templates over the task and the media noun),
- where the image goes in the user turn (before or after the question),
- the options the chat template is applied with (Qwen3.5: `enable_thinking=False`),
- the rule that finds each level word's token id,
- the video frame policy: how frames are sampled, resized, and placed (one image slot, or one image each).

The recipe is chosen from the checkpoint: a `qcurate.json` beside `config.json` that names it (`{"prompt_recipe":
"q-realign"}`, written into every retrained version), else the config's `model_type`; `--prompt-recipe NAME`
overrides both. The model families (pipeline.models) render a recipe; they hold no prompt text of their own.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from pipeline.infra.media import MediaOptions
from pipeline.qalign.levels import Levels

TASKS = ("quality", "aesthetics")
RECIPE_FILE = "qcurate.json"  # beside config.json: {"prompt_recipe": NAME}


@dataclass(frozen=True)
class Prompt:
    question: str
    answer_prefix: str  # the answer up to the level word: "The quality of the image is"


@dataclass(frozen=True)
class FramePolicy:
    """How a video becomes frames. `uniform=None`: at the job's --fps with its --max-frames cap; else exactly this
    many frames spread uniformly over the video (first and last included). `long_side`: frames are resized so their
    longer side is this many pixels. `one_slot`: True, the frames fill the prompt's one image slot in order
    (mPLUG-Owl2); False, each frame is given as an image of its own; None, the family's own way."""

    uniform: int | None = None
    long_side: int | None = None
    one_slot: bool | None = None

    def media_options(self, options: MediaOptions) -> MediaOptions:
        """The decode options for this policy, from the job's."""
        if self.uniform is None:
            return options
        return dataclasses.replace(options, uniform_frames=self.uniform)

    def resize(self, frames: list[np.ndarray]) -> list[np.ndarray]:
        if self.long_side is None:
            return frames
        out = []
        for frame in frames:
            h, w = frame.shape[:2]
            scale = self.long_side / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            out.append(np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC)))
        return out


@dataclass(frozen=True)
class PromptRecipe:
    name: str
    description: str
    question: str = "How would you rate the {task} of this {noun}?"
    stem: str = "The {task} of the {noun} is"
    image_first: bool = False  # the image(s) before the question in the user turn
    # mPLUG-Owl2's chat format (it has no chat template): what ends the user turn before `ASSISTANT:`. Families with
    # a chat template ignore it.
    turn_end: str = "\n"
    template_options: tuple[tuple[str, Any], ...] = ()  # extra keyword arguments of apply_chat_template
    # "after_stem": the token that `stem + " " + word` adds to `stem` (SentencePiece: '▁good');
    # "space_word": tokenizer(" " + word, add_special_tokens=False).input_ids[0] (Q-ReAlign's levels.py).
    level_id_rule: str = "after_stem"
    video: FramePolicy = field(default_factory=FramePolicy)

    def prompt(self, task: str, media_type: str) -> Prompt:
        """The question and answer stem for a task and a media type. Aesthetics is an image task only."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        if media_type == "video" and task != "quality":
            raise ValueError(f"task {task!r} is for images; videos are scored for quality")
        noun = "image" if media_type == "image" else "video"
        return Prompt(self.question.format(task=task, noun=noun), self.stem.format(task=task, noun=noun))

    @property
    def chat_options(self) -> dict[str, Any]:
        return dict(self.template_options)

    def level_ids(self, tokenizer, answer_prefix: str, levels: Levels) -> list[int]:
        """The token id each level word is read from, by this recipe's rule; every word must be one known token."""
        if self.level_id_rule == "after_stem":
            ids = [_id_after(tokenizer, answer_prefix, word) for word in levels.words]
        else:
            ids = [_space_word_id(tokenizer, word) for word in levels.words]
        if len(set(ids)) != len(ids):
            raise ValueError(f"level words share token ids {ids}: {levels.words}")
        return ids


def _check_known(tokenizer, word: str, token_id: int) -> None:
    if token_id == tokenizer.unk_token_id:
        raise ValueError(f"level word {word!r} is not in the tokenizer's vocabulary (maps to the unknown token)")


def _id_after(tokenizer, answer_prefix: str, word: str) -> int:
    """Found as the token that `prefix + ' ' + word` adds to `prefix`, so it holds for any tokenizer family."""
    base = tokenizer(answer_prefix, add_special_tokens=False)["input_ids"]
    full = tokenizer(f"{answer_prefix} {word}", add_special_tokens=False)["input_ids"]
    if full[: len(base)] != base or len(full) != len(base) + 1:
        pieces = tokenizer.convert_ids_to_tokens(full[len(base) :] if full[: len(base)] == base else full)
        raise ValueError(f"level word {word!r} is not a single token after {answer_prefix!r}: {pieces}")
    _check_known(tokenizer, word, full[-1])
    return full[-1]


def _space_word_id(tokenizer, word: str) -> int:
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise ValueError(f"level word {word!r} is not a single token as ' {word}': {pieces}")
    _check_known(tokenizer, word, ids[0])
    return ids[0]


GENERIC = PromptRecipe(
    "generic",
    "Any image-text-to-text model: the model's own chat template, the question then the image(s), the Q-Align stem; "
    "video frames at --fps (capped by --max-frames), placed the family's way (today's behaviour).",
)
Q_ALIGN = PromptRecipe(
    "q-align",
    "Q-Align / OneAlign / DeQA-Score (mPLUG-Owl2): `USER: <question>\\n<|image|>\\nASSISTANT: <stem>`; "
    "video frames at --fps fill the one image slot in frame order.",
    video=FramePolicy(one_slot=True),
)
# The evaluation scripts of Q-Align and DeQA-Score (iqa_eval.py: the papers' numbers) build the prompt from the
# mplug_owl2 conversation template, the format both were trained in: a space, not a newline, before ASSISTANT.
Q_ALIGN_EVAL = PromptRecipe(
    "q-align-eval",
    "Q-Align / DeQA-Score as their evaluation scripts (iqa_eval.py) ask: `USER: <question>\\n<|image|> ASSISTANT: "
    "<stem>` (a space before ASSISTANT where the scorer classes have a newline); video frames as q-align.",
    turn_end=" ",
    video=FramePolicy(one_slot=True),
)
Q_REALIGN = PromptRecipe(
    "q-realign",
    "Q-ReAlign (Qwen3.5): the image first, then the question; chat template with add_generation_prompt and "
    "enable_thinking=False, then the stem; level ids of ' ' + word; a video is 8 uniform frames, long side 448, "
    "each as an image.",
    image_first=True,
    template_options=(("enable_thinking", False),),
    level_id_rule="space_word",
    video=FramePolicy(uniform=8, long_side=448, one_slot=False),
)
RECIPES = {r.name: r for r in (GENERIC, Q_ALIGN, Q_ALIGN_EVAL, Q_REALIGN)}


def model_type(path: str, revision: str | None = None) -> str:
    """The checkpoint's config.json `model_type`: what its recipe (and its model family) is chosen by."""
    from transformers import PretrainedConfig

    config, _ = PretrainedConfig.get_config_dict(path, revision=revision)
    return config.get("model_type", "")


# The recipe a checkpoint gets from its config's model_type when no qcurate.json names one.
BY_MODEL_TYPE = {"mplug_owl2": Q_ALIGN, "qwen3_5": Q_REALIGN}


def get(name: str) -> PromptRecipe:
    if name not in RECIPES:
        raise ValueError(f"unknown prompt recipe {name!r}; expected one of {sorted(RECIPES)}")
    return RECIPES[name]


def for_checkpoint(path: str, revision: str | None = None, override: str | None = None) -> PromptRecipe:
    """The recipe to run a checkpoint with: `override`, else its qcurate.json, else by model_type, else generic."""
    if override:
        return get(override)
    named = os.path.join(path, RECIPE_FILE)
    if os.path.isfile(named):
        with open(named) as f:
            return get(json.load(f)["prompt_recipe"])
    return BY_MODEL_TYPE.get(model_type(path, revision), GENERIC)


def write_recipe_file(folder: str, recipe: PromptRecipe) -> None:
    """Name the recipe beside a model's config (a retrained version scores with the recipe it was trained with)."""
    with open(os.path.join(folder, RECIPE_FILE), "w") as f:
        json.dump({"prompt_recipe": recipe.name}, f)
