"""Prompt recipes: the exact prompt and token ids each recipe gives a tiny model of its family, written out here by
hand from the sources (DESIGN section 1 for Q-Align; Q-ReAlign's scorer/prompts/levels/frames code as issue 11
quotes it), how a checkpoint picks its recipe, and the video frame policies."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.infra.media import Media, MediaError, MediaOptions, sample_frame_indices
from pipeline.models.owl2 import IMAGE_TOKEN_INDEX
from pipeline.qalign import recipes
from pipeline.scorers.lmm_model import Preprocessor

GRAY = np.full((32, 32, 3), 128, np.uint8)  # 32x32 px: 4x4 patches of 8 px, merged 2x2 -> 4 Qwen image tokens
LEVELS = ["excellent", "good", "fair", "poor", "bad"]
GOLDEN_INPUTS = Path(__file__).parent / "goldens" / "qrealign_tiny" / "inputs"


def pieces(preprocessor: Preprocessor, ids) -> list[str]:
    tokenizer = preprocessor.family.tokenizer_of(preprocessor.processor)
    return [t if i >= 0 else i for i, t in zip(ids, tokenizer.convert_ids_to_tokens([max(int(i), 0) for i in ids]))]


def test_q_realign_on_qwen3_5(tiny_models):
    pre = Preprocessor(tiny_models["qwen3_5"])
    assert pre.recipe is recipes.Q_REALIGN  # chosen from model_type qwen3_5
    # Q-ReAlign (the toolkit's scorer: tests/test_qrealign_golden.py proves the numbers): the image first, then the
    # first question of the toolkit's IQA pool; add_generation_prompt with thinking disabled (an empty think block);
    # then " " + the stem, whose tokens the toolkit appends: " The" with its space.
    assert pre.prompt_text("image") == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Can you rate the quality of this picture?"
        "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n The quality of the image is"
    )
    ids = pre(media(GRAY))["input_ids"]
    assert pieces(pre, ids) == [
        "<|im_start|>", "user", "Ċ", "<|vision_start|>", *["<|image_pad|>"] * 4, "<|vision_end|>",
        "Can", "Ġyou", "Ġrate", "Ġthe", "Ġquality", "Ġof", "Ġthis", "Ġpicture", "?", "<|im_end|>", "Ċ",
        "<|im_start|>", "assistant", "Ċ", "<think>", "ĊĊ", "</think>", "ĊĊ",
        "ĠThe", "Ġquality", "Ġof", "Ġthe", "Ġimage", "Ġis",
    ]  # fmt: skip
    # the special tokens come first in the tiny vocabulary, in QWEN_SPECIAL's order
    assert (ids[0], ids[3], ids[8]) == (1, 3, 4) and ids[4:8].tolist() == [5] * 4
    # level ids: tokenizer(" " + word).input_ids[0], the space-prefixed word ("Ġgood"), not the bare word
    assert pieces(pre, pre.level_ids) == ["Ġ" + w for w in LEVELS]
    assert pre.level_ids == [440, 444, 442, 466, 428]
    tokenizer = pre.family.tokenizer_of(pre.processor)
    assert tokenizer("good", add_special_tokens=False)["input_ids"][0] != pre.level_ids[1]
    # the toolkit's aesthetics question and stem
    aesthetics = Preprocessor(tiny_models["qwen3_5"], task="aesthetics").prompt_text("image")
    assert aesthetics.endswith("How is the aesthetics of this image?<|im_end|>\n<|im_start|>assistant\n"
                               "<think>\n\n</think>\n\n The aesthetics of the image is")  # fmt: skip


def test_q_realign_resizes_as_qwen_vl_utils_fetch_image(tiny_models):
    """smart_resize before the processor (which then does not resize): sides to multiples of patch x 2 (32 on
    Qwen3.5; the tiny model's patch is 8, so 16), the area within 4..16384 such cells, bicubic."""
    resize = recipes.Q_REALIGN.image_resize
    assert resize.size(48, 64, patch_size=16) == (64, 64)  # under 4096 px: enlarged (4 tokens, not the processor's 70)
    assert resize.size(240, 320, 16) == (256, 320)  # 240 / 32 = 7.5 -> 8
    assert resize.size(272, 320, 16) == (256, 320)  # 272 / 32 = 8.5 -> 8: Python's round, half to even
    assert resize.size(252, 448, 16) == (256, 448)
    assert resize.size(4000, 6000, 16) == (3328, 4992)  # over 16777216 px: shrunk, aspect kept
    pre = Preprocessor(tiny_models["qwen3_5"])
    out = pre(media(np.full((48, 64, 3), 90, np.uint8)))
    assert out["image_grid_thw"].tolist() == [[1, 6, 8]]  # 48x64 at factor 16 stays 48x64: 6x8 patches of 8 px
    with pytest.raises(
        MediaError, match="aspect_ratio: 3000x12 has an aspect ratio of 250.0, over Qwen's limit of 200"
    ):
        pre(media(np.zeros((12, 3000, 3), np.uint8)))


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
    # Q-ReAlign's resize works at a Qwen processor's patch size: a CLIP processor has none
    with pytest.raises(ValueError, match="q-realign.*no patch size"):
        Preprocessor(tiny_models["llava"], recipe="q-realign")


def test_q_realign_video_policy(tiny_models):
    # 8 frames at int(round(i)) of linspace(0, n - 1, 8) whatever the fps, first and last included; a shorter clip
    # repeats frames (the toolkit's sample_frames)
    options = recipes.Q_REALIGN.video.media_options(MediaOptions(sample_fps=1.0, max_frames=16))
    assert sample_frame_indices(100, 25.0, options) == [0, 14, 28, 42, 57, 71, 85, 99]
    assert sample_frame_indices(5, 25.0, options) == [0, 1, 1, 2, 2, 3, 3, 4]
    assert sample_frame_indices(1, 25.0, options) == [0] * 8
    assert recipes.GENERIC.video.media_options(MediaOptions()) == MediaOptions()
    # a long side over 448 shrunk to 448 with int() (1000x333 -> 448x149, not round's 149.18 -> 149 or 150), the
    # aspect ratio kept; a frame within 448 is never enlarged
    big, small = recipes.Q_REALIGN.video.resize([np.zeros((333, 1000, 3), np.uint8), np.zeros((240, 320, 3), np.uint8)])
    assert big.shape == (149, 448, 3) and small.shape == (240, 320, 3)
    (odd,) = recipes.Q_REALIGN.video.resize([np.zeros((299, 600, 3), np.uint8)])
    assert odd.shape == (223, 448, 3)  # 299 * 448 / 600 = 223.25
    # each of a video's frames is its own image in the prompt
    pre = Preprocessor(tiny_models["qwen3_5"])
    ids = pre(media(GRAY, GRAY, GRAY, media_type="video"))["input_ids"]
    text = pieces(pre, ids)
    assert text.count("<|vision_start|>") == 3 and text[-6:] == ["ĠThe", "Ġquality", "Ġof", "Ġthe", "Ġvideo", "Ġis"]


def test_model_limits_are_row_errors_of_their_own_kind(tiny_models):
    """Qwen's processors refuse an aspect ratio over 200 (ValueError): a row error naming the ratio and the limit,
    for every recipe on the three Qwen families (not padded: the models' own code scores no such image)."""
    banner = media(np.zeros((3000, 12, 3), np.uint8))  # 12x3000: tall
    for family in ("qwen3_5", "qwen3_vl", "qwen2_5_vl"):
        for recipe in ("generic", "q-realign"):
            with pytest.raises(MediaError, match=r"^aspect_ratio: 12x3000 has an aspect ratio of 250\.0, .* of 200$"):
                Preprocessor(tiny_models[family], recipe=recipe)(banner)
    recipes.check_aspect_ratio(np.zeros((16, 3200, 3), np.uint8), 200, "Qwen")  # the limit itself is allowed


def test_q_realign_video_frames_repeat_through_either_decoder():
    """A 5-frame clip gives the toolkit's 8 frames (0 1 1 2 2 3 3 4) from decord and from PyAV alike."""
    from pipeline.infra import media as media_module

    data = (GOLDEN_INPUTS / "short_5f_320x240.mp4").read_bytes()
    options = recipes.Q_REALIGN.video.media_options(MediaOptions())
    for decode in (media_module._decode_with_decord, media_module._decode_with_pyav):
        video = decode(data, options)
        assert video.frame_indices == [0, 1, 1, 2, 2, 3, 3, 4] and len(video.frames) == 8, decode.__name__
        assert np.array_equal(video.frames[1], video.frames[2]) and not np.array_equal(video.frames[0], video.frames[1])


def test_a_rerun_with_an_earlier_recipe_is_refused_naming_the_change(tmp_path):
    """An output scored with q-realign version 1 (before the golden) is not topped up with version 2 scores."""
    from pipeline.scorers import ScorerArgs, create
    from pipeline.scoring.commit import Output
    from pipeline.scoring.config import JobError
    from pipeline.scoring.plan import check_previous_run

    model = str(GOLDEN_INPUTS.parent / "model")
    run = create("lmm", ScorerArgs(model, model)).identity()
    assert (run["prompt_recipe"], run["recipe_version"], run["score_range"]) == ("q-realign", 2, [0.0, 1.0])
    output = Output(str(tmp_path / "scores"))
    old = {k: v for k, v in run.items() if k not in ("recipe_version", "recipe", "score_range")}  # as v1 wrote it
    (tmp_path / "scores").mkdir()
    (tmp_path / "scores" / "_run.json").write_text(json.dumps(old))
    with pytest.raises(JobError, match=r"recipe_version=1.*has 2 \(the recipe changed: version 2 .*smart_resize"):
        check_previous_run(output, run, restart=False)
    # the same version with other settings: the changed setting is named
    edited = {**run, "recipe": {**run["recipe"], "stem_space": False}}
    (tmp_path / "scores" / "_run.json").write_text(json.dumps(edited))
    with pytest.raises(JobError, match="stem_space: False -> True"):
        check_previous_run(output, run, restart=False)
    (tmp_path / "scores" / "_run.json").write_text(json.dumps(run))
    check_previous_run(output, run, restart=False)  # the same recipe: the rerun adds to the output


def test_q_realign_is_taught_its_own_prompt_pool_and_resize(tiny_models):
    """Retraining a Qwen3.5 scorer uses the scoring recipe: the toolkit's prompt pool (its scorer's question first),
    the spaced stem, and smart_resize before the processor."""
    from pipeline import models
    from pipeline.qalign.syllabus import Syllabus, level_target, questions

    assert questions("quality", "image", recipes.Q_REALIGN)[0] == "Can you rate the quality of this picture?"
    assert len(questions("aesthetics", "image", recipes.Q_REALIGN)) == 8
    path = tiny_models["qwen3_5"]
    family = models.family(path)
    processor = family.load_processor(path)
    syllabus = Syllabus(family, processor, recipes.Q_REALIGN.levels(), recipes.Q_REALIGN)
    frame = np.full((24, 80, 3), 200, np.uint8)  # smart_resize at factor 16: 32x80 (not the processor's own size)
    question = questions("quality", "image", recipes.Q_REALIGN)[0]
    example = syllabus.example([frame], "image", "quality", level_target(4.9, 1, 5), question)
    scoring = Preprocessor(path)(media(frame))
    assert example["image_grid_thw"].tolist() == scoring["image_grid_thw"].tolist() == [[1, 4, 10]]
    n = len(scoring["input_ids"])
    assert np.array_equal(example["input_ids"][:n], scoring["input_ids"])  # the scoring input, then the answer
