"""Items inside tar archives (`tar://<member>::<archive>` rows) and WebDataset folders (NNNNN.tar + NNNNN.parquet,
as img2dataset writes them): each archive streamed once, missing and truncated archives as their rows' errors, the
folder a manifest as it is, one score shard per tar, exactly once across a kill. Archives written by the test."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline import cli
from pipeline.corpora.shards import BYTES, READ_ERROR, list_manifest, read_rows, write_manifest
from pipeline.corpora.tars import stream_members, tar_uri
from pipeline.corpora.webdataset import index_table
from pipeline.infra.media import MediaError
from pipeline.samples.corpus import load_photo, pan_zoom_frames, write_video
from pipeline.scoring.job import JobConfig, run
from tests.test_job import wait_for

REPO = Path(__file__).resolve().parents[1]


def png(seed: int, noise: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    image = np.asarray(Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((64, 48)))
    if noise:
        image = np.clip(image.astype(int) + rng.integers(-noise, noise + 1, image.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def webdataset_tar(keys: list[str], seed: int = 0) -> bytes:
    """A tar as img2dataset writes one: per key a .jpg (here PNG bytes under the name WebDataset readers use for the
    image), a .json and a .txt, in key order."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i, key in enumerate(keys):
            for ext, data in (
                ("png", png(seed + i, noise=8)),
                ("json", json.dumps({"key": key}).encode()),
                ("txt", f"caption {key}".encode()),
            ):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_members_come_from_one_pass_and_bad_archives_have_their_own_kinds(tmp_path):
    raw = webdataset_tar(["000000", "000001", "000002"])
    archive = tmp_path / "00000.tar"
    archive.write_bytes(raw)
    got = dict(stream_members(str(archive), {"000002.png", "000000.png", "nope.png"}, limit=10**9))
    assert got["000000.png"] == png(0, noise=8) and got["000002.png"] == png(2, noise=8)
    assert isinstance(got["nope.png"], MediaError) and got["nope.png"].kind == "not_in_archive"
    limited = dict(stream_members(str(archive), {"000000.png"}, limit=100))
    assert limited["000000.png"].kind == "too_large"

    missing = dict(stream_members(str(tmp_path / "gone.tar"), {"a.png"}, limit=10**9))
    assert missing["a.png"].kind == "archive_not_found"
    # cut inside the third member's data, and cut exactly after the first member (tarfile ends there silently)
    first = 512 + -(-len(png(0, noise=8)) // 512) * 512
    for cut in (len(raw) // 2 + 700, first):
        (tmp_path / "cut.tar").write_bytes(raw[:cut])
        outcome = dict(stream_members(str(tmp_path / "cut.tar"), {"000000.png", "000002.png"}, limit=10**9))
        assert outcome["000000.png"] == png(0, noise=8)
        assert outcome["000002.png"].kind == "archive_truncated", (cut, outcome["000002.png"])
    (tmp_path / "cut.tar").write_bytes(raw[:700])  # cut inside the wanted member's own data
    assert (
        dict(stream_members(str(tmp_path / "cut.tar"), {"000000.png"}, 10**9))["000000.png"].kind == "archive_truncated"
    )


def test_a_shards_tar_rows_come_archive_by_archive_with_their_bytes(tmp_path):
    for n in range(2):
        (tmp_path / f"{n}.tar").write_bytes(webdataset_tar([f"{n}-{i:03d}" for i in range(70)], seed=100 * n))
    rows = [
        (f"{n}-{i:03d}", tar_uri(f"{n}-{i:03d}.png", str(tmp_path / f"{n}.tar"))) for n in range(2) for i in range(70)
    ]
    rows += [("plain", str(tmp_path / "plain.png")), ("lost", tar_uri("x.png", str(tmp_path / "lost.tar")))]
    shard = tmp_path / "manifest.parquet"
    pq.write_table(
        pa.table({"id": [r[0] for r in rows], "uri": [r[1] for r in rows], "media_type": ["image"] * 142}), shard
    )
    batch = pa.table({"shard": [str(shard)], "name": ["manifest.parquet"], "partitions": ["[]"]})
    blocks = list(read_rows(batch, ["id", "uri", "media_type"]))
    assert [b.num_rows for b in blocks] == [1, 64, 6, 64, 6, 1]  # plain rows first, then each archive in blocks
    out = {r["id"]: r for b in blocks for r in b.to_pylist()}
    assert out["plain"][BYTES] is None and out["plain"][READ_ERROR] is None  # fetched later, by the decode stage
    assert out["1-069"][BYTES] == png(100 + 69, noise=8) and out["1-069"]["path"] == str(shard)
    assert out["lost"][BYTES] is None and out["lost"][READ_ERROR].startswith("archive_not_found: ")


def write_shards(root: Path, shards: dict[str, list[str]], refs: Path, failed: int = 0) -> None:
    """A WebDataset folder: NNNNN.tar + NNNNN.parquet (pandas, img2dataset's columns; its last `failed` rows are
    failed downloads, absent from the tar); the Parquet's ref_uri gives the PSNR scorer each item's reference."""
    refs.mkdir(parents=True, exist_ok=True)
    for stem, keys in shards.items():
        seeds = [int(k.split("-")[-1]) for k in keys]
        for key, seed in zip(keys, seeds):
            (refs / f"{key}.png").write_bytes(png(seed))
        (root / f"{stem}.tar").write_bytes(webdataset_tar(keys[: len(keys) - failed], seed=seeds[0]))
        frame = pd.DataFrame(
            {
                "key": keys,
                "url": [f"https://example.com/{k}.jpg" for k in keys],
                "caption": [f"caption {k}" for k in keys],
                "status": ["success"] * (len(keys) - failed) + ["failed_to_download"] * failed,
                "width": [64] * len(keys),
                "ref_uri": [str(refs / f"{k}.png") for k in keys],
            }
        )
        frame.to_parquet(root / f"{stem}.parquet")


def test_a_webdataset_folder_is_listed_and_indexed_as_it_is(tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    write_shards(root, {"00000": ["a-0", "a-1", "a-2"]}, tmp_path / "refs", failed=1)
    (root / "00001.tar").write_bytes(webdataset_tar(["b-5", "b-6"], seed=5))  # no Parquet beside this one
    (root / "_SUCCESS").write_text("")
    files = list_manifest(str(root))
    assert [(f.name, f.webdataset, f.sidecar is not None) for f in files] == [
        ("00000.parquet", True, True),
        ("00001.parquet", True, False),
    ]
    table, skipped = index_table(files[0].url, files[0].sidecar)
    assert skipped == 1 and table.column("id").to_pylist() == ["a-0", "a-1"]
    assert table.column("uri").to_pylist() == [tar_uri(f"a-{i}.png", files[0].url) for i in range(2)]
    assert table.column("caption").to_pylist() == ["caption a-0", "caption a-1"] and "key" not in table.column_names
    bare, none = index_table(files[1].url, None)
    assert none == 0 and bare.column_names == ["id", "uri", "media_type"] and bare.num_rows == 2
    (root / "stray.parquet").write_bytes(b"")
    with pytest.raises(ValueError, match="no tar beside them.*stray.parquet"):
        list_manifest(str(root))


@pytest.mark.slow
def test_a_webdataset_folder_on_s3_scores_one_shard_per_tar(ray_cluster, s3_bucket, tmp_path):
    fs, bucket = s3_bucket
    local = tmp_path / "shards"
    local.mkdir()
    # the keys of 00001 repeat those of 00000: ids become <shard>/<key>
    write_shards(local, {"00000": ["k-0", "k-1", "k-2"], "00001": ["k-0", "k-1"]}, tmp_path / "refs", failed=1)
    (local / "00001.tar").write_bytes(webdataset_tar(["k-0"], seed=7)[:700])  # and its tar is truncated
    fs.put(str(local), f"{bucket}/laion-shards", recursive=True)
    output = f"s3://{bucket}/scores"
    summary = run(JobConfig(f"s3://{bucket}/laion-shards/", output, scorer="psnr", batch_size=2, max_error_rate=1.0))
    assert summary["rows"] == 3 and summary["errors_by_kind"] == {"archive_truncated": 1}
    listed = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket}/scores") if p.endswith(".parquet"))
    assert listed == ["00000.parquet", "00001.parquet"]
    first = pq.read_table(f"{bucket}/scores/00000.parquet", filesystem=fs).to_pylist()
    assert [r["id"] for r in first] == ["00000/k-0", "00000/k-1"]
    assert all(r["error"] is None and 0 < r["psnr"] < 100 for r in first)
    assert first[0]["caption"] == "caption k-0" and first[0]["url"] == "https://example.com/k-0.jpg"
    assert first[0]["uri"] == f"tar://k-0.png::s3://{bucket}/laion-shards/00000.tar"
    recorded = json.loads(fs.cat(f"{bucket}/scores/_manifest.json"))
    assert recorded["skipped"] == {"00000.parquet": 1, "00001.parquet": 1}


def scores_by_id(folder: Path) -> dict[str, dict]:
    return {r["id"]: r for p in sorted(folder.glob("*.parquet")) for r in pq.read_table(p).to_pylist()}


@pytest.mark.slow
def test_a_webdataset_folder_as_manifest_filters_to_tar_rows_and_reports(ray_cluster, tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    write_shards(
        root, {"00000": [f"a-{i}" for i in range(4)], "00001": [f"b-{i}" for i in range(4)]}, tmp_path / "r", 1
    )
    scores = tmp_path / "scores"
    run(JobConfig(str(root), str(scores), scorer="psnr", batch_size=2))
    scored = scores_by_id(scores)
    assert len(scored) == 6 and all(r["error"] is None for r in scored.values())
    threshold = float(np.median([r["fr_score"] for r in scored.values()]))
    keep = sorted(i for i, r in scored.items() if r["fr_score"] >= threshold)
    assert 0 < len(keep) < 6

    kept = tmp_path / "kept"
    argv = ["--manifest", str(root), "--scores", str(scores), "--output", str(kept), "--min-score", str(threshold)]
    assert cli.main("filter", argv) == 0
    # The kept rows of each tar, as a Parquet shard named like the tar's: its index rows (tar:// uris, the sidecar's
    # columns), no bytes, no copy of a tar.
    assert sorted(p.name for p in kept.iterdir() if not p.name.startswith("_")) == ["00000.parquet", "00001.parquet"]
    rows = scores_by_id(kept)
    assert sorted(rows) == keep
    for i, row in rows.items():
        assert row["uri"] == tar_uri(f"{i}.png", str(root / f"0000{i[0] == 'b':d}.tar")) == scored[i]["uri"]
        assert row["caption"] == f"caption {i}" and row["status"] == "success" and "fr_score" not in row
    filtered = json.loads((kept / "_filter.json").read_text())
    assert filtered["rows_in"] == 6 and filtered["rows_kept"] == len(keep)

    # the scoring job reads the filtered corpus back: the same members, the same scores
    run(JobConfig(str(kept), str(tmp_path / "rescored"), scorer="psnr", batch_size=2))
    rescored = scores_by_id(tmp_path / "rescored")
    assert {i: r["fr_score"] for i, r in rescored.items()} == {i: scored[i]["fr_score"] for i in keep}

    report = tmp_path / "report"
    argv = ["--scores", str(scores), "--manifest", str(root), "--out", str(report), "--min-score", str(threshold)]
    assert cli.main("report", [*argv, "--thumbnails", "6"]) == 0
    page = (report / "index.html").read_text()
    assert "<td>manifest rows</td><td>6</td>" in page and "<td>manifest rows without a score row</td><td>0</td>" in page
    for i in keep:  # each kept row named under its thumbnail (read from its tar), marked kept
        assert f'<div class="score kept">{scored[i]["fr_score"]:.3f}</div><div>{i}</div>' in page
    assert "unavailable" not in page


@pytest.mark.slow
def test_video_members_of_a_tar_score_as_the_same_videos_stored_as_objects(ray_cluster, tiny_models, tmp_path):
    """video2dataset's layout: mp4 members decode with the sampling of video objects (1 fps here: 2 and 3 frames)."""
    videos, root = tmp_path / "videos", tmp_path / "shards"
    videos.mkdir()
    root.mkdir()
    with tarfile.open(root / "00000.tar", "w") as tar:
        for i, n_frames in enumerate((20, 30)):  # 2 s and 3 s at 10 fps
            path = videos / f"clip-{i}.mp4"
            write_video(str(path), pan_zoom_frames(load_photo("rocket"), n_frames, size=(64, 48)), fps=10)
            tar.add(path, arcname=path.name)
            info = tarfile.TarInfo(f"clip-{i}.json")  # video2dataset writes metadata beside each clip
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    objects = [{"id": f"clip-{i}", "uri": str(videos / f"clip-{i}.mp4"), "media_type": "video"} for i in range(2)]
    write_manifest(objects, str(tmp_path / "objects"), num_shards=1)
    for manifest, output in ((root, "from-tar"), (tmp_path / "objects", "from-objects")):
        run(JobConfig(str(manifest), str(tmp_path / output), model=tiny_models["llava"], batch_size=2))
    tar_rows, object_rows = scores_by_id(tmp_path / "from-tar"), scores_by_id(tmp_path / "from-objects")
    assert sorted(tar_rows) == sorted(object_rows) == ["clip-0", "clip-1"]
    assert [tar_rows[i]["frames"] for i in ("clip-0", "clip-1")] == [2, 3]
    for i, row in tar_rows.items():
        other = object_rows[i]
        assert row["error"] is None and row["media_type"] == "video" and row["uri"].startswith("tar://")
        assert row["frames"] == other["frames"]
        for column in ("score", "p_excellent", "p_good", "p_fair", "p_poor", "p_bad"):
            assert row[column] == pytest.approx(other[column], abs=1e-6), (i, column)


@pytest.mark.slow
def test_a_tar_corpus_killed_mid_run_then_rerun_gives_every_row_exactly_once(ray_cluster, tiny_models, tmp_path):
    root = tmp_path / "shards"
    root.mkdir()
    # enough model work (a tiny LMM, not a metric) that the kill lands while most archives are pending
    shards = {f"{n:05d}": [f"{n}-{i}" for i in range(24)] for n in range(8)}
    write_shards(root, shards, tmp_path / "refs")
    output = tmp_path / "scores"
    cmd = [sys.executable, str(REPO / "jobs" / "score_dataset.py"), "--manifest", str(root), "--output", str(output)]
    cmd += ["--model", tiny_models["llava"], "--batch-size", "2"]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    markers = output / "_committed"
    try:
        wait_for(lambda: (markers.exists() and any(markers.glob("*.json"))) or driver.poll() is not None, 240, "none")
        assert driver.poll() is None, "the job ended before it could be killed"
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    finally:
        driver.kill()
    partial = len(list(markers.glob("*.json")))
    assert 1 <= partial < 8
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{partial} already committed" in result.stdout
    ids = [i for p in sorted(output.glob("*.parquet")) for i in pq.read_table(p).column("id").to_pylist()]
    assert sorted(ids) == sorted(k for keys in shards.values() for k in keys)  # exactly once
