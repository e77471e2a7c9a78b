"""Benchmark: reading media from object storage (requests per item, job time under injected faults) and JPEG draft
decoding (decode-only images/s on 12-megapixel JPEGs, with and without the draft).

    python jobs/benchmark_fetch.py                        # both parts, on this checkout's code
    python jobs/benchmark_fetch.py --part fetch --items 96 --faults 0 0.1 0.25
    python jobs/benchmark_fetch.py --part fetch --code /work/main   # the same measurement on another checkout

fetch: a moto S3 server on loopback holds a manifest and its images; a fault proxy (pipeline.samples.faults) in front of
it delays each request (--delay-ms, a store's first-byte latency) and answers 503 SlowDown with the given probability.
The real scoring job (`jobs/score_dataset.py`, a subprocess of --code's checkout, its own local Ray) reads the manifest
and the media through the proxy; by default `--scorer psnr`, which isolates I/O and decode (each row reads its item and
its reference). Printed per fault rate: media requests per object by method, all requests, the job's scoring time and
its ratio to the fault-free run, rows lost and rows failed (both must be 0).

decode: `load_media` on local 12 MP JPEGs (scikit-image's photographs upscaled, q90): images/s with the draft off and
on (draft side --draft-side: twice Q-Align's 448), and the ratio.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.infra.media import MediaOptions, load_media  # noqa: E402
from pipeline.samples.faults import FaultProxy, start_s3_server  # noqa: E402


def photographs() -> list[np.ndarray]:
    """scikit-image's bundled colour photographs (real content, not noise), RGB uint8."""
    from skimage import data

    return [data.astronaut(), data.chelsea(), data.coffee(), data.rocket(), data.immunohistochemistry()]


def jpeg(image: np.ndarray, size: tuple[int, int], quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).resize(size, Image.Resampling.LANCZOS).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------------------
# fetch


def put_corpus(endpoint: str, items: int, size: tuple[int, int]) -> str:
    """Items and their references (distinct objects of the same pictures, q95), and one manifest shard, in a fresh
    bucket (written to moto directly, not through the proxy). Returns the manifest's URL."""
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, endpoint_url=endpoint)
    bucket = f"bench-{int(time.time() * 1000)}"
    fs.mkdir(bucket)
    pictures = photographs()
    rows = []
    for i in range(items):
        picture = pictures[i % len(pictures)]
        fs.pipe_file(f"{bucket}/media/item-{i:05d}.jpg", jpeg(picture, size, quality=75 + i % 10))
        fs.pipe_file(f"{bucket}/media/ref-{i:05d}.jpg", jpeg(picture, size, quality=95))
        rows.append(
            {
                "id": f"item-{i:05d}",
                "uri": f"s3://{bucket}/media/item-{i:05d}.jpg",
                "media_type": "image",
                "ref_uri": f"s3://{bucket}/media/ref-{i:05d}.jpg",
            }
        )
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    fs.pipe_file(f"{bucket}/manifest/part-00000.parquet", sink.getvalue().to_pybytes())
    return f"s3://{bucket}/manifest"


