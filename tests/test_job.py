"""The scoring job end to end on a real Ray cluster: local files and S3, resume, kills, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.corpora.shards import write_manifest
from pipeline.infra import store
from pipeline.samples.corpus import build_sample_corpus
from pipeline.scoring.job import JobConfig, JobError, run
from schemas import SchemaError, validate_scores

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[dict]:
    """The sample corpus (real photographs, real mp4s) plus bad items that must become error rows."""
    root = tmp_path_factory.mktemp("corpus")
    rows = build_sample_corpus(str(root), photos=("astronaut", "coffee", "chelsea"), n_videos=2)
    empty = root / "empty.jpg"
    empty.write_bytes(b"")
    (root / "text.jpg").write_text("not an image")
    extra = {"source": "bad", "distortion": "none", "level": 0, "mos": 1.0}
    rows += [
        {"id": "missing", "uri": str(root / "nope.jpg"), "media_type": "image", **extra},
        {"id": "zero-bytes", "uri": str(empty), "media_type": "image", **extra},
        {"id": "text-as-jpg", "uri": str(root / "text.jpg"), "media_type": "image", **extra},
    ]
    return rows


@pytest.fixture(scope="module")
def many(corpus) -> list[dict]:
    """The corpus three times over (fresh ids): enough work that a kill lands while most shards are pending."""
    return [{**row, "id": f"{row['id']}#{i}"} for i in range(3) for row in corpus]


def read_output(output: str) -> dict[str, list[dict]]:
    fs, path = store.filesystem(output)
    shards = sorted(p for p in fs.ls(path, detail=False) if p.endswith(".parquet"))
    return {store.basename(p): pq.read_table(p, filesystem=fs).to_pylist() for p in shards}


def all_ids(output: str) -> list[str]:
    return [row["id"] for rows in read_output(output).values() for row in rows]


def config(manifest: str, output: str, model: str, **kw) -> JobConfig:
    return JobConfig(manifest=manifest, output=output, model=model, batch_size=4, max_error_rate=0.5, **kw)


def test_scores_every_row_once_and_resumes(ray_cluster, corpus, tiny_models, tmp_path):
    manifest, output = str(tmp_path / "manifest"), str(tmp_path / "scores")
    write_manifest(corpus, manifest, num_shards=3)
    summary = run(config(manifest, output, tiny_models["llava"]))

    shards = read_output(output)
    assert sorted(shards) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    for name, rows in shards.items():
        table = pq.read_table(Path(output) / name)
        validate_scores(table, name)
        manifest_ids = pq.read_table(Path(manifest) / name).column("id").to_pylist()
        assert [r["id"] for r in rows] == manifest_ids  # same rows, same order
        assert {"source", "distortion", "level", "mos"} <= set(table.column_names)  # extras carried through
    rows = {r["id"]: r for rs in shards.values() for r in rs}
    assert sorted(rows) == sorted(r["id"] for r in corpus)
    errors = {i: r["error"].split(":")[0] for i, r in rows.items() if r["error"]}
    assert errors == {"missing": "not_found", "zero-bytes": "empty", "text-as-jpg": "decode_error"}
    for i, r in rows.items():
        if i in errors:
            assert r["score"] is None and r["p_good"] is None
        else:
            assert (
                1 <= r["score"] <= 5
                and abs(sum(r[f"p_{w}"] for w in ("excellent", "good", "fair", "poor", "bad")) - 1) < 1e-9
            )
            assert r["frames"] >= 1 and r["model"] == tiny_models["llava"] and r["model_revision"].startswith("sha256:")
    videos = [r for r in rows.values() if r["media_type"] == "video"]
    assert videos and all(r["frames"] > 1 for r in videos)

    run_json = json.loads((Path(output) / "_run.json").read_text())
    assert run_json["status"] == "done" and run_json["rows"] == len(corpus) and run_json["errors"] == 3
    assert run_json["errors_by_kind"] == {"not_found": 1, "empty": 1, "decode_error": 1}
    assert summary["this_run"]["shards"] == 3

    # A rerun skips committed shards and rewrites nothing.
    before = {p: p.stat().st_mtime_ns for p in Path(output).glob("*.parquet")}
    again = run(config(manifest, output, tiny_models["llava"]))
    assert again["this_run"]["shards"] == 0
    assert before == {p: p.stat().st_mtime_ns for p in Path(output).glob("*.parquet")}

    # A shard whose commit marker is missing (died between write and mark) is scored again, alone.
    (Path(output) / "_committed" / "part-00001.parquet.json").unlink()
    third = run(config(manifest, output, tiny_models["llava"]))
    assert third["this_run"]["shards"] == 1 and sorted(all_ids(output)) == sorted(rows)
    assert before[Path(output) / "part-00000.parquet"] == (Path(output) / "part-00000.parquet").stat().st_mtime_ns


@pytest.mark.slow
def test_refuses_to_mix_models_or_tasks(ray_cluster, corpus, tiny_models, tmp_path):
    manifest, output = str(tmp_path / "manifest"), str(tmp_path / "scores")
    write_manifest(corpus[:4], manifest, num_shards=1)
    run(config(manifest, output, tiny_models["llava"]))
    with pytest.raises(JobError, match="model=.*--restart"):
        run(config(manifest, output, tiny_models["idefics3"]))
    with pytest.raises(JobError, match="task="):
        run(config(manifest, output, tiny_models["llava"], task="aesthetics"))
    summary = run(config(manifest, output, tiny_models["idefics3"], restart=True))
    assert summary["this_run"]["rows"] == 4
    assert {r["model"] for r in read_output(output)["part-00000.parquet"]} == {tiny_models["idefics3"]}


def test_bad_manifest_fails_before_any_scoring(ray_cluster, corpus, tiny_models, tmp_path):
    manifest, output = tmp_path / "manifest", tmp_path / "scores"
    write_manifest(corpus[:3], str(manifest), num_shards=1)
    pq.write_table(pa.Table.from_pylist(corpus[:1]), manifest / "part-00001.parquet")  # an id in two shards
    with pytest.raises(SchemaError) as err:
        run(config(str(manifest), str(output), tiny_models["llava"]))
    assert "part-00001.parquet" in str(err.value) and "'id'" in str(err.value)
    assert not output.exists()

    bad = pq.read_table(manifest / "part-00000.parquet").drop_columns(["media_type"])
    pq.write_table(bad, manifest / "part-00000.parquet")
    with pytest.raises(SchemaError, match="part-00000.parquet: column 'media_type': missing"):
        run(config(str(manifest), str(output), tiny_models["llava"]))
    assert not output.exists()


@pytest.mark.slow
def test_error_rate_fails_loudly_after_committing(ray_cluster, corpus, tiny_models, tmp_path):
    manifest, output = str(tmp_path / "manifest"), str(tmp_path / "scores")
    write_manifest(corpus[:3] + corpus[-3:], manifest, num_shards=2)  # half the rows are bad
    with pytest.raises(JobError, match="error rate 50.0% over --max-error-rate 10.0%"):
        run(
            config(manifest, output, tiny_models["llava"]) | {}
            if False
            else JobConfig(manifest=manifest, output=output, model=tiny_models["llava"], max_error_rate=0.1)
        )
    assert sorted(all_ids(output)) == sorted(r["id"] for r in corpus[:3] + corpus[-3:])
    assert json.loads((Path(output) / "_run.json").read_text())["status"] == "failed"


@pytest.mark.slow
def test_s3_manifest_media_and_output(ray_cluster, corpus, tiny_models, s3_bucket):
    fs, bucket = s3_bucket
    rows = []
    for row in corpus[:4] + corpus[-4:]:  # images, a video, bad items
        key = f"{bucket}/media/{Path(row['uri']).name}"
        if Path(row["uri"]).exists():
            fs.put_file(row["uri"], key)
        rows.append({**row, "uri": f"s3://{key}"})
    manifest, output = f"s3://{bucket}/manifests/ds", f"s3://{bucket}/scores/run1"
    write_manifest(rows, manifest, num_shards=2)
    run(config(manifest, output, tiny_models["llava"]))
    assert sorted(all_ids(output)) == sorted(r["id"] for r in rows)
    out = {r["id"]: r for rs in read_output(output).values() for r in rs}
    assert out["missing"]["error"].startswith("not_found")
    assert all(out[r["id"]]["score"] is not None for r in rows[:4])
    assert fs.exists(f"{bucket}/scores/run1/_committed/part-00001.parquet.json")


def job_cmd(manifest: str, output: str, model: str) -> list[str]:
    return [
        sys.executable,
        str(REPO / "jobs" / "score_dataset.py"),
        "--manifest",
        manifest,
        "--output",
        output,
        "--model",
        model,
        "--batch-size",
        "2",
        "--max-error-rate",
        "0.5",
    ]


def start_job(manifest: str, output: str, model: str, address: str) -> subprocess.Popen:
    """The job's CLI as a driver process on the cluster at `address`, its output in one text pipe."""
    return subprocess.Popen(
        job_cmd(manifest, output, model),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "RAY_ADDRESS": address},
    )


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def committed(output: str) -> int:
    return len(list((Path(output) / "_committed").glob("*.json"))) if (Path(output) / "_committed").exists() else 0


