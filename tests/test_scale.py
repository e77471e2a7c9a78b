"""Corpora of many shards on a bounded driver, and jobs that never hang: validation on the cluster (ids exact across
shards), reuse of an unchanged manifest's validation, shards gathered one at a time, resources sized to the cluster
(impossible requests fail at once), and a watchdog on every wait, each tested by starving its stage on purpose."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.corpora.shards import write_manifest
from pipeline.infra.watchdog import StallError
from pipeline.samples.corpus import build_sample_corpus
from pipeline.samples.synthetic import write_label_shard
from pipeline.scoring.job import JobConfig, JobError, run
from pipeline.scoring.stages import READ_CPUS, logical_cpus
from pipeline.scoring.validation import IdBucket, _confirm_duplicates, id_hashes, validate_manifest_shards
from pipeline.training.lmm import Scaling
from schemas import SchemaError

REPO = Path(__file__).resolve().parents[1]


def shard_files(root: Path, ids_per_shard: list[list[str]]) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    urls = []
    for i, ids in enumerate(ids_per_shard):
        table = pa.table({"id": ids, "uri": [f"{root}/{x}.jpg" for x in ids], "media_type": ["image"] * len(ids)})
        pq.write_table(table, root / f"part-{i:05d}.parquet")
        urls.append(str(root / f"part-{i:05d}.parquet"))
    return urls


@pytest.fixture
def hold_cpus(ray_cluster):
    """Reserve CPUs of the session cluster with a placement group, to starve whatever needs them."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    groups = []

    def hold(cpus: float):
        group = placement_group([{"CPU": cpus}])
        ray.get(group.ready(), timeout=60)
        groups.append(group)

    yield hold
    for group in groups:
        remove_placement_group(group)


@pytest.mark.slow
def test_ids_are_unique_across_shards_exactly(ray_cluster, tmp_path):
    ids = [[f"s{s}-{i}" for i in range(500)] for s in range(6)]
    urls = shard_files(tmp_path / "ok", ids)
    shards = validate_manifest_shards(urls)
    assert [s.num_rows for s in shards] == [500] * 6 and [s.url for s in shards] == urls

    ids[4][123] = "s1-77"  # an id of shard 1 again in shard 4
    urls = shard_files(tmp_path / "dupe", ids)
    with pytest.raises(SchemaError, match="more than one shard") as err:
        validate_manifest_shards(urls)
    assert "'s1-77'" in str(err.value) and "part-00001.parquet" in str(err.value)
    assert err.value.source.endswith("part-00004.parquet") and err.value.column == "id"

    ids[4][123] = "s4-123"
    ids[2][5] = ids[2][6]  # a duplicate within one shard: named with that shard
    with pytest.raises(SchemaError, match="part-00002.parquet: column 'id': 1 duplicate"):
        validate_manifest_shards(shard_files(tmp_path / "within", ids))


def test_a_hash_collision_is_not_a_duplicate(ray_cluster, tmp_path):
    """Candidates are confirmed on the ids: two shards whose ids share a (forced) hash but not a value pass."""
    import ray

    urls = shard_files(tmp_path, [["a", "b"], ["c", "d"]])
    collision = int(id_hashes(pa.array(["a"]))[0])
    bucket = ray.remote(num_cpus=0)(IdBucket).remote()
    # as if "c" hashed like "a": the bucket sees one hash from both shards
    ray.get([bucket.add.remote(0, np.array([collision], np.uint64)), bucket.add.remote(1, np.array([collision]))])
    assert ray.get(bucket.candidates.remote(0, 10)) == (1, [(collision, [0, 1])])
    _confirm_duplicates(urls, [bucket], stall_s=60)  # no error: "a" is not in shard 1

    real = shard_files(tmp_path / "real", [["a", "b"], ["c", "a"]])
    bucket = ray.remote(num_cpus=0)(IdBucket).remote()
    ray.get([bucket.add.remote(0, id_hashes(pa.array(["a"]))), bucket.add.remote(1, id_hashes(pa.array(["a"])))])
    with pytest.raises(SchemaError, match="'a' in"):
        _confirm_duplicates(real, [bucket], stall_s=60)


def within(seconds: float, fn):
    """fn() in a thread of its own: its result, or its exception raised here; a call still running after `seconds`
    fails the test (a watchdog that no longer fires must fail its test, not hang the suite)."""
    import threading

    outcome: dict = {}

    def call() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as e:
            outcome["error"] = e

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        pytest.fail(f"still waiting after {seconds:.0f} s: the watchdog did not fire")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_validation_stalls_fail_naming_the_stage(hold_cpus, tmp_path):
    urls = shard_files(tmp_path, [["a"], ["b"]])
    hold_cpus(2)  # every CPU: the shard checks can never be placed
    with pytest.raises(StallError, match="manifest validation .*no progress for 3 s.*_check_shard"):
        within(120, lambda: validate_manifest_shards(urls, stall_s=3))


