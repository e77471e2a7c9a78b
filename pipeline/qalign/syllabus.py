"""The Q-Align syllabus: what a scorer is taught, and how one training example is built.

A MOS becomes a level word by Eq. 1 (equal-width intervals over its scale); the model is taught the answer sentence
("The quality of the image is good.") with next-token cross-entropy on the answer tokens only, the question drawn from
a set of paraphrases. Optionally (soft labels), the target at the level word is the distribution over levels that
`mos` and `mos_std` imply instead of one level.

Training inputs are built by the model family's own `prepare`, exactly as the scorer builds its inputs: the training
input is the scoring input followed by the level word and the rest of the answer, which `Syllabus` checks token by
token.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
from scipy.special import ndtr  # the standard normal CDF (scipy.stats.norm.cdf), without scipy.stats' import time

from pipeline.qalign.levels import DEFAULT_LEVELS, Levels
from pipeline.qalign.recipes import GENERIC, PromptRecipe

# The user's question, drawn at random per example; the first one is the reference prompt the scorer asks.
QUESTIONS = (
    "How would you rate the {task} of this {noun}?",
    "Can you evaluate the {task} of the {noun}?",
    "Rate the {task} of the {noun}.",
    "How is the {task} of the {noun}?",
    "What do you think about the {task} of this {noun}?",
)


def questions(task: str, media_type: str, recipe: PromptRecipe = GENERIC) -> tuple[str, ...]:
    """The recipe's own question first (the one the scorer asks), then the other paraphrases: a recipe with its own
    prompt pool (Q-ReAlign's) is taught that pool, as its authors' training draws from it."""
    ask = recipe.ask(task, media_type)
    if ask is not None:
        return ask.questions
    noun = "image" if media_type == "image" else "video"
    own = recipe.prompt(task, media_type).question
    return (own, *(q for q in (q.format(task=task, noun=noun) for q in QUESTIONS) if q != own))


def answer_sentence(task: str, media_type: str, word: str, recipe: PromptRecipe = GENERIC) -> str:
    """The answer the model is taught: the scorer's answer prefix, the level word, a full stop."""
    return f"{recipe.prompt(task, media_type).answer_prefix} {word}."


def level_target(
    mos: float,
    scale_min: float,
    scale_max: float,
    mos_std: float | None = None,
    soft: bool = False,
    levels: Levels = DEFAULT_LEVELS,
) -> np.ndarray:
    """The target distribution over levels (best first).

    Hard: all mass on the Eq. 1 level. Soft (with a positive mos_std): the probability that a rating drawn from
    N(mos, mos_std) falls in each Eq. 1 interval, the outer intervals open-ended.
    """
    n = len(levels)
    target = np.zeros(n, dtype=np.float32)
    if not soft or mos_std is None or not np.isfinite(mos_std) or mos_std <= 0:
        target[int(levels.level_of_mos(mos, scale_min, scale_max))] = 1.0
        return target
    edges = scale_min + (scale_max - scale_min) * np.arange(1, n) / n  # upper edges, worst level first
    cdf = np.concatenate([[0.0], ndtr((edges - mos) / mos_std), [1.0]])
    return np.diff(cdf)[::-1].astype(np.float32)  # best first


@dataclass(frozen=True)
class AnswerLayout:
    """Where the answer sits in a training input, counted from its last token (layouts are the same per prompt)."""

    n_answer: int  # supervised tokens at the end of the input
    level_from_end: int  # the level word's distance from the last token (0 = last)
    answer_ids: tuple[int, ...]


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    differ = np.nonzero(a[:n] != b[:n])[0]
    return int(differ[0]) if len(differ) else n


class Syllabus:
    """Builds training examples through the family's `prepare`, the scorer's own input path, with the prompt
    recipe the scorer will use (so a version is trained on the prompt it is scored with)."""

    def __init__(
        self, family: ModuleType, processor: Any, levels: Levels = DEFAULT_LEVELS, recipe: PromptRecipe = GENERIC
    ) -> None:
        self.family, self.processor, self.levels, self.recipe = family, processor, levels, recipe
        self.tokenizer = family.tokenizer_of(processor)
        self._layouts: dict[tuple, AnswerLayout] = {}

    def level_ids(self, task: str, media_type: str) -> list[int]:
        prefix = self.recipe.prompt(task, media_type).answer_prefix
        return self.recipe.level_ids(self.tokenizer, prefix, self.levels)

    def prepare(self, frames: list[np.ndarray], question: str, answer: str) -> dict[str, np.ndarray]:
        return self.family.prepare(self.processor, frames, question, answer, self.recipe)

    def layout(self, question: str, task: str, media_type: str, word: str, n_frames: int) -> AnswerLayout:
        """Found once per prompt on a probe image, then checked against every real example."""
        key = (question, task, media_type, word, n_frames)
        if key not in self._layouts:
            probe = [np.full((32, 32, 3), 128, np.uint8)] * n_frames
            prefix = self.recipe.prompt(task, media_type).answer_prefix
            answer = answer_sentence(task, media_type, word, self.recipe)
            ids = {
                k: self.prepare(probe, question, a)["input_ids"]
                for k, a in (("score", prefix), ("full", answer), ("bare", ""))
            }
            score, full = ids["score"], ids["full"]
            level_id = self.level_ids(task, media_type)[self.levels.words.index(word)]
            if len(full) <= len(score) or not np.array_equal(full[: len(score)], score) or full[len(score)] != level_id:
                raise ValueError(
                    f"the training input for {question!r} does not extend the scoring input with the level word "
                    f"{word!r}: the tokenizer joins the answer differently; cannot train this model with this syllabus"
                )
            # The answer starts where the generation prompt alone ends (a trailing space may tokenize differently).
            n_answer = len(full) - _common_prefix(ids["bare"], full)
            self._layouts[key] = AnswerLayout(n_answer, len(full) - 1 - len(score), tuple(full[-n_answer:].tolist()))
        return self._layouts[key]

    def example(
        self, frames: list[np.ndarray], media_type: str, task: str, target: np.ndarray, question: str
    ) -> dict[str, np.ndarray]:
        """One training example: the prepared inputs with the full answer, and where to read the loss."""
        word = self.levels.words[int(np.argmax(target))]
        layout = self.layout(question, task, media_type, word, len(frames))
        frames = self.recipe.frames(frames, media_type, self.processor)  # resized as the scorer resizes them
        inputs = self.prepare(frames, question, answer_sentence(task, media_type, word, self.recipe))
        if tuple(inputs["input_ids"][-layout.n_answer :].tolist()) != layout.answer_ids:
            raise ValueError(f"the answer tokens of a real example differ from the probe's for {question!r}")
        return {
            **inputs,
            "n_answer": np.int64(layout.n_answer),
            "level_from_end": np.int64(layout.level_from_end),
            "target": np.asarray(target, np.float32),
        }


def augment(frames: list[np.ndarray], crop: int | None, hflip: bool, rng: np.random.Generator | None) -> list:
    """Crop every frame at one place (random with an rng, else centred) and maybe mirror them all."""
    if crop is not None:
        h, w = frames[0].shape[:2]
        ch, cw = min(crop, h), min(crop, w)
        top = int(rng.integers(0, h - ch + 1)) if rng is not None else (h - ch) // 2
        left = int(rng.integers(0, w - cw + 1)) if rng is not None else (w - cw) // 2
        frames = [np.ascontiguousarray(f[top : top + ch, left : left + cw]) for f in frames]
    if hflip and rng is not None and rng.random() < 0.5:
        frames = [np.ascontiguousarray(f[:, ::-1]) for f in frames]
    return frames
