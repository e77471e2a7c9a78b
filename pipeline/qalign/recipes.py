"""Prompt recipes: how a published scorer was asked, so that it is run the way it was trained.

Each scorer was trained with its own prompt (DESIGN section 2). A recipe names everything that changes the tokens a
model sees or the ids its score is read from:

- the question and the answer stem (templates over the task and the media noun, or the recipe's own table), and how
  the stem joins the chat template's text,
- where the image goes in the user turn (before or after the question),
- the options the chat template is applied with (Qwen3.5: `enable_thinking=False`),
- the rule that finds each level word's token id, and the score each level word stands for (so the score's range),
- how each image is resized before the processor (Q-ReAlign: qwen_vl_utils' `smart_resize`),
- the video frame policy: how frames are sampled, resized, and placed (one image slot, or one image each).

A recipe's `version` is part of every output's identity: a change that moves a recipe's numbers bumps it, so that a
rerun into an output written with the earlier version is refused, not mixed (pipeline.scoring.plan).

The recipe is chosen from the checkpoint: a `qcurate.json` beside `config.json` that names it (`{"prompt_recipe":
"q-realign"}`, written into every retrained version), else the config's `model_type`; `--prompt-recipe NAME`
overrides both. The model families (pipeline.models) render a recipe; they hold no prompt text of their own.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from pipeline.infra.media import MediaError, MediaOptions
from pipeline.qalign.levels import DEFAULT_LEVELS, Levels

TASKS = ("quality", "aesthetics")
RECIPE_FILE = "qcurate.json"  # beside config.json: {"prompt_recipe": NAME}


@dataclass(frozen=True)
class Prompt:
    question: str
    answer_prefix: str  # the answer up to the level word: "The quality of the image is"


@dataclass(frozen=True)
class FramePolicy:
    """How a video becomes frames. `uniform=None`: at the job's --fps with its --max-frames cap; else exactly this
    many frames at int(round(i)) of linspace(0, n - 1, uniform), a clip with fewer frames repeating some (Q-ReAlign's
    sampler). `long_side`: a frame whose longer side exceeds it is shrunk to int(w * s) x int(h * s), s = long_side /
    longer side (PIL bicubic; never enlarged: the Q-ReAlign toolkit's `sample_frames`). `one_slot`: True, the frames
    fill the prompt's one image slot in order (mPLUG-Owl2); False, each frame is given as an image of its own; None,
    the family's own way."""

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
            if max(h, w) <= self.long_side:
                out.append(frame)
                continue
            scale = self.long_side / max(h, w)
            size = (max(1, int(w * scale)), max(1, int(h * scale)))
            out.append(np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.BICUBIC)))
        return out


def check_aspect_ratio(frame: np.ndarray, limit: float, model: str) -> None:
    """A model whose image processor cannot take an aspect ratio over `limit` (Qwen's: 200): such an item is a row
    error naming its ratio and the limit. It is not padded: the models' own code refuses these images too, so there
    is no reference score for a padded one."""
    h, w = frame.shape[:2]
    ratio = max(h, w) / max(1, min(h, w))
    if ratio > limit:
        message = f"{w}x{h} has an aspect ratio of {ratio:.1f}, over {model}'s limit of {limit:g}"
        raise MediaError("aspect_ratio", message)