def run_job(args, manifest: str, output: str, env: dict) -> dict:
    """The scoring job as a user runs it, on --code's checkout. Returns its _run.json."""
    python = args.python or str(Path(args.code) / ".venv" / "bin" / "python")
    cmd = [python, "jobs/score_dataset.py", "--manifest", manifest, "--output", output, "--scorer", args.scorer]
    cmd += ["--batch-size", str(args.batch_size), "--max-error-rate", "1", "--progress-every", "60"]
    if args.model:
        cmd += ["--model", args.model]
    if args.fetch_concurrency is not None:  # a checkout from before the flag takes none
        cmd += ["--fetch-concurrency", str(args.fetch_concurrency)]
    result = subprocess.run(cmd, cwd=args.code, env=env, capture_output=True, text=True, timeout=1800)
    if result.returncode:
        raise SystemExit(f"the job failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return json.loads((Path(output) / "_run.json").read_text())


def bench_fetch(args) -> None:

    server, endpoint = start_s3_server()
    manifest = put_corpus(endpoint, args.items, (args.width, args.height))
    objects = 2 * args.items if args.scorer in ("psnr", "psnr-y", "ssim", "ms-ssim", "vtamiq") else args.items
    print(
        f"fetch: {args.items} rows ({objects} objects of {args.width}x{args.height} JPEG) on moto S3 through the fault "
        f"proxy (+{args.delay_ms:g} ms per request); --scorer {args.scorer}, code {args.code}, "
        f"fetch concurrency {args.fetch_concurrency or 'the job default'}"
    )
    with FaultProxy(endpoint, delay_s=args.delay_ms / 1000, track=lambda path: "/media/" in path) as proxy:
        env = {**os.environ, "AWS_ENDPOINT_URL": proxy.url, "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("RAY_ADDRESS", None)
        base = None
        for rate in args.faults:
            proxy.fault_rate = rate
            proxy.reset()
            output = tempfile.mkdtemp(prefix="bench-fetch-out-")
            run = run_job(args, manifest, output, env)
            seconds = run["this_run"]["scoring_s"]
            # From the first media request to the last: the reading and decoding without the job's start-up
            # (actors, model), which a loaded machine makes noisy.
            window = proxy.window_s()
            base = (seconds, window) if base is None else base
            table = pq.read_table(Path(output) / "part-00000.parquet", columns=["id", "error"])
            lost = args.items - len(set(table.column("id").to_pylist()))
            failed = sum(e is not None for e in table.column("error").to_pylist())
            media, everything = proxy.counts(tracked=True), proxy.counts()
            per_object = ", ".join(f"{m} {n / objects:.2f}" for m, n in media.items())
            faulted = sum(proxy.counts(tracked=True, faulted=True).values())
            print(
                f"  faults {rate:4.0%}: job {seconds:6.1f} s ({seconds / base[0]:4.2f}x the 0% run), media reads "
                f"{window:6.1f} s ({window / base[1]:4.2f}x, {args.items / window:5.1f} rows/s) | "
                f"media requests per object: {per_object} "
                f"({faulted} of them faulted) | all requests {everything} | rows lost {lost}, failed {failed}"
            )
    server.stop()


# ------------------------------------------------------------------------------------------------------------
# decode


def bench_decode(args) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-draft-"))
    paths = []
    for i, picture in enumerate(photographs()[: args.decode_images]):
        path = folder / f"photo-{i}.jpg"
        path.write_bytes(jpeg(picture, (4000, 3000)))
        paths.append(str(path))
    full = MediaOptions(draft=False)
    drafted = MediaOptions(draft_side=args.draft_side)
    rates = {}
    for name, options in (("full", full), ("draft", drafted)):
        load_media(paths[0], "image", options)  # warm-up
        start, count = time.perf_counter(), 0
        while count < args.decode_rounds * len(paths):
            load_media(paths[count % len(paths)], "image", options)
            count += 1
        rates[name] = count / (time.perf_counter() - start)
    shape = load_media(paths[0], "image", drafted).frames[0].shape
    print(
        f"decode: {len(paths)} 12 MP (4000x3000) JPEG q90, {args.decode_rounds} rounds: full {rates['full']:.2f} "
        f"images/s, draft (side >= {args.draft_side}: decoded {shape[1]}x{shape[0]}) {rates['draft']:.2f} "
        f"images/s, ratio {rates['draft'] / rates['full']:.2f}x"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["all", "fetch", "decode"], default="all")
    p.add_argument("--items", type=int, default=96)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument(
        "--faults", type=float, nargs="+", default=[0.0, 0.1, 0.25], help="fault rates; the first is the base"
    )
    p.add_argument("--delay-ms", type=float, default=10.0, help="added to every request (first-byte latency)")
    p.add_argument("--scorer", default="psnr")
    p.add_argument("--model", help="for --scorer lmm")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--fetch-concurrency", type=int, help="passed to the job (default: the job's own)")
    p.add_argument("--code", default=str(ROOT), help="the checkout whose job runs (default: this one)")
    p.add_argument("--python", help="its interpreter (default: <code>/.venv/bin/python)")
    p.add_argument("--draft-side", type=int, default=896, help="decode: twice the model input side (Q-Align: 448)")
    p.add_argument("--decode-images", type=int, default=5)
    p.add_argument("--decode-rounds", type=int, default=2)
    args = p.parse_args()
    if args.part in ("all", "decode"):
        bench_decode(args)
    if args.part in ("all", "fetch"):
        bench_fetch(args)


if __name__ == "__main__":
    main()
