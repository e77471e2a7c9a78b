"""Benchmark manifest validation at corpus scale, and the scoring driver's memory over many shards.

    python jobs/benchmark_manifest.py --rows 1000000,10000000,50000000 --cpus 1,2
    python jobs/benchmark_manifest.py --score-shards 200

Validation: a synthetic manifest of N rows (100,000 a shard, ids and URIs like a web corpus) on local disk, checked
by `pipeline.scoring.validation` on a fresh local Ray of C CPUs, in a fresh driver process per run: wall time, rows/s,
and the driver's peak RSS (VmHWM; Ray's workers are other processes), with the growth between sizes. Scoring: a manifest
of that many shards of small images, scored with a tiny LLaVA: the most shards the driver held partly gathered at once,
and its peak RSS. Manifests are kept in --workdir between runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROWS_PER_SHARD = 100_000

VALIDATE = """
import json, re, sys, time
import ray
from pipeline.corpora.shards import list_shards
from pipeline.scoring.validation import validate_manifest_shards
def hwm():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
ray.init(num_cpus=int(sys.argv[2]), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
base = hwm()
start = time.perf_counter()
shards = validate_manifest_shards(list_shards(sys.argv[1]), log=lambda m: None)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rows": sum(s.num_rows for s in shards), "peak": hwm(), "base": base}))
"""

SCORE = """
import json, re, sys
import ray
from pipeline.scoring.job import JobConfig, run
def hwm():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
summary = run(JobConfig(manifest=sys.argv[1], output=sys.argv[2], model=sys.argv[3], restart=True), log=lambda m: None)
print(json.dumps({"peak": hwm(), **summary["this_run"]}))
"""


def synthetic_manifest(folder: Path, rows: int) -> Path:
    """`rows` rows in shards of ROWS_PER_SHARD, written once (a marker file says the folder is complete)."""
    done = folder / "_complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for s, start in enumerate(range(0, rows, ROWS_PER_SHARD)):
        n = min(ROWS_PER_SHARD, rows - start)
        numbers = pc.cast(pa.array(range(start, start + n), pa.int64()), pa.string())
        ids = pc.binary_join_element_wise("laion-", numbers, "")
        uris = pc.binary_join_element_wise("s3://corpus/images/", numbers, ".jpg", "")
        table = pa.table({"id": ids, "uri": uris, "media_type": pa.array(["image"] * n)})
        pq.write_table(table, folder / f"part-{s:05d}.parquet")
    done.touch()
    return folder


def run_json(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    # Ray's raylet may print its own warnings after ours: the result is the last JSON line.
    return json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])


def bench_validation(workdir: Path, sizes: list[int], cpus: list[int]) -> None:
    print(f"validation ({ROWS_PER_SHARD:,} rows a shard, local disk; driver peak RSS = VmHWM of the driver process)")
    first, last = {}, {}
    for rows in sizes:
        manifest = synthetic_manifest(workdir / f"manifest-{rows}", rows)
        for c in cpus:
            r = run_json(VALIDATE, str(manifest), str(c))
            assert r["rows"] == rows, r
            first.setdefault(c, {**r, "n": rows})
            last[c] = {**r, "n": rows}
            growth = r["peak"] / first[c]["peak"]
            print(
                f"  {rows:>11,} rows, {-(-rows // ROWS_PER_SHARD):>4} shards, {c} CPU(s): {r['seconds']:7.1f} s "
                f"= {rows / r['seconds'] / 1e6:5.2f} M rows/s; driver peak RSS {r['peak'] / 1e6:6.0f} MB "
                f"({growth:.2f}x the smallest size's)"
            )
    for c in cpus:  # the slope between the smallest and the largest size: the time the rows cost, start-up aside
        extra_rows, extra_s = last[c]["n"] - first[c]["n"], last[c]["seconds"] - first[c]["seconds"]
        if extra_rows:
            print(
                f"  {c} CPU(s): {extra_s / extra_rows * 1e6:.2f} s per extra million rows "
                f"({extra_rows / extra_s / 1e6:.2f} M rows/s beyond start-up)"
            )


def bench_scoring(workdir: Path, shards: int) -> None:
    from pipeline.corpora.shards import write_manifest
    from pipeline.samples.corpus import build_sample_corpus
    from pipeline.samples.tiny_models import make_tiny_model

    model = workdir / "tiny-llava"
    if not (model / "config.json").exists():
        make_tiny_model("llava", model)
    rows = build_sample_corpus(str(workdir / "corpus"), photos=("astronaut", "coffee", "chelsea"), n_videos=0)
    rows = [{**r, "id": f"{r['id']}#{i}"} for i in range(-(-shards * 5 // len(rows))) for r in rows][: shards * 5]
    manifest = workdir / f"score-manifest-{shards}"
    if not manifest.exists():
        write_manifest(rows, str(manifest), num_shards=shards)
    r = run_json(SCORE, str(manifest), str(workdir / "scores"), str(model))
    print(
        f"scoring {len(rows)} images in {shards} shards: at most {r['max_partial_shards']} shard(s) partly gathered "
        f"in the driver at once; driver peak RSS {r['peak'] / 1e6:.0f} MB; {r['steady_rows_per_s']} rows/s steady"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="1000000,10000000", help="manifest sizes to validate, comma-separated")
    p.add_argument("--cpus", default="1,2", help="local Ray CPUs to validate with, comma-separated")
    p.add_argument("--score-shards", type=int, default=0, help="also score a manifest of this many shards")
    p.add_argument("--workdir", default="/tmp/qcurate-bench-manifest")
    a = p.parse_args()
    workdir = Path(a.workdir)
    if a.rows:
        bench_validation(workdir, [int(x) for x in a.rows.split(",")], [int(x) for x in a.cpus.split(",")])
    if a.score_shards:
        bench_scoring(workdir, a.score_shards)


if __name__ == "__main__":
    main()
