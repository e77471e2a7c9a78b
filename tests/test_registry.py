"""The model registry's versions: immutable folders, CURRENT promotion, the record of label shards seen, and the
retraining job's plan (what is new, what was already done), on a local folder and on S3. No training here."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest

from pipeline import registry
from pipeline.infra import store
from pipeline.samples.synthetic import write_label_shard
from pipeline.training.lmm import Recipe
from pipeline.training.retrain import RetrainConfig, plan_run

LABEL = {
    "media_type": "image",
    "task": "quality",
    "scale_min": 1.0,
    "scale_max": 5.0,
}


def label_rows(prefix: str, n_train: int = 4, n_eval: int = 2) -> list[dict]:
    rows = [
        {**LABEL, "id": f"{prefix}-t{i}", "uri": f"/data/{prefix}/t{i}.png", "mos": 1.0 + i % 5, "split": "train"}
        for i in range(n_train)
    ]
    rows += [
        {**LABEL, "id": f"{prefix}-e{i}", "uri": f"/data/{prefix}/e{i}.png", "mos": 5.0 - i % 5, "split": "eval"}
        for i in range(n_eval)
    ]
    return rows


def make_model_folder(path: str, weights: bytes = b"weights") -> str:
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"model_type": "llava"}, f)
    with open(os.path.join(path, "model.safetensors"), "wb") as f:
        f.write(weights)
    return path


def finish(entry: str, version: str, folder: str, record: dict, promoted: bool = True) -> None:
    registry.upload_version(entry, version, folder)
    registry.finish_version(entry, version, {"held_out": {}}, {"promotion": {"promoted": promoted}, **record})


@pytest.fixture(params=["local", "s3"])
def registry_root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "registry")
    fs, bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/models"


def test_versions_are_immutable_and_only_finished_ones_count(registry_root, tmp_path):
    entry = registry.entry_url(registry_root, "scorer")
    folder = make_model_folder(str(tmp_path / "m1"))
    assert registry.next_version_name(entry) == "v0001"
    registry.upload_version(entry, "v0001", folder)
    # uploaded but not finished: not a version yet, cannot be CURRENT, and its number is never reused
    assert registry.list_versions(entry) == []
    assert registry.next_version_name(entry) == "v0002"
    with pytest.raises(FileNotFoundError, match="not a finished version"):
        registry.set_current(entry, "v0001")
    registry.finish_version(entry, "v0001", {"srcc": 0.5}, {"version": "v0001"})
    assert registry.list_versions(entry) == ["v0001"]
    with pytest.raises(registry.VersionExistsError):
        registry.upload_version(entry, "v0001", folder)
    with pytest.raises(registry.VersionExistsError):
        registry.finish_version(entry, "v0001", {}, {"version": "v0001"})
    assert store.read_json(store.join(entry, "v0001", registry.METRICS_FILE)) == {"srcc": 0.5}


def test_current_is_what_scoring_resolves(registry_root, tmp_path):
    entry = registry.entry_url(registry_root, "scorer")
    for v, weights in (("v0001", b"one"), ("v0002", b"two")):
        finish(entry, v, make_model_folder(str(tmp_path / v), weights), {"version": v})
    assert registry.current_version(entry) is None
    registry.set_current(entry, "v0001")
    ref = registry.resolve(entry)
    assert ref.path == store.join(entry, "v0001") and ref.revision == "scorer/v0001"
    registry.set_current(entry, "v0002")
    assert registry.resolve(entry).path == store.join(entry, "v0002")


def test_repair_current_finishes_a_decided_promotion_only(tmp_path):
    entry = registry.entry_url(str(tmp_path / "registry"), "scorer")
    finish(entry, "v0001", make_model_folder(str(tmp_path / "a")), {}, promoted=True)
    registry.set_current(entry, "v0001")
    finish(entry, "v0002", make_model_folder(str(tmp_path / "b")), {}, promoted=False)
    assert registry.repair_current(entry) is None and registry.current_version(entry) == "v0001"
    finish(entry, "v0003", make_model_folder(str(tmp_path / "c")), {}, promoted=True)  # killed before CURRENT moved
    assert registry.repair_current(entry) == "v0003"
    assert registry.current_version(entry) == "v0003"


def test_entry_names_are_checked():
    with pytest.raises(ValueError, match="model name"):
        registry.entry_url("/r", "../escape")


def test_plan_trains_on_new_shards_only_and_is_idempotent(registry_root, tmp_path):
    labels = str(tmp_path / "labels")
    base = make_model_folder(str(tmp_path / "base"))
    write_label_shard(label_rows("a"), f"{labels}/batch-1/part-00000.parquet")
    config = RetrainConfig(labels=labels, base_model=base, registry=registry_root, name="scorer", recipe=Recipe())

    first = plan_run(config)
    assert first.run_id is not None and first.parent["version"] is None
    assert first.new == first.train_urls == [f"{labels}/batch-1/part-00000.parquet"]
    assert plan_run(config).run_id == first.run_id  # the same inputs name the same run (a rerun resumes it)

    # a finished version that saw the shard and was promoted: nothing new
    seen = {s.url: s.digest for s in first.shards}
    record = {"base_model": first.base, "seen_shards": seen, "run": {"id": first.run_id}}
    finish(first.entry, "v0001", make_model_folder(str(tmp_path / "v1")), record, promoted=True)
    registry.set_current(first.entry, "v0001")
    again = plan_run(config)
    assert again.run_id is None and "nothing new" in again.message

    # a new batch: trained on alone (the first one is seen), starting from CURRENT
    write_label_shard(label_rows("b"), f"{labels}/batch-2/part-00000.parquet")
    second = plan_run(config)
    assert second.train_urls == [f"{labels}/batch-2/part-00000.parquet"]
    assert second.parent["version"] == "v0001" and second.parent["path"] == store.join(first.entry, "v0001")
    every = plan_run(RetrainConfig(**{**config.__dict__, "all_labels": True}))
    assert len(every.train_urls) == 2 and every.run_id != second.run_id

    # that run finished without promotion: rerunning it does nothing, and says what happened
    record = {"base_model": second.base, "seen_shards": {}, "run": {"id": second.run_id}}
    registry.upload_version(first.entry, "v0002", make_model_folder(str(tmp_path / "v2")))
    registry.finish_version(
        first.entry, "v0002", {}, {**record, "promotion": {"promoted": False, "reason": "SRCC not better"}}
    )
    done = plan_run(config)
    assert done.run_id is None and "v0002" in done.message and "SRCC not better" in done.message


def test_a_rewritten_shard_counts_as_new(tmp_path):
    labels, root = str(tmp_path / "labels"), str(tmp_path / "registry")
    shard = f"{labels}/batch-1/part-00000.parquet"
    write_label_shard(label_rows("a"), shard)
    config = RetrainConfig(labels=labels, base_model=make_model_folder(str(tmp_path / "base")), registry=root, name="s")
    plan = plan_run(config)
    record = {"base_model": plan.base, "seen_shards": {s.url: s.digest for s in plan.shards}, "run": {"id": "x"}}
    finish(plan.entry, "v0001", make_model_folder(str(tmp_path / "v1")), record)
    registry.set_current(plan.entry, "v0001")
    assert plan_run(config).run_id is None
    write_label_shard(label_rows("a", n_train=5), shard)  # same name, new content
    assert plan_run(config).new == [shard]


def test_plan_with_only_held_out_rows_new_does_nothing(tmp_path):
    labels = str(tmp_path / "labels")
    write_label_shard(label_rows("a", n_train=0, n_eval=3), f"{labels}/b1/part-0.parquet")
    base = make_model_folder(str(tmp_path / "base"))
    plan = plan_run(RetrainConfig(labels=labels, base_model=base, registry=str(tmp_path / "r"), name="s"))
    assert plan.run_id is None and "no training rows" in plan.message


def test_another_base_model_starts_a_new_lineage(tmp_path):
    labels, root = str(tmp_path / "labels"), str(tmp_path / "registry")
    write_label_shard(label_rows("a"), f"{labels}/b1/part-0.parquet")
    base_a = make_model_folder(str(tmp_path / "base-a"), b"a")
    plan = plan_run(RetrainConfig(labels=labels, base_model=base_a, registry=root, name="s"))
    record = {"base_model": plan.base, "seen_shards": {s.url: s.digest for s in plan.shards}, "run": {"id": "x"}}
    finish(plan.entry, "v0001", make_model_folder(str(tmp_path / "v1")), record)
    registry.set_current(plan.entry, "v0001")
    base_b = make_model_folder(str(tmp_path / "base-b"), b"b")
    other = plan_run(RetrainConfig(labels=labels, base_model=base_b, registry=root, name="s"))
    assert other.parent["path"] == base_b and other.run_id is not None  # all shards are new to this lineage
    assert "new lineage" in other.message and other.current == "v0001"


def test_label_shards_with_an_item_in_both_splits_are_refused(tmp_path):
    from schemas import SchemaError

    labels = str(tmp_path / "labels")
    rows = label_rows("a")
    write_label_shard(rows, f"{labels}/b1/part-0.parquet")
    leak = [{**rows[0], "id": "other-id", "split": "eval"}]
    table = pa.Table.from_pylist(leak)
    store.write_parquet(table, f"{labels}/b2/part-0.parquet")
    base = make_model_folder(str(tmp_path / "base"))
    with pytest.raises(SchemaError, match="both 'train' and 'eval'"):
        plan_run(RetrainConfig(labels=labels, base_model=base, registry=str(tmp_path / "r"), name="s"))


def test_label_shards_sharing_an_id_or_missing_are_refused(tmp_path):
    from pipeline.training.retrain import read_label_shards
    from schemas import SchemaError

    labels = str(tmp_path / "labels")
    with pytest.raises(FileNotFoundError, match="labels"):
        read_label_shards(labels)
    rows = label_rows("a")
    write_label_shard(rows, f"{labels}/b1/part-0.parquet")
    # the same file name in another batch folder is fine: a label shard is known by its URL
    write_label_shard(label_rows("b"), f"{labels}/b2/part-0.parquet")
    assert len(read_label_shards(labels)) == 2
    write_label_shard([{**rows[1], "uri": "/data/other.png"}], f"{labels}/b3/part-0.parquet")
    with pytest.raises(SchemaError, match="column 'id': 1 id\\(s\\) appear in more than one shard, e.g. a-t1") as err:
        read_label_shards(labels)
    assert "b1/part-0.parquet" in str(err.value) and "b3/part-0.parquet" in str(err.value)