@dataclass(frozen=True)
class SmartResize:
    """qwen_vl_utils' `fetch_image` resize, applied to every image (and every video frame) before the processor, which
    is then called with do_resize=False: each side rounded to a multiple of the factor (the processor's patch size
    times the 2x2 merge: 32 for Qwen3.5, whose patch ms-swift passes as image_patch_size), the area brought within
    [min_tokens, max_tokens] factor-squared cells (4..16384: 4096..16777216 pixels for Qwen3.5), aspect kept, PIL
    bicubic; an aspect ratio over 200 is refused, as smart_resize refuses it."""

    merge: int = 2
    min_tokens: int = 4
    max_tokens: int = 16384
    max_ratio: float = 200.0

    def size(self, height: int, width: int, patch_size: int) -> tuple[int, int]:
        """smart_resize: the (height, width) an image of this size is resized to."""
        f = patch_size * self.merge
        min_pixels, max_pixels = self.min_tokens * f * f, self.max_tokens * f * f
        h_bar = max(f, round(height / f) * f)  # Python's round, as smart_resize's (half to even)
        w_bar = max(f, round(width / f) * f)
        if h_bar * w_bar > max_pixels:
            beta = math.sqrt(height * width / max_pixels)
            h_bar, w_bar = math.floor(height / beta / f) * f, math.floor(width / beta / f) * f
        elif h_bar * w_bar < min_pixels:
            beta = math.sqrt(min_pixels / (height * width))
            h_bar, w_bar = math.ceil(height * beta / f) * f, math.ceil(width * beta / f) * f
        return h_bar, w_bar

    def __call__(self, frame: np.ndarray, patch_size: int) -> np.ndarray:
        check_aspect_ratio(frame, self.max_ratio, "Qwen")
        height, width = self.size(*frame.shape[:2], patch_size)
        if (height, width) == frame.shape[:2]:
            return frame
        return np.asarray(Image.fromarray(frame).resize((width, height), Image.Resampling.BICUBIC))


