"""Throughput benchmark: decode only, model forward only, decode + score in one process, and the whole Ray job.

    python jobs/benchmark.py                      # tiny llava on this machine
    python jobs/benchmark.py --family owl2 --batch-sizes 1,8,32 --device cuda   # on a GPU machine
    python jobs/benchmark.py --family qwen3_5 --model q-future/Q-ReAlign-Mini-0.8B --batch-sizes 14 --device cuda

Everything is measured side by side in one run on the same data (machines here are shared and noisy: read the ratios,
and the medians over --repeats). Ray start-up is excluded from the job's throughput and reported apart.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers.utils import logging as hf_logging

from pipeline.corpus import IMAGE_LONG_SIDE, build_sample_corpus
from pipeline.job import JobConfig, init_ray, run
from pipeline.media import load_media
from pipeline.models.tiny import FAMILIES, make_tiny_model
from pipeline.scorer import Scorer
from pipeline.shards import write_manifest


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_rate(n: int, fn, repeats: int) -> float:
    """Items per second, median over repeats."""
    return statistics.median(n / timed(fn) for _ in range(repeats))


def decode(scorer: Scorer, rows: list[dict]) -> list[dict]:
    return [scorer.preprocessor(load_media(r["uri"], "image")) for r in rows]


def forward(scorer: Scorer, prepared: list[dict], batch_size: int) -> None:
    for i in range(0, len(prepared), batch_size):
        scorer.level_logits(prepared[i : i + batch_size])
    if scorer.device.startswith("cuda"):
        torch.cuda.synchronize()


def decode_and_score(scorer: Scorer, rows: list[dict], batch_size: int) -> None:
    for i in range(0, len(rows), batch_size):
        scorer.level_logits(decode(scorer, rows[i : i + batch_size]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # qwen3_5 compares with Q-ReAlign's published 61.1 images/s (Mini 0.8B, H200, batch 14): pass --model <folder>
    p.add_argument("--family", default="llava", choices=FAMILIES)
    p.add_argument("--model", help="a model folder instead of a tiny random one")
    p.add_argument("--images", type=int, default=960, help="images in the benchmark corpus")
    p.add_argument("--batch-sizes", default="16", help="comma-separated forward batch sizes")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--skip-pipeline", action="store_true", help="only the in-process measurements")
    args = p.parse_args()
    hf_logging.disable_progress_bar()
    work = Path(tempfile.mkdtemp(prefix="qcurate-bench-"))
    model = args.model or str(make_tiny_model(args.family, work / "model"))
    photos = [r for r in build_sample_corpus(str(work / "corpus"), n_videos=0)]
    rows = [{**photos[i % len(photos)], "id": f"img-{i:06d}"} for i in range(args.images)]
    print(f"benchmark: {len(rows)} images ({len(photos)} photographs, {IMAGE_LONG_SIDE} px), model {model}")

    scorer = Scorer(model, device=args.device)
    print(f"device {scorer.device}, dtype {scorer.dtype}, threads {torch.get_num_threads()}")
    sample = rows[: min(len(rows), 192)]
    prepared = decode(scorer, sample)
    decode_rate = median_rate(len(sample), lambda: decode(scorer, sample), args.repeats)
    print(f"decode only (fetch + decode + preprocess, 1 process): {decode_rate:8.1f} images/s")
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        forward(scorer, prepared, batch_size)  # warm-up
        forward_rate = median_rate(len(prepared), lambda b=batch_size: forward(scorer, prepared, b), args.repeats)
        both_rate = median_rate(len(sample), lambda b=batch_size: decode_and_score(scorer, sample, b), args.repeats)
        slower = min(decode_rate, forward_rate)
        print(
            f"batch {batch_size:3d}: forward only {forward_rate:8.1f} images/s | decode+score in one process "
            f"{both_rate:8.1f} images/s = {both_rate / slower:.2f} x the slower of the two"
        )

    if args.skip_pipeline:
        return
    batch_size = int(args.batch_sizes.split(",")[0])
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
