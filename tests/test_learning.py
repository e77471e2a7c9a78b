"""Training learns: a from-scratch tiny model, trained through the real retraining job (Ray Train, 2 workers) on a
small synthetic MOS set, goes from rating its training items at random to ranking them (SRCC >= 0.8), and its loss
falls by a stated margin. The same for VTAMIQ. The full-size learning checks are jobs/benchmark_training.py and
jobs/benchmark_fr_training.py; these are their CI-sized guards, so a change that stops training from learning fails
the suite instead of passing it.

The set and the LMM's run are pipeline.training.learning's: two photographs at 32 px,
pristine and every distortion kind at levels 1..4 (MOS = 5 - level), one more held out whole. The fit is measured on
the training items, as the retraining job measures it (metrics["train"], before and after)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.models.vtamiq import build_tiny
from pipeline.training.learning import RECIPE, SCALING, learn, write_small_set
from pipeline.training.lmm import Recipe
from pipeline.training.retrain import RetrainConfig, retrain

SRCC_BEFORE = 0.4  # "about 0": an untrained model's ranking of the items is chance
SRCC_AFTER = 0.8
# nats of -log p(level of the MOS), unaugmented: from about log 5 = 1.61 at chance (measured: 0.83)
LEVEL_LOSS_DROP = 0.4


@pytest.mark.slow
def test_the_retraining_job_teaches_a_tiny_lmm_to_rank_its_training_items(ray_cluster, tmp_path):
    metrics = learn(str(tmp_path))["outcome"].metrics
    before, after = metrics["train"]["before"], metrics["train"]["after"]
    history = metrics["training"]
    summary = (
        f"training SRCC {before['srcc']:.3f} -> {after['srcc']:.3f}, level loss {before['level_loss']:.3f} -> "
        f"{after['level_loss']:.3f}; level accuracy by epoch {[round(e['level_accuracy'], 2) for e in history]}"
    )
    print(summary)
    assert after["n"] == 34 and len(history) == RECIPE.epochs
    assert abs(before["srcc"]) < SRCC_BEFORE, summary
    assert after["srcc"] >= SRCC_AFTER, summary
    assert after["level_loss"] <= before["level_loss"] - LEVEL_LOSS_DROP, summary


@pytest.mark.slow
def test_the_retraining_job_teaches_a_tiny_vtamiq_to_rank_its_training_pairs(ray_cluster, tmp_path):
    labels = write_small_set(str(tmp_path), full_reference=True)
    base = build_tiny(tmp_path / "base", seed=0)
    recipe = Recipe(epochs=12, lr=1e-3, batch_size=16, warmup_ratio=0.05, crop=32, hflip=True, views=8)
    outcome = retrain(RetrainConfig(labels, base, str(tmp_path / "registry"), "learn-fr", recipe, SCALING))
    before, after = outcome.metrics["train"]["before"], outcome.metrics["train"]["after"]
    losses = [e["loss"] for e in outcome.metrics["training"]]
    summary = f"training SRCC {before['srcc']:.3f} -> {after['srcc']:.3f}, loss by epoch {np.round(losses, 3)}"
    print(summary)
    assert after["n"] == 34 and len(losses) == recipe.epochs
    assert abs(before["srcc"]) < SRCC_BEFORE, summary
    assert after["srcc"] >= SRCC_AFTER, summary
    assert losses[-1] <= 0.7 * losses[0], summary  # VTAMIQ's own loss (L1 + rank + Pearson): down by 30% at least