@pytest.mark.slow
def test_watched_fails_a_call_whose_work_cannot_be_placed_naming_its_stage(hold_cpus):
    """The retraining job's watchdog (`watched`): a blocking call whose Ray work waits unplaced fails, naming the
    stage and what waits; a call that finishes is returned as it is."""
    import ray

    from pipeline.infra.watchdog import watched

    assert within(120, lambda: watched(lambda: 7, stall_s=3, stage="quick", poll_s=0.2)) == 7
    hold_cpus(2)
    one_cpu = ray.remote(num_cpus=1)(lambda: 1)
    with pytest.raises(StallError, match=r"evaluation \(before\): no progress for 3 s.*waiting to be placed: 1 task"):
        within(
            120, lambda: watched(lambda: ray.get(one_cpu.remote()), stall_s=3, stage="evaluation (before)", poll_s=0.5)
        )


@pytest.mark.slow
def test_a_starved_scoring_stage_fails_instead_of_hanging(hold_cpus, tiny_models, tmp_path):
    rows = build_sample_corpus(str(tmp_path / "corpus"), photos=("astronaut",), n_videos=0)
    write_manifest(rows, str(tmp_path / "manifest"), num_shards=1)
    scores = tmp_path / "scores"
    cmd = [sys.executable, str(REPO / "jobs/score_dataset.py"), "--manifest", str(tmp_path / "manifest")]
    cmd += ["--output", str(scores), "--model", tiny_models["llava"]]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    # Uncommit the shard but keep the recorded validation, so the rerun goes straight to scoring...
    shutil.rmtree(scores / "_committed")
    # ...and starve it: with 1.5 of the 2 CPUs held, its read tasks (a whole CPU each) are never placed.
    hold_cpus(1.5)
    # the subprocess's own timeout bounds it: a watchdog that does not fire fails this test instead of hanging it
    result = subprocess.run([*cmd, "--stall-timeout", "30"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED: scoring: no progress for 30 s" in result.stderr and "waiting to be placed" in result.stderr
    assert not (scores / "_committed").exists()


def config(manifest: Path, output: Path, model: str) -> JobConfig:
    return JobConfig(manifest=str(manifest), output=str(output), model=model, batch_size=4, max_error_rate=0.5)


@pytest.mark.slow
def test_reruns_reuse_the_validation_of_an_unchanged_manifest(ray_cluster, tiny_models, tmp_path):
    rows = build_sample_corpus(str(tmp_path / "corpus"), photos=("astronaut", "coffee"), n_videos=0)
    manifest, output = tmp_path / "manifest", tmp_path / "scores"
    write_manifest(rows, str(manifest), num_shards=12)
    lines: list[str] = []
    summary = run(config(manifest, output, tiny_models["llava"]), log=lines.append)
    # rows come back in manifest order: the driver gathers about one shard at a time
    assert summary["this_run"]["max_partial_shards"] <= 2
    record = json.loads((output / "_manifest.json").read_text())
    assert sum(record["rows"].values()) == len(rows) and len(record["listing"]) == 12

    lines.clear()
    again = run(config(manifest, output, tiny_models["llava"]), log=lines.append)
    assert again["this_run"]["shards"] == 0 and again["rows"] == len(rows)
    assert not any("validating" in line for line in lines)

    # a new shard: the manifest is validated again (its ids against all the others), then the shard is scored
    pq.write_table(pa.Table.from_pylist([{**rows[0], "id": "extra"}]), manifest / "part-00012.parquet")
    lines.clear()
    grown = run(config(manifest, output, tiny_models["llava"]), log=lines.append)
    assert any("manifest changed since the last run" in line for line in lines)
    assert grown["this_run"]["shards"] == 1 and grown["rows"] == len(rows) + 1

    # a committed shard rewritten: its scores would no longer match it
    table = pq.read_table(manifest / "part-00003.parquet")
    pq.write_table(table.slice(0, 1), manifest / "part-00003.parquet")
    with pytest.raises(JobError, match=r"\['part-00003.parquet'\] changed after their scores were committed"):
        run(config(manifest, output, tiny_models["llava"]))


def test_scoring_requests_that_cannot_be_placed_fail_at_once(ray_cluster, tiny_models, tmp_path):
    rows = build_sample_corpus(str(tmp_path / "corpus"), photos=("astronaut",), n_videos=0)
    write_manifest(rows, str(tmp_path / "manifest"), num_shards=1)
    cfg = config(tmp_path / "manifest", tmp_path / "scores", tiny_models["llava"])
    cfg.num_scorers = 4
    with pytest.raises(JobError, match=r"--num-scorers 4 .* needs 2.25 CPU\(s\) .* the cluster has 2"):
        run(cfg)


@pytest.mark.parametrize("cpus, gpus", [(2, 0), (4, 0), (8, 1), (16, 1), (96, 8)])
def test_decoders_scorers_and_a_read_always_fit_the_cluster(cpus, gpus):
    """Actors hold their CPUs for the whole job: a plan that left no CPU for a read task would wait forever."""
    scorers = max(1, gpus)
    unit, scorer_cpus, decoders = logical_cpus(cpus, gpus, scorers)
    assert decoders * unit + scorers * scorer_cpus + READ_CPUS <= cpus
    assert 1 <= decoders <= cpus  # at most one decoder per core
    assert decoders >= cpus - scorers - READ_CPUS  # and no core left idle


def test_training_resources_are_sized_to_the_cluster():
    small = Scaling().sized_for(cpus=2, gpus=0, node_cpus=2)
    assert (small.cpus_per_worker, small.data_cpus) == (0.5, 0.5)  # the example pipeline keeps a CPU to run
    big = Scaling().sized_for(cpus=16, gpus=0, node_cpus=8)
    assert (big.cpus_per_worker, big.data_cpus) == (7.0, 1.0)
    gpu = Scaling(use_gpu=True, num_workers=4).sized_for(cpus=32, gpus=4, node_cpus=8)
    assert gpu.cpus_per_worker == 7.75 and gpu.data_cpus == 1.0
    assert Scaling(num_workers=1).sized_for(cpus=1.5, gpus=0, node_cpus=1.5).cpus_per_worker == 0.5
    with pytest.raises(ValueError, match=r"--num-workers 2 --use-gpu needs 2 GPU\(s\).*has 2 CPU\(s\).*0 GPU"):
        Scaling(use_gpu=True).sized_for(cpus=2, gpus=0, node_cpus=2)
    with pytest.raises(ValueError, match=r"--cpus-per-worker 1 --data-cpus 0.5 needs 5 CPU"):
        Scaling(num_workers=4, cpus_per_worker=1).sized_for(cpus=2, gpus=0, node_cpus=2)
    with pytest.raises(ValueError, match="on one node per worker"):
        Scaling(num_workers=1, cpus_per_worker=6).sized_for(cpus=16, gpus=0, node_cpus=4)


def retrain_base(tiny_models, tmp_path) -> list[str]:
    """The retraining CLI on a small label set (two photographs of the sample corpus; coffee held out)."""
    corpus = build_sample_corpus(str(tmp_path / "corpus"), photos=("astronaut", "coffee"), n_videos=0)
    labels = [
        {
            "id": r["id"],
            "uri": r["uri"],
            "media_type": "image",
            "task": "quality",
            "mos": float(r["mos"]),
            "scale_min": 1.0,
            "scale_max": 5.0,
            "split": "eval" if r["source"] == "coffee" else "train",
        }
        for r in corpus
    ]
    write_label_shard(labels, str(tmp_path / "labels" / "b1" / "part-00000.parquet"))
    cmd = [sys.executable, str(REPO / "jobs/retrain.py"), "--labels", str(tmp_path / "labels")]
    return cmd + ["--base-model", tiny_models["llava"], "--registry", str(tmp_path / "models"), "--name", "s"]


@pytest.fixture
def retrain_cmd(ray_cluster, tiny_models, tmp_path):
    cmd = retrain_base(tiny_models, tmp_path)
    return cmd + ["--epochs", "1", "--batch-size", "4", "--num-workers", "2", "--cpus-per-worker", "0.5"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "held, stage",
    [
        (1.5, "evaluation (before)"),  # half a CPU free: an evaluation task (1 CPU) is never placed
        (1.0, "training"),  # one CPU free: evaluation runs, the 2 workers and the example actor (1.5) never start
    ],
)
def test_a_stalled_retraining_stage_exits_1_naming_it(hold_cpus, retrain_cmd, ray_cluster, tmp_path, held, stage):
    hold_cpus(held)
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}
    # the subprocess's own timeout: a watchdog that does not fire fails this test instead of hanging it
    result = subprocess.run(
        [*retrain_cmd, "--stall-timeout", "5"], capture_output=True, text=True, timeout=300, env=env, cwd=REPO
    )
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"FAILED: {stage}: no progress for 5 s" in result.stderr, result.stdout[-3000:] + result.stderr[-3000:]
    assert not (tmp_path / "models" / "s" / "v0001").exists()


@pytest.mark.slow
def test_retrain_defaults_run_on_the_test_cluster_and_impossible_requests_fail_fast(ray_cluster, tiny_models, tmp_path):
    base = retrain_base(tiny_models, tmp_path)
    env = {**os.environ, "RAY_ADDRESS": ray_cluster}
    for extra, message in [
        (["--num-workers", "4", "--cpus-per-worker", "1"], "--num-workers 4 --cpus-per-worker 1 --data-cpus 0.5"),
        (["--use-gpu"], "--num-workers 2 --use-gpu needs 2 GPU(s)"),
    ]:
        # fast: refused while sizing the run, before the parent is measured; a hang would hit the timeout instead
        result = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
        assert result.returncode == 1 and message in result.stderr, result.stdout + result.stderr
        assert "the cluster has 2 CPU(s)" in result.stderr
        assert "measuring" not in result.stdout + result.stderr, result.stdout + result.stderr
    # the defaults (2 workers on a 2-CPU cluster) used to hang: the workers took every CPU from the example readers
    result = subprocess.run(
        [*base, "--epochs", "1", "--batch-size", "4", "--stall-timeout", "120"],
        capture_output=True,
        text=True,
        timeout=400,
        env=env,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 worker(s) x 0.5 CPU, example actors 0.5 CPU each" in result.stdout
    assert (tmp_path / "models" / "s" / "v0001" / "version.json").exists()
