"""How well a scorer agrees with MOS labels: SRCC and PLCC (scipy) of its scores, as the scoring job computes them."""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

from pipeline import registry
from pipeline.media import MediaError, MediaOptions, load_media
from pipeline.scorer import Scorer
from pipeline.syllabus import augment

SCALE = ("mos", "scale_min", "scale_max")  # a label row's MOS and the scale it is on


def correlations(predicted: np.ndarray, mos: np.ndarray) -> dict:
    """SRCC and PLCC (scipy) over the items that were scored. Constant predictions rank nothing: 0.0."""
    # Scores closer than 0.001 (on 1..5) are ties: below what bf16 inference reproduces, so not a ranking. Without
    # this, an untrained model's near-constant scores get a large SRCC by chance from their float noise.
    predicted, mos = np.round(np.asarray(predicted, np.float64), 3), np.asarray(mos, np.float64)
    ok = np.isfinite(predicted)
    out = {"n": int(ok.sum()), "failed": int((~ok).sum()), "srcc": 0.0, "plcc": 0.0}
    if ok.sum() >= 2 and np.ptp(predicted[ok]) > 0 and np.ptp(mos[ok]) > 0:
        out["srcc"] = float(stats.spearmanr(predicted[ok], mos[ok]).statistic)
        out["plcc"] = float(stats.pearsonr(predicted[ok], mos[ok]).statistic)
    return out


def rate(model_path: str, rows: list[dict], crop: int | None = None, batch_size: int = 16) -> tuple:
    """Scores (1..5) of label rows by the scorer the scoring job would use for `model_path` (its additions
    included), and each row's level loss: -log of the probability it gives the level of the row's MOS (Eq. 1), the
    level word's part of the training loss, here without augmentation. NaN where an item cannot be loaded.
    `crop` centre-crops first (to measure fit on training crops)."""
    path = registry.local_path(model_path)
    scores, losses = np.full(len(rows), np.nan), np.full(len(rows), np.nan)
    for task in sorted({r["task"] for r in rows}):
        scorer = Scorer(path, task)
        options = scorer.preprocessor.recipe.video.media_options(MediaOptions())  # the recipe's frame policy
        picked = [i for i, r in enumerate(rows) if r["task"] == task]
        for start in range(0, len(picked), batch_size):
            prepared, where = [], []
            for i in picked[start : start + batch_size]:
                try:
                    media = load_media(rows[i]["uri"], rows[i]["media_type"], options)
                except MediaError:
                    continue
                media.frames = augment(media.frames, crop, False, None)
                prepared.append(scorer.preprocessor(media))
                where.append(i)
            if prepared:
                probs = scorer.probabilities(prepared)
                scores[where] = scorer.levels.score(probs)
                level = [int(scorer.levels.level_of_mos(*(rows[i][k] for k in SCALE))) for i in where]
                losses[where] = -np.log(np.maximum(probs[np.arange(len(where)), level], 1e-300))
    return scores, losses


def predict(model_path: str, rows: list[dict], crop: int | None = None, batch_size: int = 16) -> np.ndarray:
    """The scores of `rate`."""
    return rate(model_path, rows, crop, batch_size)[0]


def evaluate(model_path: str, splits: dict[str, list[dict]], crops: dict[str, int | None]) -> dict[str, dict]:
    """SRCC/PLCC and the mean level loss of one model on each named set of label rows."""
    out = {}
    for name, rows in splits.items():
        if rows:
            mos = np.array([r["mos"] for r in rows], np.float64)
            scores, losses = rate(model_path, rows, crops.get(name))
            ok = np.isfinite(losses)
            level_loss = float(losses[ok].mean()) if ok.any() else float("nan")
            out[name] = {**correlations(scores, mos), "level_loss": level_loss}
    return out


def _no_grad_eval(model_path: str, splits: dict, crops: dict) -> dict:
    with torch.inference_mode():
        return evaluate(model_path, splits, crops)


def evaluate_on_ray(
    models_to_rate: dict[str, str], splits: dict[str, list[dict]], crops: dict, use_gpu: bool
) -> dict[str, dict]:
    """Evaluate several models side by side, each as one Ray task (a GPU each when training uses GPUs)."""
    import ray

    task = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0)(_no_grad_eval)
    refs = {name: task.remote(path, splits, crops) for name, path in models_to_rate.items()}
    return {name: ray.get(ref) for name, ref in refs.items()}
