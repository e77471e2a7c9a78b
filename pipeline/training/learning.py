"""The smallest learning run: a from-scratch tiny model taught a synthetic MOS in a minute or two on 2 CPU cores.

It is CI's guard that training learns (tests/test_learning.py).
The set: two photographs at 32 px, the tiny models' input size (no resize hides a distortion), pristine and every
distortion kind at levels 1..4 (MOS = 5 - level); a third photograph held out whole. The full-size learning check is
jobs/benchmark_training.py.
"""

from __future__ import annotations

import os

from pipeline import registry
from pipeline.samples.synthetic import build_learning_set, write_label_shard
from pipeline.samples.tiny_models import make_tiny_model
from pipeline.training.lmm import Recipe, Scaling
from pipeline.training.retrain import RetrainConfig, retrain

TRAIN_PHOTOS = ("astronaut", "chelsea")
HELD_OUT_PHOTOS = ("coffee",)
# The learning benchmark's schedule (jobs/benchmark_training.py: lr 1e-3, 10% warm-up, random 32 px crops and flips)
RECIPE = Recipe(epochs=16, lr=1e-3, batch_size=16, warmup_ratio=0.1, crop=32, hflip=True, views=8)
SCALING = Scaling(num_workers=2, cpus_per_worker=0.5, data_cpus=0.5, data_actors=1)


def write_small_set(root: str, full_reference: bool = False) -> str:
    """Write the set's images and its one label shard under the local folder `root`; return the labels folder."""
    rows = build_learning_set(
        os.path.join(root, "media"),
        train_photos=TRAIN_PHOTOS,
        eval_photos=HELD_OUT_PHOTOS,
        train_sides=(32,),
        eval_side=32,
        eval_crops=1,
        full_reference=full_reference,
    )
    labels = os.path.join(root, "labels")
    write_label_shard(rows, os.path.join(labels, "batch-0001", "part-00000.parquet"))
    return labels


def learn(workdir: str) -> dict:
    """Train a tiny random LLaVA (4 px patches) on the small set with the retraining job, on the running Ray, into a
    registry under `workdir`. Returns the outcome (its metrics: SRCC and level loss before and after, on training
    and held-out items) and the model to score with: the entry (its CURRENT) when promoted, else the new version."""
    labels = write_small_set(os.path.join(workdir, "set"))
    base = str(make_tiny_model("llava", os.path.join(workdir, "base"), seed=0, vision={"patch_size": 4}))
    config = RetrainConfig(labels, base, os.path.join(workdir, "registry"), "demo", RECIPE, SCALING)
    outcome = retrain(config)
    entry = registry.entry_url(config.registry, config.name)
    return {"outcome": outcome, "model": entry if outcome.status == "promoted" else outcome.version_url}
