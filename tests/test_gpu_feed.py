"""Keeping the scorer fed: raw uint8 pixels between the stages (normalised on the scorer's device, exactly as the
processor would), rows sorted by shape inside a window, and the benchmark's model sizes."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage import data

from pipeline import models
from pipeline.infra.media import Media
from pipeline.models.owl2 import preprocess_frames
from pipeline.scorers.lmm_model import Preprocessor, Scorer
from pipeline.scoring.stages import order_by_shape

FAMILIES = ["llava", "idefics3", "owl2", "qwen3_5", "qwen3_vl", "qwen2_5_vl", "llava_onevision", "instructblip"]


def media(*names: str) -> Media:
    frames = [getattr(data, n)() for n in names]
    kind = "image" if len(frames) == 1 else "video"
    return Media(frames=frames, media_type=kind, fps=None, frame_indices=list(range(len(frames))), num_source_frames=1)


def processors_own_pixels(pre: Preprocessor, frames: list[np.ndarray]) -> np.ndarray:
    """What the family's processor makes of the frames with its rescale and normalise steps on (as before)."""
    if pre.family.__name__.endswith("owl2_family"):
        return preprocess_frames(frames, pre.processor.image_processor).numpy()
    text = pre.prompt_text("image", len(frames))
    frames = pre.recipe.frames(frames, "image", pre.processor)  # a recipe's own resize comes first (Q-ReAlign's)
    options = pre.recipe.processor_options
    out = pre.processor(text=[text], images=[frames], return_tensors="np", input_data_format="channels_last", **options)
    return out["pixel_values"]


@pytest.mark.parametrize("family", FAMILIES)
def test_pixels_cross_as_uint8_and_normalise_to_the_processors_own_bit_for_bit(tiny_models, family):
    pre = Preprocessor(tiny_models[family])
    item = pre(media("coffee"))
    # every family's geometric steps (pad, resize, crop, tiles, patches) keep 8-bit values: a quarter of the bytes
    assert item["pixel_values"].dtype == np.uint8
    expected = processors_own_pixels(pre, [data.coffee()])
    on_cpu = pre.family.collate([item], pre.image_major, 0)  # training's path: normalised in collate
    np.testing.assert_array_equal(on_cpu["pixel_values"].numpy(), expected)
    raw = pre.family.collate([item], pre.image_major, 0, raw_pixels=True)  # the scorer's: on its device
    assert raw["pixel_values"].dtype == torch.uint8 and models.PIXEL_NORM in raw
    on_device = models.to_device(raw, "cpu", torch.float32)
    assert models.PIXEL_NORM not in on_device
    np.testing.assert_array_equal(on_device["pixel_values"].numpy(), expected)


def test_idefics3_padding_stays_zero_where_the_processor_and_the_model_want_it(tiny_models):
    """Idefics3 pads images after normalising (zeros, masked), and skips all-zero padding images in a batch: both
    must come out of the device normalisation as exact zeros, not as -mean/std."""
    pre = Preprocessor(tiny_models["idefics3"])
    one, two = pre(media("coffee")), pre(media("astronaut", "coffee"))  # 1 and 2 images: the batch pads one
    batch = models.to_device(pre.family.collate([one, two], pre.image_major, 0, raw_pixels=True), "cpu", torch.float32)
    pixels, mask = batch["pixel_values"], batch["pixel_attention_mask"]
    assert pixels.shape[1] == 2 and not mask[0, 1].any()
    assert torch.equal(pixels[0, 1], torch.zeros_like(pixels[0, 1]))  # the padding image: skipped by the model
    assert (pixels.permute(0, 1, 3, 4, 2)[mask == 0] == 0).all()  # padded positions: the processor's zeros
    expected = processors_own_pixels(pre, [data.astronaut(), data.coffee()])
    np.testing.assert_array_equal(batch["pixel_values"][1:].numpy(), expected)


