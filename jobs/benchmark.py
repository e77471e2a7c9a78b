"""Throughput benchmark: decode only, model forward only, decode + score in one process, and the whole Ray job.

    python jobs/benchmark.py                      # tiny llava on this machine
    python jobs/benchmark.py --padding            # also: padding before/after batching by shape (images + videos)
    python jobs/benchmark.py --device cuda --family owl2 --size full --batch-sizes 1,4,16,32,64   # OneAlign-size
    python jobs/benchmark.py --device cuda --family qwen3_5 --size full --batch-sizes 1,4,16,32,64  # Q-ReAlign-size
    python jobs/benchmark.py --family qwen3_5 --model q-future/Q-ReAlign-Mini-0.8B --batch-sizes 14 --device cuda

Everything is measured side by side in one run on the same data (machines here are shared and noisy: read the ratios,
and the medians over --repeats). Ray start-up is excluded from the job's throughput and reported apart.

`--size full` builds a random-weight model of the published size directly on the device in bf16 (no CPU copy of its
weights) for the in-process measurements, and saves it once for the whole job (whose scorer actor loads it the way
a real checkpoint loads). The sizes (FULL_SIZES) are the published ones where known; see each entry.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from transformers import PretrainedConfig
from transformers.utils import logging as hf_logging

from pipeline import models, scorers
from pipeline.corpora.shards import write_manifest
from pipeline.infra.media import MediaOptions, load_media
from pipeline.samples.corpus import IMAGE_LONG_SIDE, build_sample_corpus, load_photo, pan_zoom_frames, write_video
from pipeline.samples.tiny_models import FAMILIES, make_tiny_model
from pipeline.scorers import ScorerArgs
from pipeline.scorers.lmm_model import Scorer
from pipeline.scoring.job import JobConfig, run
from pipeline.scoring.plan import init_ray
from pipeline.scoring.stages import SHAPE_WINDOW, logical_cpus, order_by_shape

# ------------------------------------------------------------------------------------------------------------
# Model sizes

# mPLUG-Owl2 as OneAlign ships it: LLaMA-2-7B (modality-adaptive k/v projections and norms) + ViT-L/14 at 448 + the
# visual abstractor (64 queries). The visual fields are pipeline.models.owl2's defaults, which are the one-align sizes.
OWL2_FULL = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
    max_position_embeddings=2048,
    rms_norm_eps=1e-6,
)
# Qwen3.5-0.8B (Q-ReAlign-Mini's base): the published text sizes (24 layers of which every 4th is full attention,
# hidden 1024, 8 heads / 2 KV heads of 256, vocab 248320, tied embeddings). The MLP width, the linear-attention heads
# and the vision tower are estimates of this scale (the published config was not at hand here), ~0.85B in all.
QWEN3_5_FULL_TEXT = dict(
    hidden_size=1024,
    intermediate_size=3584,
    num_hidden_layers=24,
    layer_types=["linear_attention", "linear_attention", "linear_attention", "full_attention"] * 6,
    num_attention_heads=8,
    num_key_value_heads=2,
    head_dim=256,
    linear_key_head_dim=128,
    linear_value_head_dim=128,
    linear_num_key_heads=16,
    linear_num_value_heads=16,
    vocab_size=248320,
    max_position_embeddings=32768,
)
QWEN3_5_FULL_VISION = dict(
    depth=12, hidden_size=768, intermediate_size=3072, num_heads=12, patch_size=16, out_hidden_size=1024
)
QWEN3_5_FULL_PIXELS = dict(patch_size=16, merge_size=2, temporal_patch_size=2)
FULL_FAMILIES = ("owl2", "qwen3_5")


def full_config(family: str, tiny_config: PretrainedConfig) -> PretrainedConfig:
    """The full-size config of `family`, keeping the tiny model's token ids (its tokenizer is the one saved)."""
    if family == "owl2":
        from pipeline.models.owl2 import MPLUGOwl2Config

        fields = {**tiny_config.to_dict(), **OWL2_FULL, "visual_config": {}}  # {}: the one-align visual sizes
        for key in ("model_type", "transformers_version"):
            fields.pop(key, None)
        return MPLUGOwl2Config(**fields)
    if family == "qwen3_5":
        from transformers import Qwen3_5Config

        text = {**tiny_config.text_config.to_dict(), **QWEN3_5_FULL_TEXT}
        rope = dict(text.get("rope_parameters") or {})
        rope["mrope_section"] = [11, 11, 10]  # Qwen3-VL's split of the 64 rotary dims (half of head_dim 256 x 0.25 x 2)
        text["rope_parameters"] = rope
        vision = {**tiny_config.vision_config.to_dict(), **QWEN3_5_FULL_VISION}
        vision["num_position_embeddings"] = 2304
        ids = {k: getattr(tiny_config, k) for k in ("image_token_id", "video_token_id")}
        ids |= {k: getattr(tiny_config, k) for k in ("vision_start_token_id", "vision_end_token_id")}
        return Qwen3_5Config(text_config=text, vision_config=vision, tie_word_embeddings=True, **ids)
    raise ValueError(f"--size full is for {FULL_FAMILIES}, not {family!r}")


