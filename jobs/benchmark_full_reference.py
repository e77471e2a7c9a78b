"""Throughput of full-reference scoring: preparation alone in one process, and the whole Ray job, per scorer.

    python jobs/benchmark_full_reference.py                    # psnr, ssim, ms-ssim and a tiny vtamiq, 960 pairs
    python jobs/benchmark_full_reference.py --scorers ms-ssim --pairs 4800 --repeats 3

For the classical metrics the preparation IS the scoring (both images decoded, the metric), so the job's
rate over the one-process rate shows what Ray Data's decode actors add or cost on this machine's CPUs; for vtamiq
the device step (the ViT over both patch sets) follows. Everything is measured side by side in one run on the same
pairs (machines here are shared and noisy: read the ratios, and the medians over --repeats). Ray start-up is
excluded from the job's rate and reported apart.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from pipeline import scorers
from pipeline.corpora.shards import write_manifest
from pipeline.infra.media import MediaOptions
from pipeline.models.vtamiq import build_tiny
from pipeline.samples.corpus import PAIR_LONG_SIDE, build_pair_corpus
from pipeline.scorers import ScorerArgs
from pipeline.scoring.job import JobConfig, run
from pipeline.scoring.plan import init_ray


def prepare_rate(kind, rows: list[dict], repeats: int) -> float:
    """Pairs per second through the kind's preparation (and device step, if any) in this one process."""
    prepare = kind.preparer(MediaOptions())
    step = kind.device_step("cpu") if kind.runs_on_device else None

    def once() -> float:
        start = time.perf_counter()
        prepared = [prepare(r) for r in rows]
        if step is not None:
            for i in range(0, len(prepared), 16):
                step([p.inputs for p in prepared[i : i + 16]])
        return len(rows) / (time.perf_counter() - start)

    return statistics.median(once() for _ in range(repeats))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scorers", default="psnr,ssim,ms-ssim,vtamiq", help="comma-separated kinds")
    p.add_argument("--pairs", type=int, default=960, help="pairs in the benchmark manifest")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qcurate-bench-fr-"))
    distinct = build_pair_corpus(str(work / "pairs"))
    rows = [{**distinct[i % len(distinct)], "id": f"pair-{i:06d}"} for i in range(args.pairs)]
    manifest = str(work / "manifest")
    write_manifest(rows, manifest, num_shards=max(1, len(rows) // 120))
    vtamiq = build_tiny(str(work / "vtamiq"))
    print(f"benchmark: {len(rows)} pairs ({len(distinct)} distinct, {PAIR_LONG_SIDE} px long side, PNG)")
    ray_start = init_ray()
    sample = rows[: min(len(rows), 96)]
    for name in args.scorers.split(","):
        model = vtamiq if name == "vtamiq" else None
        kind = scorers.create(name, ScorerArgs(model, model))
        one = prepare_rate(kind, sample, args.repeats)
        summary = run(
            JobConfig(manifest, str(work / f"scores-{name}"), model, scorer=name, batch_size=16), log=lambda _: None
        )
        job = summary["this_run"]
        print(
            f"{name:8s} one process {one:7.1f} pairs/s | whole job {job['rows_per_s']:7.1f} pairs/s = "
            f"{job['rows_per_s'] / one:.2f} x | steady {job.get('steady_rows_per_s', 0):7.1f} pairs/s = "
            f"{job.get('steady_rows_per_s', 0) / one:.2f} x | first rows after {job['first_result_s']:.1f} s"
        )
    print(f"Ray start-up {ray_start:.1f} s (excluded above)")


if __name__ == "__main__":
    main()
