"""The scoring core on real photographs and real videos, for every native family the tests build."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from pipeline.infra.media import Media, MediaError, load_media
from pipeline.qalign.levels import Levels
from pipeline.scorers.lmm_model import Preprocessor, Scorer, level_token_ids, prompt_for

# Qwen3.5 / Qwen3-VL / Qwen2.5-VL: variable image-token counts per image size (padding, image_grid_thw, mRoPE);
# LLaVA-OneVision: a variable number of tiles per image (anyres)
FAMILIES = ["llava", "idefics3", "owl2", "qwen3_5", "qwen3_vl", "qwen2_5_vl", "llava_onevision"]
PHOTOS = ["astronaut", "coffee", "chelsea", "rocket"]


def photo_media(name: str) -> Media:
    return Media(frames=[getattr(data, name)()], media_type="image", fps=None, frame_indices=[0], num_source_frames=1)


def video_media(n_frames: int, offset: int = 0) -> Media:
    """A real photograph panned across n frames (frames differ, so a misplaced frame changes the logits)."""
    base = data.astronaut()
    frames = [
        np.ascontiguousarray(base[20 * i + offset : 20 * i + offset + 300, 10 * i : 10 * i + 400])
        for i in range(n_frames)
    ]
    return Media(
        frames=frames,
        media_type="video",
        fps=8.0,
        frame_indices=list(range(0, 8 * n_frames, 8)),
        num_source_frames=8 * n_frames,
    )


@pytest.fixture(scope="module", params=FAMILIES)
def scorer(request, tiny_models) -> Scorer:
    return Scorer(tiny_models[request.param])


def test_reference_prompts():
    assert prompt_for("quality", "image").question == "How would you rate the quality of this image?"
    assert prompt_for("aesthetics", "image").answer_prefix == "The aesthetics of the image is"
    assert prompt_for("quality", "video").answer_prefix == "The quality of the video is"
    with pytest.raises(ValueError, match="videos are scored for quality"):
        prompt_for("aesthetics", "video")
    with pytest.raises(ValueError, match="unknown task"):
        prompt_for("sharpness", "image")


def test_scores_real_photographs(scorer):
    probs, scores = scorer.score_media([photo_media(n) for n in PHOTOS])
    assert probs.shape == (len(PHOTOS), 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
    assert np.all((scores >= 1) & (scores <= 5))
    # different photographs give different probabilities: the pixels reach the logits
    assert np.abs(probs[0] - probs[1]).max() > 1e-6


def test_batch_of_images_equals_solo_runs(scorer):
    items = [scorer.preprocessor(photo_media(n)) for n in PHOTOS]
    batch = scorer.level_logits(items)
    solo = torch.cat([scorer.level_logits([item]) for item in items])
    torch.testing.assert_close(batch, solo, atol=1e-5, rtol=0)


def test_batch_of_videos_with_different_frame_counts_equals_solo_runs(scorer):
    # 4, 1 and 2 frames and an image: four different merged sequence lengths, right-padded in one batch
    items = [
        scorer.preprocessor(m) for m in (video_media(4), video_media(1, 5), video_media(2, 9), photo_media("coffee"))
    ]
    batch = scorer.level_logits(items)
    solo = torch.cat([scorer.level_logits([item]) for item in items])
    torch.testing.assert_close(batch, solo, atol=1e-5, rtol=0)


def test_frame_order_matters_for_videos(scorer):
    video = video_media(3)
    reversed_video = Media(
        frames=video.frames[::-1], media_type="video", fps=8.0, frame_indices=[16, 8, 0], num_source_frames=24
    )
    a, b = scorer.level_logits([scorer.preprocessor(video), scorer.preprocessor(reversed_video)])
    assert (a - b).abs().max() > 1e-6


def test_odd_but_valid_images_are_scored(scorer, tmp_path):
    rgb = Image.fromarray(data.chelsea())
    files = {
        "gray.png": Image.fromarray(data.camera()),
        "rgba.png": rgb.convert("RGBA"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "palette.png": rgb.convert("P"),
        "16bit.png": Image.fromarray(data.camera().astype(np.uint16) * 257),
    }
    media = []
    for name, img in files.items():
        img.save(tmp_path / name)
        media.append(load_media(str(tmp_path / name), "image"))
    probs, scores = scorer.score_media(media)
    assert np.isfinite(probs).all() and np.all((scores >= 1) & (scores <= 5))


def test_level_words_must_be_single_tokens(tiny_models):
    preprocessor = Preprocessor(tiny_models["llava"])
    tokenizer = preprocessor.family.tokenizer_of(preprocessor.processor)
    assert len(set(preprocessor.level_ids)) == 5
    # the tiny tokenizer splits "so-so" into three tokens and has never seen "superb"
    with pytest.raises(ValueError, match="not a single token"):
        level_token_ids(tokenizer, "The quality of the image is", Levels(("good", "so-so"), (2.0, 1.0)))
    with pytest.raises(ValueError, match="vocabulary"):
        Preprocessor(tiny_models["llava"], levels=Levels(("superb", "bad"), (2.0, 1.0)))


def test_custom_levels_read_their_own_rows(tiny_models):
    three = Levels(("good", "fair", "poor"), (3.0, 2.0, 1.0))
    five = Scorer(tiny_models["llava"])
    scorer3 = Scorer(tiny_models["llava"], levels=three)
    item = five.preprocessor(photo_media("rocket"))
    logits5 = five.level_logits([item])[0]
    logits3 = scorer3.level_logits([item])[0]
    torch.testing.assert_close(logits3, logits5[1:4])  # the same words give the same logits


def test_loading_is_deterministic_per_seed(tmp_path):
    from safetensors.torch import load_file

    from pipeline.samples.tiny_models import make_tiny_model

    a = load_file(make_tiny_model("llava", tmp_path / "a", seed=3) / "model.safetensors")
    b = load_file(make_tiny_model("llava", tmp_path / "b", seed=3) / "model.safetensors")
    c = load_file(make_tiny_model("llava", tmp_path / "c", seed=4) / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


# ------------------------------------------------------------------------------------------------------------
# The channel axis is stated, never guessed: thin and tiny images reach the model in their true colour

COLOUR = np.array([220, 40, 120])  # every channel different: a channels-first misreading turns it grey


# Families whose pixel_values are whole [3, S, S] images (Qwen's are flattened patches: the same channels_last
# call, pipeline.models.qwen, but not readable back this way).
@pytest.mark.parametrize("family", ["llava", "idefics3", "owl2", "llava_onevision"])
@pytest.mark.parametrize("height, width", [(1, 9), (9, 1), (3, 9), (9, 3), (1, 1), (3, 3)])
def test_thin_and_tiny_images_reach_the_model_in_their_true_colour(tiny_models, tmp_path, family, height, width):
    path = tmp_path / f"{height}x{width}.png"
    Image.new("RGB", (width, height), tuple(int(c) for c in COLOUR)).save(path)
    preprocessor = Preprocessor(tiny_models[family])
    inputs = preprocessor(load_media(str(path), "image"))

    pixels = inputs["pixel_values"]  # raw 0..255 (normalised on the scorer's device: pipeline.models.normalise)
    assert pixels.dtype == np.uint8
    first = pixels.reshape(-1, *pixels.shape[-3:])[0].astype(float)  # [3, S, S]: the first image (or tile)
    distance = np.abs(first - COLOUR[:, None, None]).max(axis=0)
    if family == "owl2":
        # Padded to a square with the CLIP mean colour, the image centred: the centre is the image's own colour
        # (a strip one pixel thick is blended a little by the bicubic resize).
        centre = distance[distance.shape[0] // 2, distance.shape[1] // 2]
        assert centre <= 4, first[:, distance.shape[0] // 2, distance.shape[1] // 2]
    else:
        # Resized (and tiled) without padding inside the image: every pixel is the image's colour.
        mask = inputs.get("pixel_attention_mask")  # Idefics3 pads tiles at their end: only real pixels count
        real = np.ones(distance.shape, bool) if mask is None else mask.reshape(-1, *distance.shape)[0].astype(bool)
        assert distance[real].max() <= 1, first[:, 0, 0]


@pytest.mark.parametrize("family", ["qwen3_5", "qwen3_vl", "qwen2_5_vl"])
def test_qwen_image_token_counts_follow_the_image_size(tiny_models, family):
    from transformers.utils import is_torchvision_available

    preprocessor = Preprocessor(tiny_models[family])
    if not is_torchvision_available():  # here: the processor's image path built from its parts
        assert type(preprocessor.processor).__name__ == "QwenImageProcessor"
    items = [preprocessor(photo_media(n)) for n in PHOTOS]
    # so the batch tests above pad rows of different lengths and concatenate grids of different shapes
    assert len({len(item["input_ids"]) for item in items}) > 1
    assert len({tuple(item["image_grid_thw"][0]) for item in items}) > 1
    for item in items:
        n_tokens = int(item["image_grid_thw"].prod()) // 4  # 2x2 patches merge into one token
        assert (item["mm_token_type_ids"] == 1).sum() == n_tokens == len(item["pixel_values"]) // 4


# (height, width) -> <image> tokens, by hand: a 32 px tile is 4x4 SigLIP patches; the image's best grid of tiles
# (rows x cols) gives (4 rows)x(4 cols) features plus one newline per feature row, and the base tile adds 16.
ONEVISION_TOKENS = {(32, 32): 16 + 4 + 16, (32, 64): 32 + 4 + 16, (64, 32): 32 + 8 + 16, (96, 96): 144 + 12 + 16}


def test_onevision_tiles_and_image_tokens_follow_the_image_size(tiny_models):
    from transformers.utils import is_torchvision_available

    preprocessor = Preprocessor(tiny_models["llava_onevision"])
    if not is_torchvision_available():  # here: the processor class without its video part
        assert type(preprocessor.processor).__name__ == "ImagesOnly"
    image_id = preprocessor.processor.tokenizer.convert_tokens_to_ids("<image>")
    for (height, width), expected in ONEVISION_TOKENS.items():
        frame = np.full((height, width, 3), 100, np.uint8)
        media = Media(frames=[frame], media_type="image", fps=None, frame_indices=[0], num_source_frames=1)
        assert (preprocessor(media)["input_ids"] == image_id).sum() == expected, (height, width)
    # so the batch tests above pad images of different tile counts
    assert len({preprocessor(photo_media(n))["pixel_values"].shape[1] for n in PHOTOS}) > 1


# ------------------------------------------------------------------------------------------------------------
# InstructBLIP: one image per prompt, the Q-Former's queries in front, the level logits from the language model


@pytest.fixture(scope="module")
def instructblip(tiny_models) -> Scorer:
    return Scorer(tiny_models["instructblip"])


def test_instructblip_keeps_its_chat_template(instructblip, tiny_models):
    from transformers import AutoProcessor

    # transformers' own loading drops it (the processor's constructor takes no chat template) ...
    assert AutoProcessor.from_pretrained(tiny_models["instructblip"]).chat_template is None
    # ... the family's loading keeps it, so the prompt is the template's
    assert instructblip.preprocessor.processor.chat_template is not None
    assert instructblip.preprocessor.prompt_text("image") == (
        "USER: How would you rate the quality of this image?\nASSISTANT: The quality of the image is"
    )


def test_instructblip_scores_from_the_language_models_last_hidden_state(instructblip):
    items = [instructblip.preprocessor(photo_media(n)) for n in PHOTOS]
    batch = instructblip.level_logits(items)
    solo = torch.cat([instructblip.level_logits([item]) for item in items])
    torch.testing.assert_close(batch, solo, atol=1e-5, rtol=0)
    assert (batch[0] - batch[1]).abs().max() > 1e-6  # the pixels reach the logits through the Q-Former
    # the model's own full forward pass gives the same level logits at the last position
    inputs = instructblip.family.collate(items[:1], instructblip.preprocessor.image_major, 0)
    with torch.inference_mode():
        full = instructblip.model(**inputs).logits[0, -1, instructblip.preprocessor.level_ids]
    torch.testing.assert_close(solo[0], full, atol=1e-5, rtol=0)


def test_instructblip_refuses_videos_clearly(instructblip):
    # a row error of the kind the full-reference scorers give videos, not a preprocess_error
    with pytest.raises(MediaError, match="^video_not_supported: .*one image per prompt.*InstructBLIP-Video"):
        instructblip.preprocessor(video_media(2))
