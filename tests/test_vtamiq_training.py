"""VTAMIQ training through the retraining job: labels/v2 (ref_uri), the loop's objective and draws, versions,
promotion, resume and reproducibility. The learning itself is measured by jobs/benchmark_fr_training.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from pipeline import cli, registry
from pipeline.infra import store
from pipeline.models.vtamiq import VTAMIQ, build_tiny, collate, is_vtamiq_folder, vtamiq_loss
from pipeline.samples.synthetic import build_learning_set, write_label_shard
from pipeline.training.evaluation import predict
from pipeline.training.lmm import Recipe, Scaling
from pipeline.training.retrain import LMM, RetrainConfig, plan_run, retrain, trainer_for
from pipeline.training.retrain import VTAMIQ as VTAMIQ_TRAINER
from pipeline.training.vtamiq import PairSource, epoch_order, example
from schemas import LABELS_V2, SchemaError, mos_from_dmos, validate_labels

ROOT = Path(__file__).resolve().parents[1]


def label_table(**overrides) -> pa.Table:
    columns = {
        "id": ["a", "b"],
        "uri": ["/x/a.png", "/x/b.png"],
        "media_type": ["image", "image"],
        "task": ["quality", "quality"],
        "mos": [4.0, 2.0],
        "scale_min": [1.0, 1.0],
        "scale_max": [5.0, 5.0],
        "split": ["train", "eval"],
        "ref_uri": ["/x/ref.png", None],
    }
    columns.update(overrides)
    return pa.table(columns)


def test_labels_v2_take_an_optional_ref_uri_and_v1_shards_stay_valid():
    validate_labels(label_table(), "v2.parquet")  # a null ref_uri: that row has no reference
    validate_labels(label_table().drop(["ref_uri"]), "v1.parquet")
    assert LABELS_V2.metadata[b"qcurate.schema"] == b"labels/v2" and LABELS_V2.names == label_table().column_names[:8]
    for overrides, message in [
        ({"ref_uri": [1, 2]}, "ref_uri"),  # not a string
        ({"ref_uri": ["", "/x/ref.png"]}, "empty ref_uri"),
        ({"media_type": ["video", "image"]}, "not images"),  # a video cannot be a full-reference label
    ]:
        with pytest.raises(SchemaError, match=message):
            validate_labels(label_table(**overrides), "bad.parquet")
    assert mos_from_dmos(1.0, 0.0, 5.0) == 4.0  # DMOS 1 (nearly pristine) is a good MOS


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> list[dict]:
    """A small full-reference set: two training photographs, one held out whole, 32 px eval crops."""
    root = tmp_path_factory.mktemp("pairs")
    return build_learning_set(
        str(root),
        train_photos=("astronaut", "chelsea"),
        eval_photos=("coffee",),
        train_sides=(48,),
        eval_crops=1,
        full_reference=True,
    )


def test_the_learning_set_as_aligned_pairs(pairs, tmp_path):
    assert all(r["ref_uri"] and r["ref_uri"].endswith(".png") for r in pairs)
    for row in pairs:
        item, ref = np.asarray(Image.open(row["uri"])), np.asarray(Image.open(row["ref_uri"]))
        assert item.shape == ref.shape, row["id"]
        assert (row["level"] == 0) == np.array_equal(item, ref), row["id"]  # same place, same size, lossless
    url = write_label_shard(pairs, str(tmp_path / "part-0.parquet"))
    table = pa.parquet.read_table(url)
    assert (
        table.schema.field("ref_uri").type == pa.string() and table.schema.metadata[b"qcurate.schema"] == b"labels/v2"
    )


def test_draws_are_reproducible_and_epochs_are_dealt_evenly(pairs, tmp_path):
    config = VTAMIQ.load(build_tiny(tmp_path / "m")).config
    source = PairSource([r for r in pairs if r["split"] == "train"])
    recipe = Recipe(crop=32, hflip=True, seed=3)

    def draw(epoch: int, view: int = 0, seed: int = 3) -> dict:
        return example(source, 5, view, epoch, Recipe(crop=32, hflip=True, seed=seed), config)

    first = draw(2)
    assert first["ref"].shape == (config.num_patches, 3, 16, 16) and 0 <= first["target"] <= 1
    assert all(np.array_equal(first[k], draw(2)[k]) for k in ("ref", "dist", "positions"))
    for other in (draw(3), draw(2, view=1), draw(2, seed=4)):
        assert not np.array_equal(first["dist"], other["dist"])
    order = epoch_order(37, 2, 4, recipe.seed, 0)
    assert order.shape == (5, 2, 4) and set(order.flatten()) == set(range(37))  # equal parts, nothing left out
    assert not np.array_equal(order, epoch_order(37, 2, 4, recipe.seed, 1))


def test_a_training_step_lowers_the_loss_on_a_fixed_batch(pairs, tmp_path):
    model = VTAMIQ.load(build_tiny(tmp_path / "m")).train()
    source = PairSource([r for r in pairs if r["split"] == "train"][:12])
    items = [example(source, i, 0, 0, Recipe(crop=32), model.config) for i in range(12)]
    batch, target = collate(items), torch.tensor([e["target"] for e in items])
    model.config.dropout = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.manual_seed(0)
    losses = []
    for _ in range(30):
        loss = vtamiq_loss(model(batch["ref"], batch["dist"], batch["positions"]), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


# ------------------------------------------------------------------------------------------------------------
# The retraining job with a VTAMIQ parent, on the session's Ray cluster

RECIPE = {"epochs": 4, "lr": 1e-3, "batch_size": 8, "crop": 32, "hflip": True, "views": 8, "seed": 1}
SCALING = {"num_workers": 2, "cpus_per_worker": 0.25, "data_cpus": 0.25, "data_actors": 1}


@pytest.fixture(scope="module")
def job_inputs(pairs, tmp_path_factory) -> tuple[str, str]:
    """(labels folder, tiny VTAMIQ parent)."""
    root = tmp_path_factory.mktemp("vtamiq-job")
    labels = root / "labels"
    write_label_shard(pairs, str(labels / "batch-0001" / "part-00000.parquet"))
    return str(labels), build_tiny(root / "base", seed=0)


def test_the_trainer_is_chosen_from_the_parent_and_lmm_options_are_refused(job_inputs, tmp_path):
    labels, base = job_inputs
    lmm = tmp_path / "lmm"
    lmm.mkdir()
    (lmm / "config.json").write_text(json.dumps({"model_type": "llava"}))
    assert trainer_for(base) is VTAMIQ_TRAINER and trainer_for(str(lmm)) is LMM and trainer_for("org/name") is LMM
    common = ["--labels", labels, "--base-model", base, "--registry", str(tmp_path), "--name", "n"]
    parser = cli.parser_for("retrain")
    with pytest.raises(SystemExit):  # a usage error, before anything runs
        cli.command("retrain").configure(parser.parse_args([*common, "--method", "lora"]), parser)
    with pytest.raises(ValueError, match="soft-labels"):
        plan_run(RetrainConfig(labels, base, str(tmp_path), "n", Recipe(soft_labels=True)))


def run_job(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "jobs" / "retrain.py"), *args],
        env=dict(os.environ),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
def test_retrain_versions_a_vtamiq_the_scorer_loads_and_a_killed_run_resumes_to_the_same_weights(
    ray_cluster, job_inputs, pairs, tmp_path
):
    """One run in this process; the same run as the CLI, its driver killed after the first checkpoint and rerun:
    it resumes from that checkpoint, and its version has exactly the weights of the unbroken run (same seed)."""
    labels, base = job_inputs
    registry_a, registry_b = str(tmp_path / "a"), str(tmp_path / "b")
    outcome = retrain(RetrainConfig(labels, base, registry_a, "fr", Recipe(**RECIPE), Scaling(**SCALING)))
    entry = registry.entry_url(registry_a, "fr")
    version = store.join(entry, "v0001")
    record = registry.read_version(entry, "v0001")
    config = json.loads(Path(version, "config.json").read_text())
    assert is_vtamiq_folder(version) and config["model_type"] == "vtamiq" and config["score_scale"] == [1.0, 5.0]
    assert record["trainer"] == "vtamiq" and record["method"] == "full" and record["score_scale"] == [1.0, 5.0]
    history = outcome.metrics["training"]
    assert [e["epoch"] for e in history] == [0, 1, 2, 3] and history[-1]["loss"] < history[0]["loss"]
    held = outcome.metrics["held_out"]["after"]
    assert held["n"] == sum(r["split"] == "eval" for r in pairs) and held["level_loss"] != held["level_loss"]  # NaN
    promoted = held["srcc"] > outcome.metrics["held_out"]["before"]["srcc"]
    assert (outcome.status == "promoted") == promoted and (registry.current_version(entry) == "v0001") == promoted
    eval_rows = [r for r in pairs if r["split"] == "eval"]
    scores = predict(version, eval_rows, scorer="vtamiq")  # what the scoring job's kind runs
    assert np.isfinite(scores).all() and scores.min() >= 1.0 and scores.max() <= 5.0 and np.ptp(scores) > 0

    args = [
        *("--labels", labels, "--base-model", base, "--registry", registry_b, "--name", "fr"),
        *("--epochs", "4", "--lr", "1e-3", "--batch-size", "8", "--crop", "32", "--hflip", "--views", "8"),
        *("--seed", "1"),
        *("--num-workers", "2", "--cpus-per-worker", "0.25", "--data-cpus", "0.25", "--data-actors", "1"),
    ]
    first = run_job(args)
    runs = Path(registry_b, "fr", registry.RUNS_DIR)
    deadline = time.time() + 300
    while not list(runs.glob("*/checkpoint_manager_snapshot.json")):  # a checkpoint Ray Train has registered
        assert first.poll() is None, first.stdout.read()
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert registry.list_versions(store.join(registry_b, "fr")) == []
    second = run_job(args)
    output, _ = second.communicate(timeout=400)
    assert second.returncode == 0 and "resumed from the checkpoint of epoch" in output, output
    resumed = registry.read_version(store.join(registry_b, "fr"), "v0001")
    assert resumed["run"]["resumed_from_epoch"] >= 1 and resumed["run"]["id"] == record["run"]["id"]
    weights_a = load_file(str(Path(version, "model.safetensors")))
    weights_b = load_file(str(Path(registry_b, "fr", "v0001", "model.safetensors")))
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a), "resumed run's weights differ"