@pytest.mark.slow
def test_driver_killed_mid_run_then_rerun_gives_every_row_exactly_once(ray_cluster, many, tiny_models, tmp_path):
    manifest, output = str(tmp_path / "manifest"), str(tmp_path / "scores")
    rows = many
    write_manifest(rows, manifest, num_shards=len(rows) // 2)
    driver = start_job(manifest, output, tiny_models["llava"], ray_cluster)
    try:
        wait_for(lambda: committed(output) >= 1 or driver.poll() is not None, 120, "no shard committed")
        assert driver.poll() is None, "the job ended before it could be killed"
        driver.send_signal(signal.SIGKILL)
        driver.wait(30)
    finally:
        driver.kill()
    partial = committed(output)
    assert 1 <= partial < len(rows) // 2
    result = subprocess.run(
        job_cmd(manifest, output, tiny_models["llava"]),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RAY_ADDRESS": ray_cluster},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{partial} already committed" in result.stdout
    ids = all_ids(output)
    assert sorted(ids) == sorted(r["id"] for r in rows)  # every row exactly once: no loss, no duplicate


@pytest.mark.slow
def test_scorer_actor_killed_mid_run_is_restarted(ray_cluster, many, tiny_models, tmp_path):
    from ray.util.state import list_actors

    corpus = many  # enough work that the kill lands while shards are pending (the sample corpus alone can finish first)
    manifest, output = str(tmp_path / "manifest"), str(tmp_path / "scores")
    write_manifest(corpus, manifest, num_shards=len(corpus) // 2)
    driver = start_job(manifest, output, tiny_models["llava"], ray_cluster)
    try:

        def scorer_actors():
            alive = list_actors(filters=[("state", "=", "ALIVE")], detail=True)
            return [a for a in alive if "ScoreStage" in (a.repr_name or "")]

        wait_for(lambda: scorer_actors() or driver.poll() is not None, 120, "no scorer actor found")
        assert committed(output) < len(corpus) // 2, "the job ended before the actor could be killed"
        victim = scorer_actors()[0]
        os.kill(victim.pid, signal.SIGKILL)
        out, _ = driver.communicate(timeout=300)
        assert committed(output) == len(corpus) // 2
    finally:
        driver.kill()
    assert driver.returncode == 0, out
    # Counted, not read from a log (Ray's own start-up lines say "restart" without any kill): the killed actor was
    # restarted in place, or the pool started another scorer in its stead; either way more than the one scorer ran.
    actors = list_actors(filters=[("job_id", "=", victim.job_id)], detail=True, limit=10_000)
    killed = next(a for a in actors if a.actor_id == victim.actor_id)
    started = sum("ScoreStage" in (a.class_name or "") + (a.repr_name or "") for a in actors)
    assert int(killed.num_restarts) + started - 1 >= 1, (killed, started)
    assert sorted(all_ids(output)) == sorted(r["id"] for r in corpus)


@pytest.mark.slow
def test_whole_cluster_stopped_mid_run_then_rerun(ray_cluster, many, tiny_models, tmp_path):
    from conftest import start_cluster, stop_cluster

    corpus = many
    manifest, output = str(tmp_path / "manifest"), str(tmp_path / "scores")
    write_manifest(corpus, manifest, num_shards=len(corpus) // 2)
    doomed = Path(tempfile.mkdtemp(prefix="qray-"))
    address, _ = start_cluster(doomed)
    driver = start_job(manifest, output, tiny_models["llava"], address)
    try:
        wait_for(lambda: committed(output) >= 1 or driver.poll() is not None, 180, "no shard committed")
        assert driver.poll() is None, "the job ended before the cluster could be stopped"
        driver.kill()  # the whole cluster: its driver first, then GCS, raylet and workers
        stop_cluster(doomed)
    finally:
        driver.kill()
        stop_cluster(doomed)
    partial = committed(output)
    assert 1 <= partial < len(corpus) // 2
    summary = run(config(manifest, output, tiny_models["llava"]))  # rerun on the session's cluster
    assert summary["this_run"]["shards"] == len(corpus) // 2 - partial
    assert sorted(all_ids(output)) == sorted(r["id"] for r in corpus)


@pytest.mark.slow
def test_ray_job_submit_against_a_running_cluster(ray_cluster, corpus, tiny_models, tmp_path):
    manifest, output = str(tmp_path / "manifest"), str(tmp_path / "scores")
    write_manifest(corpus[:6], manifest, num_shards=2)
    ray = str(Path(sys.executable).with_name("ray"))
    cmd = [
        ray,
        "job",
        "submit",
        "--address",
        os.environ["QCURATE_TEST_DASHBOARD"],
        "--working-dir",
        str(REPO),
        "--",
        "python",
        "jobs/score_dataset.py",
        "--manifest",
        manifest,
        "--output",
        output,
        "--model",
        tiny_models["llava"],
        "--batch-size",
        "4",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "done: 6 rows in the output" in result.stdout
    assert sorted(all_ids(output)) == sorted(r["id"] for r in corpus[:6])


@pytest.mark.slow
def test_empty_manifest_shard_gets_an_empty_committed_output_that_a_rerun_leaves_alone(
    ray_cluster, corpus, tiny_models, tmp_path
):
    manifest, output = tmp_path / "manifest", str(tmp_path / "scores")
    write_manifest(corpus[:2], str(manifest), num_shards=1)
    empty = pq.read_table(manifest / "part-00000.parquet").slice(0, 0)
    pq.write_table(empty, manifest / "part-00001.parquet")
    run(config(str(manifest), output, tiny_models["llava"]))
    shards = read_output(output)
    assert len(shards["part-00000.parquet"]) == 2 and shards["part-00001.parquet"] == []
    assert committed(output) == 2

    # An empty shard is committed before the pipeline runs, by its own line: a rerun must skip it too, once committed.
    files = [p for p in Path(output).rglob("*") if p.is_file() and p.name.startswith("part-")]  # outputs and markers
    before = {p: p.stat().st_mtime_ns for p in files}
    again = run(config(str(manifest), output, tiny_models["llava"]))
    assert again["this_run"]["shards"] == 0 and again["rows"] == 2
    assert before == {p: p.stat().st_mtime_ns for p in files}


def test_videos_in_a_manifest_for_another_task_than_quality_fail_before_scoring(
    ray_cluster, corpus, tiny_models, tmp_path
):
    """The aesthetics prompt speaks of an image: a manifest with videos is refused for it on the cluster, naming the
    shard and the column, before anything is written."""
    manifest, output = tmp_path / "manifest", tmp_path / "scores"
    photos = [r for r in corpus if r["media_type"] == "image"][:2]
    write_manifest(photos + [r for r in corpus if r["media_type"] == "video"][:1], str(manifest), num_shards=2)
    with pytest.raises(SchemaError, match="part-00001.parquet: column 'media_type': videos are scored for quality"):
        run(config(str(manifest), str(output), tiny_models["llava"], task="aesthetics"))
    assert not output.exists()


def test_manifest_columns_named_like_output_columns_or_unreadable_shards_fail_before_scoring(
    ray_cluster, corpus, tiny_models, tmp_path
):
    manifest, output = tmp_path / "manifest", tmp_path / "scores"
    rows = [{**row, "score": row["mos"], "model": "human"} for row in corpus[:4]]  # the user's own columns
    write_manifest(rows, str(manifest), num_shards=2)
    with pytest.raises(SchemaError) as err:
        run(config(str(manifest), str(output), tiny_models["llava"]))
    # both shards carry the columns: the message names whichever shard was checked first
    assert any(f"part-0000{i}.parquet" in str(err.value) for i in (0, 1)) and "['score', 'model']" in str(err.value)
    assert not output.exists()  # refused before anything was written

    write_manifest(corpus[:4], str(manifest), num_shards=2)
    (manifest / "part-00001.parquet").write_text("id,uri,media_type\n")  # a CSV file named .parquet
    with pytest.raises(SchemaError, match="part-00001.parquet: table: not a readable Parquet file"):
        run(config(str(manifest), str(output), tiny_models["llava"]))
    assert not output.exists()


@pytest.mark.slow
def test_shards_that_yield_fewer_rows_than_validated_fail_the_job_and_are_not_committed(
    ray_cluster, corpus, tiny_models, tmp_path
):
    manifest, output = tmp_path / "manifest", str(tmp_path / "scores")
    rows = [{**row, "path": f"user-{i}"} for i, row in enumerate(corpus[:6])]  # `path` is the user's, not Ray's
    write_manifest(rows, str(manifest), num_shards=3)
    originals = {p.name: p.read_bytes() for p in manifest.glob("*.parquet")}

    def change_files_after_validation(message: str) -> None:
        # Between validation and reading (the job logs its plan in between), two shards change under the job:
        # one becomes a zero-byte file (no longer Parquet: read as no rows, the reason logged), one loses a row.
        if message.startswith("manifest:"):
            (manifest / "part-00001.parquet").write_bytes(b"")
            fewer = pq.read_table(pa.BufferReader(originals["part-00002.parquet"])).slice(0, 1)
            pq.write_table(fewer, manifest / "part-00002.parquet")

    with pytest.raises(JobError) as err:
        run(config(str(manifest), output, tiny_models["llava"]), log=change_files_after_validation)
    message = str(err.value)
    assert "part-00001.parquet (0 of 2 rows)" in message and "part-00002.parquet (1 of 2 rows)" in message
    assert committed(output) == 1 and sorted(read_output(output)) == ["part-00000.parquet"]  # only the whole shard
    first = read_output(output)["part-00000.parquet"]
    assert [r["path"] for r in first] == ["user-0", "user-1"]  # the user's `path` column, carried through
    run_json = json.loads((Path(output) / "_run.json").read_text())
    assert run_json["status"] == "failed" and "part-00001.parquet" in run_json["failure"]

    for name in ("part-00001.parquet", "part-00002.parquet"):  # restored, a rerun scores the two shards, once
        (manifest / name).write_bytes(originals[name])
    summary = run(config(str(manifest), output, tiny_models["llava"]))
    assert summary["this_run"]["shards"] == 2 and sorted(all_ids(output)) == sorted(r["id"] for r in rows)


@pytest.mark.slow
def test_no_rows_at_all_fails_naming_the_shard(ray_cluster, corpus, tiny_models, tmp_path):
    # The case that crashed the scoring loop (TypeError on the time of the first rows): no rows come back at all.
    manifest, output = tmp_path / "manifest", str(tmp_path / "scores")
    write_manifest(corpus[:2], str(manifest), num_shards=1)

    def empty_the_shard(message: str) -> None:
        if message.startswith("manifest:"):
            (manifest / "part-00000.parquet").write_bytes(b"")  # read as no rows (the reason logged)

    with pytest.raises(JobError, match=r"part-00000.parquet \(0 of 2 rows\)"):
        run(config(str(manifest), output, tiny_models["llava"]), log=empty_the_shard)
    assert committed(output) == 0 and read_output(output) == {}


@pytest.mark.slow
def test_200_images_with_a_tiny_qwen3_5_through_the_cli(ray_cluster, tiny_models, tmp_path):
    """Item by item the Q-ReAlign recipe, end to end: jobs/score_dataset.py on the session's Ray, 200 real images."""
    photos = build_sample_corpus(str(tmp_path / "corpus"), photos=("astronaut", "coffee", "chelsea"), n_videos=0)
    rows = [{**photos[i % len(photos)], "id": f"img-{i:04d}"} for i in range(200)]
    manifest, output = str(tmp_path / "manifest"), str(tmp_path / "scores")
    write_manifest(rows, manifest, num_shards=4)
    script = [sys.executable, str(REPO / "jobs" / "score_dataset.py"), "--manifest", manifest, "--output", output]
    model = ["--model", tiny_models["qwen3_5"], "--batch-size", "16"]
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}
    start = time.perf_counter()
    result = subprocess.run([*script, *model], env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    print(f"200 images, tiny Qwen3.5, score_dataset.py on local Ray: {time.perf_counter() - start:.1f} s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((Path(output) / "_run.json").read_text())
    assert summary["status"] == "done" and summary["rows"] == 200 and summary["errors"] == 0
    assert summary["prompt_recipe"] == "q-realign"  # chosen from the checkpoint's model_type
    scored = [row for shard in read_output(output).values() for row in shard]
    assert sorted(r["id"] for r in scored) == sorted(r["id"] for r in rows)
    assert all(0 <= r["score"] <= 1 for r in scored)  # Q-ReAlign's scale (its toolkit's 0..1)
    # the same photograph gets the same score wherever it sits in a batch; different ones differ
    by_uri = {}
    for r in scored:
        by_uri.setdefault(r["uri"], set()).add(round(r["score"], 4))  # batches equal solo runs within 1e-5
    assert all(len(s) == 1 for s in by_uri.values()) and len({next(iter(s)) for s in by_uri.values()}) > 1
    # another recipe on the same output would mix prompts: refused before any scoring
    again = subprocess.run(
        [*script, *model, "--prompt-recipe", "generic"], env=env, cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 1 and "prompt_recipe='q-realign'" in again.stderr, again.stderr[-2000:]


@pytest.mark.slow
def test_a_crash_inside_a_shards_commit_then_rerun_gives_every_row_exactly_once(
    ray_cluster, corpus, tiny_models, tmp_path, monkeypatch
):
    """The second write of one shard's commit fails (the first is its data, the second its marker): the job fails,
    the shard stays uncommitted, and the rerun scores it again, so every row is in the output exactly once. Were the
    marker written first, the failed data write would leave a shard marked done without its rows."""
    manifest, output = str(tmp_path / "manifest"), str(tmp_path / "scores")
    write_manifest(corpus, manifest, num_shards=3)
    victim = "part-00001.parquet"
    writes: list[str] = []
    real_put = store.put

    def failing_put(url: str, data: bytes) -> None:
        if victim in store.basename(url):  # the shard's data file or its commit marker
            writes.append(url)
            if len(writes) == 2:
                raise OSError(f"injected: the second write of {victim}'s commit")
        real_put(url, data)

    monkeypatch.setattr(store, "put", failing_put)
    with pytest.raises(Exception, match="injected"):
        run(config(manifest, output, tiny_models["llava"]))
    assert len(writes) == 2
    monkeypatch.setattr(store, "put", real_put)
    run(config(manifest, output, tiny_models["llava"]))
    ids = all_ids(output)
    assert sorted(ids) == sorted(r["id"] for r in corpus)  # no row lost, none twice
    assert len(read_output(output)[victim]) == pq.read_table(Path(manifest) / victim).num_rows


@pytest.mark.slow
def test_a_rerun_with_another_model_revision_or_level_set_is_refused_unless_restart(
    ray_cluster, corpus, tiny_models, tmp_path
):
    """Same model path, other weights (its revision is the digest of its files): refused, as is another level set;
    --restart starts over with the new ones."""
    import shutil

    from safetensors.torch import load_file, save_file

    from pipeline.qalign.levels import Levels

    model = tmp_path / "model"
    shutil.copytree(tiny_models["llava"], model)
    manifest, output = str(tmp_path / "manifest"), str(tmp_path / "scores")
    write_manifest(corpus[:4], manifest, num_shards=1)
    first = run(config(manifest, output, str(model)))
    assert first["this_run"]["rows"] == 4
    revision = json.loads((Path(output) / "_run.json").read_text())["model_revision"]
    with pytest.raises(JobError, match="levels=.*--restart"):
        run(config(manifest, output, str(model), levels=Levels(("good", "fair", "bad"), (3.0, 2.0, 1.0))))

    weights = next(model.glob("*.safetensors"))
    tensors = load_file(str(weights))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1e-3  # the same folder, other weights: another revision
    save_file(tensors, str(weights), metadata={"format": "pt"})
    with pytest.raises(JobError, match="model_revision=.*--restart"):
        run(config(manifest, output, str(model)))
    restarted = run(config(manifest, output, str(model), restart=True))
    assert restarted["this_run"]["rows"] == 4
    assert json.loads((Path(output) / "_run.json").read_text())["model_revision"] != revision
