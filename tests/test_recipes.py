"""Prompt recipes: the exact prompt and token ids each recipe gives a tiny model of its family, written out here by
hand from the sources (DESIGN section 1 for Q-Align; Q-ReAlign's scorer/prompts/levels/frames code as issue 11
quotes it), how a checkpoint picks its recipe, and the video frame policies."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pipeline.infra.media import Media, MediaOptions, sample_frame_indices
from pipeline.models.owl2 import IMAGE_TOKEN_INDEX
from pipeline.qalign import recipes
from pipeline.scorers.lmm_model import Preprocessor

GRAY = np.full((32, 32, 3), 128, np.uint8)  # 32x32 px: 4x4 patches of 8 px, merged 2x2 -> 4 Qwen image tokens
LEVELS = ["excellent", "good", "fair", "poor", "bad"]


def pieces(preprocessor: Preprocessor, ids) -> list[str]:
    tokenizer = preprocessor.family.tokenizer_of(preprocessor.processor)
    return [t if i >= 0 else i for i, t in zip(ids, tokenizer.convert_ids_to_tokens([max(int(i), 0) for i in ids]))]


def test_q_realign_on_qwen3_5(tiny_models):
    pre = Preprocessor(tiny_models["qwen3_5"])
    assert pre.recipe is recipes.Q_REALIGN  # chosen from model_type qwen3_5
    # Q-ReAlign: the image first, then the question; add_generation_prompt with thinking disabled (an empty think
    # block); then the stem.
    assert pre.prompt_text("image") == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How would you rate the quality of this image?"
        "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nThe quality of the image is"
    )
    ids = pre(media(GRAY))["input_ids"]
    assert pieces(pre, ids) == [
        "<|im_start|>", "user", "Ċ", "<|vision_start|>", *["<|image_pad|>"] * 4, "<|vision_end|>",
        "How", "Ġwould", "Ġyou", "Ġrate", "Ġthe", "Ġquality", "Ġof", "Ġthis", "Ġimage", "?", "<|im_end|>", "Ċ",
        "<|im_start|>", "assistant", "Ċ", "<think>", "ĊĊ", "</think>", "ĊĊ",
        "The", "Ġquality", "Ġof", "Ġthe", "Ġimage", "Ġis",
    ]  # fmt: skip
    # the special tokens come first in the tiny vocabulary, in QWEN_SPECIAL's order
    assert (ids[0], ids[3], ids[8]) == (1, 3, 4) and ids[4:8].tolist() == [5] * 4
    # level ids: tokenizer(" " + word).input_ids[0], the space-prefixed word ("Ġgood"), not the bare word
    assert pieces(pre, pre.level_ids) == ["Ġ" + w for w in LEVELS]
    assert pre.level_ids == [440, 444, 442, 466, 428]
    tokenizer = pre.family.tokenizer_of(pre.processor)
    assert tokenizer("good", add_special_tokens=False)["input_ids"][0] != pre.level_ids[1]


def test_thinking_is_left_on_without_the_recipe(tiny_models):
    # the generic recipe applies the template with its defaults: Qwen3.5 then opens a think block (so the recipe's
    # enable_thinking=False is what makes the prompt Q-ReAlign's)
    pre = Preprocessor(tiny_models["qwen3_5"], recipe="generic")
    assert pre.prompt_text("image") == (
        "<|im_start|>user\nHow would you rate the quality of this image?<|vision_start|><|image_pad|><|vision_end|>"
        "<|im_end|>\n<|im_start|>assistant\n<think>\nThe quality of the image is"
    )


def test_q_align_on_owl2(tiny_models):
    pre = Preprocessor(tiny_models["owl2"])
    assert pre.recipe is recipes.Q_ALIGN
    assert pre.prompt_text("image") == (
        "USER: How would you rate the quality of this image?\n<|image|>\nASSISTANT: The quality of the image is"
    )
    ids = pre(media(GRAY))["input_ids"]
    assert pieces(pre, ids) == [
        "<s>", "USER", ":", "How", "would", "you", "rate", "the", "quality", "of", "this", "image", "?", "\n",
        IMAGE_TOKEN_INDEX, "\n", "ASSISTANT", ":", "The", "quality", "of", "the", "image", "is",
    ]  # fmt: skip
    # the word-level tiny vocabulary: 10 specials (ids 0-9), the 58 distinct WORDS (10-67), then the level words
    assert pre.level_ids == [68, 69, 70, 71, 72]
    assert pieces(pre, pre.level_ids) == LEVELS


def test_generic_on_llava(tiny_models):
    pre = Preprocessor(tiny_models["llava"], task="aesthetics")
    assert pre.recipe is recipes.GENERIC
    assert pre.prompt_text("image") == (
        "USER: How would you rate the aesthetics of this image?\n<image>\nASSISTANT: The aesthetics of the image is"
    )
    ids = pre(media(GRAY))["input_ids"]
    assert pieces(pre, ids) == [
        "<s>", "USER", ":", "How", "would", "you", "rate", "the", "aesthetics", "of", "this", "image", "?", "\n",
        *["<image>"] * 16, "\n", "ASSISTANT", ":", "The", "aesthetics", "of", "the", "image", "is",
    ]  # fmt: skip
    assert pre.level_ids == [68, 69, 70, 71, 72]


def media(*frames, media_type: str = "image") -> Media:
    n = len(frames)
    return Media(list(frames), media_type, fps=None, frame_indices=list(range(n)), num_source_frames=n)


def test_qcurate_json_and_override_choose_the_recipe(tiny_models, tmp_path):
    folder = tmp_path / "llava"
    shutil.copytree(tiny_models["llava"], folder)
    assert recipes.for_checkpoint(str(folder)) is recipes.GENERIC
    (folder / "qcurate.json").write_text(json.dumps({"prompt_recipe": "q-realign"}))
    assert recipes.for_checkpoint(str(folder)) is recipes.Q_REALIGN  # the file beats model_type
    assert recipes.for_checkpoint(str(folder), override="generic") is recipes.GENERIC  # the flag beats the file
    with pytest.raises(ValueError, match="unknown prompt recipe 'q-other'"):
        recipes.for_checkpoint(str(folder), override="q-other")
    # mPLUG-Owl2 has one image slot: a recipe that gives each frame as an image cannot run on it
    with pytest.raises(ValueError, match="as one image each"):
        Preprocessor(tiny_models["owl2"], recipe="q-realign")


def test_q_realign_video_policy(tiny_models):
    # 8 uniformly spaced frames whatever the fps, first and last included
    options = recipes.Q_REALIGN.video.media_options(MediaOptions(sample_fps=1.0, max_frames=16))
    assert sample_frame_indices(100, 25.0, options) == [0, 14, 28, 42, 57, 71, 85, 99]
    assert sample_frame_indices(5, 25.0, options) == [0, 1, 2, 3, 4]
    assert recipes.GENERIC.video.media_options(MediaOptions()) == MediaOptions()
    # the long side resized to 448, the aspect ratio kept
    (frame,) = recipes.Q_REALIGN.video.resize([np.zeros((300, 600, 3), np.uint8)])
    assert frame.shape == (224, 448, 3)
    # each of a video's frames is its own image in the prompt
    pre = Preprocessor(tiny_models["qwen3_5"])
    ids = pre(media(GRAY, GRAY, GRAY, media_type="video"))["input_ids"]
    text = pieces(pre, ids)
    assert text.count("<|vision_start|>") == 3 and text[-6:] == ["The", "Ġquality", "Ġof", "Ġthe", "Ġvideo", "Ġis"]
