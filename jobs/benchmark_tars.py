"""Benchmark: one corpus stored two ways on object storage, as img2dataset writes it (10 tars + their Parquet) and as
one object per item, scored by the real job through the delay/fault proxy: requests per item, job time, rows/s.

    python jobs/benchmark_tars.py                          # 10,000 JPEGs, 10 tars, faults 0% and 10%
    python jobs/benchmark_tars.py --items 2000 --tars 4 --faults 0 0.1 0.25

A moto S3 server on loopback holds the corpus twice: `shards/NNNNN.tar` + `shards/NNNNN.parquet` (WebDataset naming:
<key>.jpg, <key>.json, <key>.txt per item; the Parquet with key, url, caption, status) and `media/<key>.jpg` with a
one-shard Parquet manifest. The fault proxy (pipeline.samples.faults) in front of it delays every request
(--delay-ms: a store's first-byte latency) and answers 503 SlowDown with the given probability. The job
(`jobs/score_dataset.py --scorer psnr`, a subprocess with its own local Ray) scores each layout; every row's reference
is one local file, read the same way in both layouts, so the difference is the items' storage alone. Printed per layout
and fault rate: requests per item to the items' storage (tars or objects, listing and index scan included), the job's
scoring time, rows/s, and rows lost or failed (both must be 0).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs.benchmark_fetch import jpeg, photographs  # noqa: E402
from pipeline.samples.faults import FaultProxy, start_s3_server  # noqa: E402


def put_corpus(endpoint: str, items: int, tars: int, size: tuple[int, int], reference: str) -> tuple[str, str]:
    """The corpus in both layouts in a fresh bucket (written to moto directly): (tar folder, object manifest)."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, endpoint_url=endpoint)
    bucket = f"bench-{int(time.time() * 1000)}"
    fs.mkdir(bucket)
    pictures = [jpeg(p, size, quality=80) for p in photographs()[:1]]
    per_tar = -(-items // tars)
    rows = []
    for t in range(tars):
        keys = [f"{t:05d}{i:04d}" for i in range(per_tar) if t * per_tar + i < items]
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            for key in keys:
                for ext, data in (("jpg", pictures[0]), ("json", b"{}"), ("txt", b"a photograph")):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        fs.pipe_file(f"{bucket}/shards/{t:05d}.tar", buffer.getvalue())
        side = {"key": keys, "url": [f"https://example.com/{k}.jpg" for k in keys], "status": ["success"] * len(keys)}
        side["ref_uri"] = [reference] * len(keys)
        fs.pipe_file(f"{bucket}/shards/{t:05d}.parquet", parquet(pa.table(side)))
        for key in keys:
            fs.pipe_file(f"{bucket}/media/{key}.jpg", pictures[0])
            rows.append(
                {"id": key, "uri": f"s3://{bucket}/media/{key}.jpg", "media_type": "image", "ref_uri": reference}
            )
    fs.pipe_file(f"{bucket}/manifest/part-00000.parquet", parquet(pa.Table.from_pylist(rows)))
    return f"s3://{bucket}/shards/", f"s3://{bucket}/manifest"


def parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def score(manifest: str, output: str, env: dict, batch_size: int) -> dict:
    cmd = [sys.executable, "jobs/score_dataset.py", "--manifest", manifest, "--output", output, "--scorer", "psnr"]
    cmd += ["--batch-size", str(batch_size), "--max-error-rate", "1", "--progress-every", "60"]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if result.returncode:
        raise SystemExit(f"the job failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads((Path(output) / "_run.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=10_000)
    p.add_argument("--tars", type=int, default=10)
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=192)
    p.add_argument("--faults", type=float, nargs="+", default=[0.0, 0.1])
    p.add_argument("--delay-ms", type=float, default=10.0)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()

    server, endpoint = start_s3_server()
    reference = str(Path(tempfile.mkdtemp(prefix="bench-tars-ref-")) / "reference.jpg")
    Path(reference).write_bytes(jpeg(photographs()[0], (args.width, args.height), quality=95))
    t0 = time.perf_counter()
    tars, objects = put_corpus(endpoint, args.items, args.tars, (args.width, args.height), reference)
    print(
        f"tars vs objects: {args.items} JPEGs of {args.width}x{args.height} as {args.tars} tars (+ Parquet) and as "
        f"{args.items} objects on moto S3 (written in {time.perf_counter() - t0:.0f} s), through the fault proxy "
        f"(+{args.delay_ms:g} ms a request); job: --scorer psnr, batch {args.batch_size}, its own local Ray"
    )
    track = lambda path: "/shards/" in path or "/media/" in path  # noqa: E731
    with FaultProxy(endpoint, delay_s=args.delay_ms / 1000, track=track) as proxy:
        env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url, "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        for rate in args.faults:
            for layout, manifest in (("tars", tars), ("objects", objects)):
                proxy.fault_rate = rate
                proxy.reset()
                output = tempfile.mkdtemp(prefix=f"bench-{layout}-out-")
                run = score(manifest, output, env, args.batch_size)
                seconds = run["this_run"]["scoring_s"]
                requests = proxy.counts(tracked=True)
                faulted = sum(proxy.counts(tracked=True, faulted=True).values())
                ids, failed = set(), 0
                for shard in Path(output).glob("*.parquet"):
                    table = pq.read_table(shard, columns=["id", "error"])
                    ids |= set(table.column("id").to_pylist())
                    failed += sum(e is not None for e in table.column("error").to_pylist())
                total = sum(requests.values())
                print(
                    f"  faults {rate:4.0%} {layout:>7}: {total / args.items:.4f} requests per item ({requests}, "
                    f"{faulted} faulted) | job scoring {seconds:7.1f} s, {args.items / seconds:7.1f} rows/s | "
                    f"rows lost {args.items - len(ids)}, failed {failed}"
                )
    server.stop()


if __name__ == "__main__":
    main()