def test_non_integer_pixels_stay_float_and_normalise_alike():
    norm = np.array([1 / 255, 0.5, 0.4, 0.3, 0.2, 0.25, 0.3])
    exact = np.arange(256, dtype=np.float32).repeat(3).reshape(1, 3, 16, 16)
    assert models.compact(exact).dtype == np.uint8
    fractional = exact + 0.5
    assert models.compact(fractional).dtype == np.float32  # kept, never rounded
    by_table = models.normalise(torch.from_numpy(models.compact(exact)), norm)
    by_arithmetic = models.normalise(torch.from_numpy(exact), norm)
    torch.testing.assert_close(by_table, by_arithmetic, atol=1e-6, rtol=0)
    # Qwen's flattened patches [patches, channel x time x row x column]: channel-major columns
    patches = torch.full((4, 3 * 8), 10, dtype=torch.uint8)
    per_channel = (10 / 255 - norm[1:4]) / norm[4:7]
    expected = torch.tensor(np.repeat(per_channel, 8), dtype=torch.float32).expand(4, -1)
    torch.testing.assert_close(models.normalise(patches, norm), expected, atol=1e-6, rtol=0)


def test_scores_match_between_raw_and_normalised_inputs(tiny_models):
    """The scorer (raw pixels, normalised after the move) scores as the model does on the processor's pixels."""
    scorer = Scorer(tiny_models["llava"])
    item = scorer.preprocessor(media("rocket"))
    normalised = scorer.family.collate([item], scorer.preprocessor.image_major, 0)
    with torch.inference_mode():
        hidden, mask = scorer.family.hidden_states(scorer.model, normalised)
    expected = models.last_real(hidden, mask) @ scorer.level_weight.T
    torch.testing.assert_close(scorer.level_logits([item]), expected, atol=1e-6, rtol=0)


def test_rows_are_sorted_by_frames_then_tokens_with_errors_last():
    rows = {
        "id": np.array(list("abcdef"), object),
        "frames": np.array([3.0, 1.0, np.nan, 1.0, 3.0, 2.0]),
        "tokens": np.array([50.0, 40.0, np.nan, 30.0, 20.0, 45.0]),
        "inputs": np.array([b"a", b"b", b"", b"d", b"e", b"f"], object),
    }
    out = order_by_shape(rows)
    assert list(out["id"]) == ["d", "b", "f", "e", "a", "c"]
    assert [bytes(b) for b in out["inputs"]] == [b"d", b"b", b"f", b"e", b"a", b""]  # every column moves alike
    assert order_by_shape({"id": rows["id"]})["id"] is rows["id"]  # nothing to sort by: unchanged


def benchmark_module():
    path = Path(__file__).parents[1] / "jobs" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("qcurate_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_benchmark_builds_tiny_models_and_counts_full_sizes_without_building_them(tiny_models, tmp_path):
    bench = benchmark_module()
    folder, model = bench.build_model("llava", "tiny", tmp_path / "llava")
    assert model is None and Scorer(folder).level_logits([Preprocessor(folder)(media("coffee"))]).shape == (1, 5)
    # OneAlign's size: LLaMA-2-7B (6.74 B) + modality-adaptive k/v copies (32 x 2 x 4096^2 = 1.07 B) + ViT-L/14
    # (0.30 B) + abstractor (0.08 B): mPLUG-Owl2's published 8.2 B
    owl2 = bench.count_parameters("owl2", tiny_models["owl2"])
    assert 8.1e9 < owl2 < 8.3e9, owl2
    qwen = bench.count_parameters("qwen3_5", tiny_models["qwen3_5"])
    assert 0.7e9 < qwen < 1.0e9, qwen  # Qwen3.5-0.8B's scale


@pytest.mark.slow
def test_benchmark_measures_a_stage_process_start_up(tiny_models, tmp_path):
    """The start-up floor the benchmark prints is a fresh process's CPU to build a real stage: positive, and a stage
    that cannot be built (here: a folder without its weights) fails naming the stage instead of printing a figure."""
    bench = benchmark_module()
    assert bench.stage_startup_cpu(tiny_models["llava"], "prepare") > 0.5  # at least the interpreter and imports
    no_weights = shutil.copytree(
        tiny_models["llava"], tmp_path / "llava", ignore=shutil.ignore_patterns("*.safetensors")
    )
    with pytest.raises(RuntimeError, match="building the score stage failed"):
        bench.stage_startup_cpu(str(no_weights), "score")