@dataclass(frozen=True)
class Ask:
    """A recipe's own prompt for one task and media type: its questions (the first is the one the scorer asks; all
    of them are the training paraphrases) and the answer stem."""

    task: str
    media_type: str
    questions: tuple[str, ...]
    stem: str


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
    asks: tuple[Ask, ...] = ()  # the recipe's own prompts, instead of the question and stem templates
    # True: the stem is joined to the chat template's text as " " + stem, whatever the text ends with (Q-ReAlign
    # appends the tokens of " " + stem after "</think>\n\n"); False: a space only where the text ends without one
    stem_space: bool = False
    image_resize: SmartResize | None = None  # before the processor, which then does not resize (do_resize=False)
    weights: tuple[float, ...] = DEFAULT_LEVELS.weights  # the score of each level word, best first: the score scale
    version: int = 1  # bumped when a change moves this recipe's numbers (a part of every output's identity)
    changes: tuple[str, ...] = ()  # what each version after the first changed, in order: said when a rerun is refused

    def prompt(self, task: str, media_type: str) -> Prompt:
        """The question and answer stem for a task and a media type. Aesthetics is an image task only."""
        ask = self.ask(task, media_type)
        if ask is not None:
            return Prompt(ask.questions[0], ask.stem)
        noun = "image" if media_type == "image" else "video"
        return Prompt(self.question.format(task=task, noun=noun), self.stem.format(task=task, noun=noun))

    def ask(self, task: str, media_type: str) -> Ask | None:
        """The recipe's own prompt for this task and media type, or None where it uses the templates."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
        if media_type == "video" and task != "quality":
            raise ValueError(f"task {task!r} is for images; videos are scored for quality")
        return next((a for a in self.asks if (a.task, a.media_type) == (task, media_type)), None)

    @property
    def chat_options(self) -> dict[str, Any]:
        return dict(self.template_options)

    @property
    def processor_options(self) -> dict[str, Any]:
        """Extra options of the processor call: no resize where the recipe resized the images itself."""
        return {"do_resize": False} if self.image_resize is not None else {}

    def check_processor(self, processor: Any) -> None:
        """A recipe that resizes images at the processor's patch size needs a patch-based (Qwen) image processor."""
        image_processor = getattr(processor, "image_processor", processor)
        if self.image_resize is not None and not hasattr(image_processor, "patch_size"):
            raise ValueError(
                f"prompt recipe {self.name!r} resizes images for a Qwen-style patch processor, and this model's image "
                "processor has no patch size: choose another recipe"
            )

    def frames(self, frames: list[np.ndarray], media_type: str, processor: Any) -> list[np.ndarray]:
        """An item's decoded frames as the model is given them: a video's frames resized by the frame policy, then
        every image or frame by the recipe's own resize (each frame on its own, as an image), at the patch size of
        the model's image processor."""
        if media_type == "video":
            frames = self.video.resize(frames)
        if self.image_resize is not None:
            patch = getattr(processor, "image_processor", processor).patch_size
            frames = [self.image_resize(frame, patch) for frame in frames]
        return frames

    def levels(self, words: tuple[str, ...] = DEFAULT_LEVELS.words) -> Levels:
        """The level words with this recipe's scores: the scale its scorer's authors publish."""
        if len(words) != len(self.weights):
            raise ValueError(f"prompt recipe {self.name!r} scores {len(self.weights)} levels, not {len(words)}")
        return Levels(tuple(words), self.weights)

    def fingerprint(self) -> dict[str, Any]:
        """Everything in the recipe that changes a model's inputs or its score, as JSON: what a rerun must match."""
        spec = dataclasses.asdict(self)
        spec.pop("description")
        return json.loads(json.dumps(spec))  # tuples as lists, as _run.json stores them

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
# The Q-ReAlign toolkit's prompt pools and stems (qalign/prompts.py, Q-Future/Q-ReAlign): its scorer asks each
# pool's first question (qalign.infer), its training draws from the whole pool.
Q_REALIGN_ASKS = (
    Ask(
        "quality",
        "image",
        (
            "Can you rate the quality of this picture?",
            "Could you evaluate the quality of this image?",
            "How do you assess the quality of this image?",
            "How would you judge the quality of this image?",
            "How would you rate the quality of this image?",
            "Rate the quality of this image.",
            "What do you think about the quality of this image?",
            "What is your quality rating for this image?",
            "What's your opinion on the quality of this picture?",
        ),
        "The quality of the image is",
    ),
    Ask(
        "aesthetics",
        "image",
        (
            "How is the aesthetics of this image?",
            "Could you evaluate the aesthetic quality of this image?",
            "How would you rate the aesthetics of this image?",
            "How would you judge the aesthetic appeal of this picture?",
            "Rate the aesthetics of this image.",
            "What do you think about the aesthetics of this image?",
            "What is your aesthetic rating for this image?",
            "How aesthetically pleasing is this image?",
        ),
        "The aesthetics of the image is",
    ),
    Ask(
        "quality",
        "video",
        (
            "Can you rate the quality of this video?",
            "Could you evaluate the quality of this video?",
            "How do you assess the quality of this video?",
            "How would you judge the quality of this video?",
            "How would you rate the quality of this video?",
            "Rate the quality of this video.",
            "What do you think about the quality of this video?",
            "What is your quality rating for this video?",
        ),
        "The quality of the video is",
    ),
)
Q_REALIGN = PromptRecipe(
    "q-realign",
    "Q-ReAlign (Qwen3.5), as its toolkit's scorer runs it (qalign.scorer.score_record on ms-swift's qwen3_5 "
    "template): the image(s) first, then the first question of the toolkit's pool for the task; the chat template "
    "with add_generation_prompt and enable_thinking=False, then ' ' + the stem; every image resized by "
    "qwen_vl_utils' smart_resize (factor 32 on Qwen3.5, 4096..16777216 pixels, bicubic) before the processor; "
    "level ids of ' ' + word; score = sum p x (1, .75, .5, .25, 0), on 0..1; a video is 8 frames at "
    "round(linspace(0, n - 1, 8)) (repeats in short clips), shrunk to a 448 long side where longer, each frame an "
    "image of its own.",
    image_first=True,
    template_options=(("enable_thinking", False),),
    level_id_rule="space_word",
    video=FramePolicy(uniform=8, long_side=448, one_slot=False),
    asks=Q_REALIGN_ASKS,
    stem_space=True,
    image_resize=SmartResize(),
    weights=(1.0, 0.75, 0.5, 0.25, 0.0),
    version=2,
    changes=(
        "version 2 runs it as the Q-ReAlign toolkit's scorer does, proven on a golden made with its code: the "
        "toolkit's questions (was Q-Align's), ' ' + the stem (was the stem after the template's newline), "
        "smart_resize before the processor (was the processor's own resize), the score on 0..1 (was 1..5), and "
        "always 8 frames, shrunk only above a 448 long side with int() (was min(8, n) frames enlarged to 448)",
    ),
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
