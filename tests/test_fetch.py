"""Reading media from S3 through a fault proxy (pipeline.samples.faults): requests per item, reads that overlap,
transient faults that cost no row, limits that still hold.

The proxy sits between s3fs and the session's moto server; every test points AWS_ENDPOINT_URL at it (and clears
s3fs's instance cache, which would keep a filesystem talking to the old endpoint).
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.infra.media import SNIFF_ABOVE_BYTES, MediaOptions, load_media
from pipeline.samples.faults import FaultProxy
from pipeline.scorers import Prepared
from pipeline.scoring.stages import PrepareStage
from tests.test_media import load_measured

MiB = 1024**2


def jpeg_bytes(seed: int, size: tuple[int, int] = (96, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)  # blocks of colour: a few KB as JPEG
    buffer = io.BytesIO()
    Image.fromarray(small).resize(size, Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture
def proxied(s3_endpoint, s3_bucket, monkeypatch):
    """(s3fs filesystem writing to moto directly, bucket, a factory of proxies that s3fs then reads through)."""
    import s3fs

    fs, bucket = s3_bucket
    proxies = []

    def through(**kwargs) -> FaultProxy:
        proxy = FaultProxy(s3_endpoint, **kwargs).start()
        proxies.append(proxy)
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        s3fs.S3FileSystem.clear_instance_cache()
        return proxy

    yield fs, bucket, through
    s3fs.S3FileSystem.clear_instance_cache()
    for proxy in proxies:
        proxy.stop()


def media_only(path: str) -> bool:
    return "/media/" in path


@dataclass
class ShapeKind:
    """The smallest kind of scorer: preparation loads the item and records its height (no model)."""

    name: str = "shape"
    reads: tuple[str, ...] = ()
    references: tuple[str, ...] = ()
    prepared_columns: tuple[str, ...] = ("height",)
    runs_on_device: bool = False

    def preparer(self, options: MediaOptions, crop: int | None = None):
        return lambda row: Prepared(
            None, {"height": load_media(row["uri"], row["media_type"], options).frames[0].shape[0]}
        )


def batch_of(uris: list[str]) -> dict[str, np.ndarray]:
    n = len(uris)
    return {
        "id": np.array([f"item-{i}" for i in range(n)], object),
        "uri": np.array(uris, object),
        "media_type": np.array(["image"] * n, object),
        "path": np.array(["shard"] * n, object),
    }


def test_a_small_or_large_image_is_one_get_and_no_head(proxied):
    fs, bucket, through = proxied
    small = jpeg_bytes(0)
    large = jpeg_bytes(1, (1600, 1200)) + b"\0" * (SNIFF_ABOVE_BYTES + 1)  # over the sniff threshold: padded
    fs.pipe_file(f"{bucket}/media/small.jpg", small)
    fs.pipe_file(f"{bucket}/media/large.jpg", large)
    proxy = through(track=media_only)
    assert load_media(f"s3://{bucket}/media/small.jpg", "image").frames[0].shape == (64, 96, 3)
    assert proxy.counts(tracked=True) == {"GET": 1}
    proxy.reset()
    assert load_media(f"s3://{bucket}/media/large.jpg", "image").frames[0].shape == (1200, 1600, 3)
    assert proxy.counts(tracked=True) == {"GET": 1}  # the first-KB sniff is read off the same response


def test_a_too_large_object_is_refused_from_one_get_without_reading_it(proxied):
    fs, bucket, through = proxied
    noise = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")  # about 3 MiB: noise does not compress
    fs.pipe_file(f"{bucket}/media/noise.png", buffer.getvalue())
    proxy = through(track=media_only)
    kind, message, peak = load_measured(f"s3://{bucket}/media/noise.png", "image", max_image_bytes=MiB)
    assert kind == "too_large" and f"{len(buffer.getvalue())} bytes" in message, message
    assert peak < MiB / 2  # its size came from the response's headers; the body was dropped unread
    assert proxy.counts(tracked=True) == {"GET": 2}  # one per load: load_measured loads twice (warm-up, measured)


def test_missing_and_empty_objects_keep_their_kinds(proxied):
    fs, bucket, through = proxied
    fs.pipe_file(f"{bucket}/media/empty.jpg", b"")
    fs.pipe_file(f"{bucket}/media/folder/inside.jpg", jpeg_bytes(2))
    through()
    stage = PrepareStage(ShapeKind(), MediaOptions())
    uris = [f"s3://{bucket}/media/{name}" for name in ("empty.jpg", "nothing.jpg", "folder", "folder/inside.jpg")]
    out = stage(batch_of(uris))
    kinds = [e.split(":", 1)[0] for e in out["error"]]
    assert kinds == ["empty", "not_found", "bad_uri", ""]
    assert out["height"][3] == 64


def test_reads_overlap(proxied):
    fs, bucket, through = proxied
    n, delay = 8, 0.25
    uris = []
    for i in range(n):
        fs.pipe_file(f"{bucket}/media/{i}.jpg", jpeg_bytes(i))
        uris.append(f"s3://{bucket}/media/{i}.jpg")
    proxy = through(delay_s=delay, track=media_only)
    stage = PrepareStage(ShapeKind(), MediaOptions(fetch_concurrency=4))
    stage(batch_of(uris[:1]))  # warm-up: connections, credentials
    proxy.reset()
    out = stage(batch_of(uris))
    assert list(out["error"]) == [""] * n and list(out["height"]) == [64] * n
    assert proxy.counts(tracked=True) == {"GET": n}
    # Counted at the proxy, not timed: several reads were in flight at once, never more than the concurrency.
    assert 2 <= proxy.peak_in_flight() <= 4, proxy.peak_in_flight()


def test_a_full_reference_row_fetches_its_reference_ahead_with_its_item(tmp_path, monkeypatch):
    """The kind names the columns of its reference images (Kind.references): they are read ahead on the fetch
    threads with the items, not one at a time in the thread that decodes."""
    import threading

    from pipeline.infra import media
    from pipeline.scorers.full_reference import ClassicalMetric

    n = 6
    for i in range(n):
        (tmp_path / f"{i}.jpg").write_bytes(jpeg_bytes(i))
        (tmp_path / f"ref-{i}.jpg").write_bytes(jpeg_bytes(n + i))
    batch = batch_of([str(tmp_path / f"{i}.jpg") for i in range(n)])
    batch["ref_uri"] = np.array([str(tmp_path / f"ref-{i}.jpg") for i in range(n)], object)
    threads, original = {}, media._read_once  # the read itself (read_bytes is also the caller's take)

    def recorded_read(fs, path, uri, options, media_type):
        threads.setdefault(Path(uri).name, []).append(threading.current_thread().name.split("_")[0])
        return original(fs, path, uri, options, media_type)

    monkeypatch.setattr(media, "_read_once", recorded_read)
    out = PrepareStage(ClassicalMetric("psnr"), MediaOptions(fetch_concurrency=3))(batch)
    assert list(out["error"]) == [""] * n and np.isfinite(out["psnr"]).all()
    assert sorted(threads) == sorted([f"{i}.jpg" for i in range(n)] + [f"ref-{i}.jpg" for i in range(n)])
    assert all(names == ["fetch"] for names in threads.values()), threads  # each read once, ahead, on a fetch thread


@pytest.mark.slow
def test_transient_faults_lose_no_row_and_fail_no_row(proxied):
    fs, bucket, through = proxied
    n = 24
    uris = []
    for i in range(n):
        fs.pipe_file(f"{bucket}/media/{i}.jpg", jpeg_bytes(i))
        uris.append(f"s3://{bucket}/media/{i}.jpg")
    proxy = through(fault_rate=0.25, track=media_only, seed=1)
    out = PrepareStage(ShapeKind(), MediaOptions())(batch_of(uris))
    assert list(out["id"]) == [f"item-{i}" for i in range(n)]
    assert list(out["error"]) == [""] * n, [e for e in out["error"] if e]
    assert list(out["height"]) == [64] * n
    faulted = proxy.counts(tracked=True, faulted=True).get("GET", 0)
    assert faulted > 0 and proxy.counts(tracked=True)["GET"] == n + faulted  # each fault cost one more GET only


def test_fault_proxy_answers_slow_down_and_counts_by_method(proxied):
    import http.client
    from urllib.parse import urlsplit

    fs, bucket, through = proxied
    fs.pipe_file(f"{bucket}/media/a.jpg", jpeg_bytes(0))
    proxy = through(fault_rate=0.999, track=media_only)
    url = urlsplit(proxy.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    connection.request("GET", f"/{bucket}/media/a.jpg")
    response = connection.getresponse()
    assert response.status == 503 and b"<Code>SlowDown</Code>" in response.read()
    connection.request("HEAD", f"/{bucket}/media/a.jpg")
    response = connection.getresponse()
    response.read()
    assert response.status == 503
    connection.close()
    assert proxy.counts(tracked=True) == proxy.counts(faulted=True) == {"GET": 1, "HEAD": 1}


def test_prefetch_keeps_a_bounded_window_and_each_row_its_own_outcome(tmp_path, monkeypatch):
    import threading

    from pipeline.infra import media

    uris = []
    for i in range(12):
        path = tmp_path / f"{i}.jpg"
        if i != 5:  # row 5's object is missing: its row alone gets not_found
            path.write_bytes(jpeg_bytes(i))
        uris.append(str(path))
    uris[8] = str(tmp_path / "notes.jpg")
    (tmp_path / "notes.jpg").write_bytes(b"plain text, not an image")
    lock, state = threading.Lock(), {"now": 0, "peak": 0}
    original = media.read_bytes

    def counted_read(uri, options, media_type):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        try:
            time.sleep(0.05)
            return original(uri, options, media_type)
        finally:
            with lock:
                state["now"] -= 1

    monkeypatch.setattr(media, "read_bytes", counted_read)
    out = PrepareStage(ShapeKind(), MediaOptions(fetch_concurrency=3))(batch_of(uris))
    kinds = [e.split(":", 1)[0] for e in out["error"]]
    assert kinds == ["" if i not in (5, 8) else "not_found" if i == 5 else "decode_error" for i in range(12)]
    assert list(out["id"]) == [f"item-{i}" for i in range(12)]
    # three reads ahead, plus the caller's own call that takes the prefetched bytes
    assert 2 <= state["peak"] <= 3 + 1, state


def test_score_cli_flags_reach_the_job_config():
    import argparse

    from pipeline.cli.score import add_arguments, configure

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = ["--manifest", "m", "--output", "o", "--model", "x"]
    config = configure(parser.parse_args(base), parser)
    assert config.draft is True and config.fetch_concurrency == 8
    config = configure(parser.parse_args([*base, "--no-draft", "--fetch-concurrency", "3"]), parser)
    assert config.draft is False and config.fetch_concurrency == 3
    with pytest.raises(SystemExit):
        configure(parser.parse_args([*base, "--fetch-concurrency", "0"]), parser)