def model_class(family: str) -> type:
    if family == "owl2":
        from pipeline.models.owl2 import MPLUGOwl2LlamaForCausalLM

        return MPLUGOwl2LlamaForCausalLM
    from transformers import Qwen3_5ForConditionalGeneration

    return Qwen3_5ForConditionalGeneration


@contextlib.contextmanager
def building_on(device: str | torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Parameters are created on `device` in `dtype` from the start: a 7B model never exists in float32 or on CPU."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def count_parameters(family: str, tiny_folder: str) -> int:
    """Parameters of the full-size model, counted on the meta device (nothing is allocated)."""
    config = full_config(family, _tiny_config(family, tiny_folder))
    with building_on("meta", torch.bfloat16):
        model = model_class(family)(config)
    return sum(p.numel() for p in model.parameters())


def _tiny_config(family: str, folder: str) -> PretrainedConfig:
    return model_class(family).config_class.from_pretrained(folder)


def build_model(
    family: str, size: str, out: Path, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> tuple[str, torch.nn.Module | None]:
    """A model folder of `family` at `size` ("tiny": make_tiny_model; "full": the published size, random weights).

    For "full", also the model itself, built on `device` in `dtype`, so the in-process measurements need no load.
    """
    folder = make_tiny_model(family, out)  # the tokenizer, processor and chat template the full model keeps
    if size == "tiny":
        return str(folder), None
    config = full_config(family, _tiny_config(family, str(folder)))
    with building_on(device, dtype):
        model = model_class(family)(config)
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)  # for the whole job: its actor loads it from here
    _full_processor(family, folder)
    return str(folder), model


def _full_processor(family: str, folder: Path) -> None:
    """The processor at the full model's input size (the tiny one's is sized for tiny vision towers)."""
    if family == "owl2":
        from transformers import CLIPImageProcessor

        size = 448  # ViT-L/14 at 448, CLIP preprocessing as the checkpoints ship it
        CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(
            folder
        )
    else:
        from transformers import Qwen2VLImageProcessorPil

        Qwen2VLImageProcessorPil(**QWEN3_5_FULL_PIXELS).save_pretrained(folder)


# ------------------------------------------------------------------------------------------------------------
# Measurements


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_rate(n: int, fn, repeats: int) -> float:
    """Items per second, median over repeats."""
    return statistics.median(n / timed(fn) for _ in range(repeats))


def decode(scorer: Scorer, rows: list[dict]) -> list[dict]:
    return [scorer.preprocessor(load_media(r["uri"], r.get("media_type", "image"))) for r in rows]


def forward(scorer: Scorer, prepared: list[dict], batch_size: int) -> None:
    for i in range(0, len(prepared), batch_size):
        scorer.level_logits(prepared[i : i + batch_size])
    if scorer.device.startswith("cuda"):
        torch.cuda.synchronize()


def decode_and_score(scorer: Scorer, rows: list[dict], batch_size: int) -> None:
    for i in range(0, len(rows), batch_size):
        scorer.level_logits(decode(scorer, rows[i : i + batch_size]))


def shipped_bytes(scorer: Scorer, prepared: list[dict]) -> tuple[float, float]:
    """Bytes per item between the decode and score stages: as shipped now (raw pixels, uint8 where exact), and as
    they were before (the processor's float32 normalised pixels in place of the raw ones)."""
    family, image_major = scorer.family, scorer.preprocessor.image_major
    now, before = [], []
    for item in prepared:
        now.append(len(pickle.dumps(item, protocol=5)))
        normalised = family.collate([item], image_major, 0)["pixel_values"].numpy()
        old = {k: v for k, v in item.items() if k != models.PIXEL_NORM}
        old["pixel_values"] = normalised.reshape(item["pixel_values"].shape).astype(np.float32)
        if "pixel_attention_mask" in old:
            old["pixel_attention_mask"] = old["pixel_attention_mask"].astype(np.int64)
        before.append(len(pickle.dumps(old, protocol=5)))
    return statistics.mean(now), statistics.mean(before)


# ------------------------------------------------------------------------------------------------------------
# Padding: batches in manifest order against batches out of shape-sorted windows
# (pipeline.scoring.stages.order_by_shape)


def padding_corpus(root: Path, seed: int = 0) -> list[dict]:
    """The sample corpus's images plus 30 real mp4 videos of 1..30 s (4 fps, 128x96), shuffled together."""
    rows = build_sample_corpus(str(root / "sample"), n_videos=0)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    photo = load_photo("astronaut")
    for seconds in range(1, 31):
        path = str(root / "videos" / f"pan-{seconds:02d}s.mp4")
        write_video(path, pan_zoom_frames(photo, n_frames=4 * seconds), fps=4)
        rows.append({"id": f"video-{seconds:02d}s", "uri": path, "media_type": "video"})
    order = np.random.default_rng(seed).permutation(len(rows))
    return [rows[i] for i in order]


def sequence_length(scorer: Scorer, item: dict) -> int:
    """The language model's sequence length for one item (mPLUG-Owl2 expands its one image slot by each frame's
    queries inside the model; the native families' input_ids are already expanded)."""
    n = len(item["input_ids"])
    if scorer.family.__name__.endswith("owl2_family"):
        per_frame = scorer.model.config.abstractor_settings.num_learnable_queries + 1  # + the end token
        n += len(item["pixel_values"]) * per_frame - 1
    return n


def padding(lengths: np.ndarray, frames: np.ndarray, batch_size: int) -> tuple[float, float]:
    """(padded tokens / all tokens, padded frames / all frames) over consecutive batches, each padded to its
    longest row (frames: where a family pads a row's images to the batch's most, e.g. Idefics3)."""
    slots = tokens = frame_slots = real_frames = 0
    for i in range(0, len(lengths), batch_size):
        batch, batch_frames = lengths[i : i + batch_size], frames[i : i + batch_size]
        slots += len(batch) * batch.max()
        tokens += batch.sum()
        frame_slots += len(batch_frames) * batch_frames.max()
        real_frames += batch_frames.sum()
    return 1 - tokens / slots, 1 - real_frames / frame_slots


def report_padding(scorer: Scorer, work: Path, batch_size: int) -> None:
    rows = padding_corpus(work / "padding")
    options = scorer.preprocessor.recipe.video.media_options(MediaOptions())  # 1 fps, at most 16 frames
    lengths, frames, n_videos, refused = [], [], 0, 0
    for row in rows:
        media = load_media(row["uri"], row["media_type"], options)
        try:
            item = scorer.preprocessor(media)
        except ValueError:  # a family that scores no videos (InstructBLIP): the job gives these rows errors
            refused += 1
            continue
        lengths.append(sequence_length(scorer, item))
        frames.append(len(media.frames))
        n_videos += row["media_type"] == "video"
    if refused:
        print(f"padding: {refused} items this model does not score are left out")
    lengths, frames = np.array(lengths), np.array(frames, dtype=float)
    before = padding(lengths, frames, batch_size)
    # the job's way: windows of SHAPE_WINDOW batches, each sorted by (frames, tokens)
    window = batch_size * SHAPE_WINDOW
    sorted_rows = [
        order_by_shape({"frames": frames[i : i + window], "tokens": lengths[i : i + window].astype(float)})
        for i in range(0, len(rows), window)
    ]
    after = padding(
        np.concatenate([r["tokens"] for r in sorted_rows]),
        np.concatenate([r["frames"] for r in sorted_rows]),
        batch_size,
    )
    print(
        f"padding over {len(lengths)} items ({len(lengths) - n_videos} images, {n_videos} videos of 1-30 s; frames "
        f"{int(frames.min())}-{int(frames.max())}, sequence length {lengths.min()}-{lengths.max()} tokens), batch "
        f"{batch_size}:"
    )
    print(f"  manifest order:                        padded tokens {before[0]:6.1%}, padded frames {before[1]:6.1%}")
    print(f"  sorted by shape in windows of {window:4d}:  padded tokens {after[0]:6.1%}, padded frames {after[1]:6.1%}")


# ------------------------------------------------------------------------------------------------------------
# Start-up: the CPU a fresh stage process spends before its first batch (a lower bound on the job's first rows)

# A fresh interpreter builds one stage the way a Ray Data actor does (ray.data first, then the stage's constructor)
# and prints the CPU seconds its process used in all: interpreter, imports, processor or model load.
STAGE_STARTUP = """
import pickle, resource, sys
import ray.data
from pipeline.scoring import stages
kind, options = pickle.loads(bytes.fromhex(sys.argv[2]))
stages.PrepareStage(kind, options) if sys.argv[1] == "prepare" else stages.ScoreStage(kind)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(usage.ru_utime + usage.ru_stime)
"""


def stage_startup_cpu(model: str, stage: str) -> float:
    """CPU seconds for a fresh process to build the job's `stage` ("prepare" or "score") for `model`."""
    kind = scorers.create("lmm", ScorerArgs(model, model))
    arg = pickle.dumps((kind, MediaOptions())).hex()
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU cost of start-up; a GPU's own set-up is not counted
    done = subprocess.run([sys.executable, "-c", STAGE_STARTUP, stage, arg], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"building the {stage} stage failed: {done.stderr[-2000:]}")
    return float(done.stdout.split()[-1])


def report_startup(model: str, cpus: int, n_rows: int, decode_rate: float, forward_rate: float) -> None:
    """The best whole-job ratio this machine allows: the job's processes need at least their start-up CPU plus every
    image's decode and forward CPU (as measured in one process), over the cores they share. Ray's own processes are
    left out, so the true bound is lower."""
    _, _, decoders = logical_cpus(cpus, 0, 1)
    prepare, score = stage_startup_cpu(model, "prepare"), stage_startup_cpu(model, "score")
    work = decoders * prepare + score + n_rows * (1 / decode_rate + 1 / forward_rate)
    fastest = work / min(cpus, decoders + 1)
    print(
        f"start-up CPU of a fresh stage process (alone): decoder {prepare:.1f} s, scorer {score:.1f} s; with "
        f"{decoders} decoder(s) and 1 scorer on {cpus} CPU(s), start-up and {n_rows} images need {work:.1f} CPU-s: "
        f"the whole job takes >= {fastest:.1f} s, at most {n_rows / fastest / min(decode_rate, forward_rate):.2f} x "
        "the slower stage"
    )


# ------------------------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # qwen3_5 compares with Q-ReAlign's published 61.1 images/s (Mini 0.8B, H200, batch 14): pass --model <folder>
    p.add_argument("--family", default="llava", choices=FAMILIES)
    p.add_argument("--model", help="a model folder instead of a random one")
    p.add_argument("--size", default="tiny", choices=("tiny", "full"), help="random model size (full: owl2, qwen3_5)")
    p.add_argument("--images", type=int, default=960, help="images in the benchmark corpus")
    p.add_argument("--batch-sizes", default="16", help="comma-separated forward batch sizes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--skip-pipeline", action="store_true", help="only the in-process measurements")
    p.add_argument("--padding", action="store_true", help="also padding before/after batching by shape")
    args = p.parse_args()
    hf_logging.disable_progress_bar()
    work = Path(tempfile.mkdtemp(prefix="qcurate-bench-"))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    built = None
    if args.model:
        model = args.model
    else:
        model, built = build_model(args.family, args.size, work / "model", device, dtype)
    photos = [r for r in build_sample_corpus(str(work / "corpus"), n_videos=0)]
    rows = [{**photos[i % len(photos)], "id": f"img-{i:06d}"} for i in range(args.images)]
    print(f"benchmark: {len(rows)} images ({len(photos)} photographs, {IMAGE_LONG_SIDE} px), model {model}")

    scorer = Scorer(model, device=device, model=built)
    n_params = sum(p.numel() for p in scorer.model.parameters())
    print(
        f"device {scorer.device}, dtype {scorer.dtype}, threads {torch.get_num_threads()}, "
        f"{n_params / 1e6:,.1f} M parameters"
    )
    sample = rows[: min(len(rows), 192)]
    prepared = decode(scorer, sample)
    now, before = shipped_bytes(scorer, prepared)
    pixels = prepared[0]["pixel_values"]
    print(
        f"bytes per image between the stages: {now:,.0f} (pixels {pixels.dtype} {tuple(pixels.shape)}) against "
        f"{before:,.0f} with float32 normalised pixels = {before / now:.2f} x fewer"
    )
    decode_rate = median_rate(len(sample), lambda: decode(scorer, sample), args.repeats)
    print(f"decode only (fetch + decode + preprocess, 1 process): {decode_rate:8.1f} images/s")
    cuda = scorer.device.startswith("cuda")
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        forward(scorer, prepared, batch_size)  # warm-up
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        forward_rate = median_rate(len(prepared), lambda b=batch_size: forward(scorer, prepared, b), args.repeats)
        peak = f" | peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else ""
        both_rate = median_rate(len(sample), lambda b=batch_size: decode_and_score(scorer, sample, b), args.repeats)
        slower = min(decode_rate, forward_rate)
        print(
            f"batch {batch_size:3d}: forward only {forward_rate:8.1f} images/s | decode+score in one process "
            f"{both_rate:8.1f} images/s = {both_rate / slower:.2f} x the slower of the two{peak}"
        )
    if args.padding:
        report_padding(scorer, work, int(args.batch_sizes.split(",")[0]))

    if args.skip_pipeline:
        return
    batch_size = int(args.batch_sizes.split(",")[0])
    scorer = built = None  # the job's scorer actor loads its own copy (on a GPU: the device's memory is needed back)
    if cuda:
        torch.cuda.empty_cache()
    if not cuda:  # on a GPU machine the cores are many and the model load dominates: this floor says little
        report_startup(model, os.cpu_count() or 1, len(rows), decode_rate, forward_rate)
    manifest = str(work / "manifest")
    write_manifest(rows, manifest, num_shards=max(1, len(rows) // 120))
    ray_start = init_ray()
    summary = run(
        JobConfig(manifest=manifest, output=str(work / "scores"), model=model, batch_size=batch_size),
        log=lambda _: None,
    )
    job = summary["this_run"]
    slower = min(decode_rate, forward_rate)
    print(
        f"whole job on Ray (read -> decode actors -> scorer actor -> commit): {job['rows_per_s']:8.1f} images/s "
        f"over {job['scoring_s']:.1f} s = {job['rows_per_s'] / slower:.2f} x the slower of decode/forward"
    )
    print(
        f"  where the time goes: Ray start-up {ray_start:.1f} s (excluded above); first scored rows after "
        f"{job['first_result_s']:.1f} s (actor start-up, model load); after that {job['steady_rows_per_s']:.1f} "
        f"images/s = {job['steady_rows_per_s'] / slower:.2f} x the slower of decode/forward"
    )


if __name__ == "__main__":
    main()
