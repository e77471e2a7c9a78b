"""How well a scorer agrees with MOS labels: SRCC and PLCC (scipy) of its scores, as the scoring job computes them."""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

from pipeline import registry, scorers
from pipeline.infra.media import MediaError, MediaOptions
from pipeline.qalign.levels import Levels
from pipeline.scorers import ScorerArgs

SCALE = ("mos", "scale_min", "scale_max")  # a label row's MOS and the scale it is on


def correlations(predicted: np.ndarray, mos: np.ndarray, score_range: tuple[float, float] = (1.0, 5.0)) -> dict:
    """SRCC and PLCC (scipy) over the items that were scored. Constant predictions rank nothing: 0.0."""
    # Scores closer than 0.001 on 1..5 (1/4000 of the scorer's range, read from its columns) are ties: below what
    # bf16 inference reproduces, so not a ranking. Without this, an untrained model's near-constant scores get a
    # large SRCC by chance from their float noise.
    step = (score_range[1] - score_range[0]) / 4000
    predicted, mos = np.round(np.asarray(predicted, np.float64) / step) * step, np.asarray(mos, np.float64)
    ok = np.isfinite(predicted)
    out = {"n": int(ok.sum()), "failed": int((~ok).sum()), "srcc": 0.0, "plcc": 0.0}
    if ok.sum() >= 2 and np.ptp(predicted[ok]) > 0 and np.ptp(mos[ok]) > 0:
        out["srcc"] = float(stats.spearmanr(predicted[ok], mos[ok]).statistic)
        out["plcc"] = float(stats.pearsonr(predicted[ok], mos[ok]).statistic)
    return out


def rate(
    model_path: str | None, rows: list[dict], crop: int | None = None, batch_size: int = 16, scorer: str = "lmm"
) -> tuple:
    """Scores of label rows by the kind of scorer the scoring job would run (pipeline.scorers) for `model_path`
    (its additions included), and each row's level loss where the scorer reads levels: -log of the probability it
    gives the level of the row's MOS (Eq. 1), the level word's part of the training loss, here without augmentation.
    NaN where an item cannot be loaded. `crop` centre-crops first (to measure fit on training crops). Also returns
    the scores' range, as the scorer declares it (a recipe's scale: Q-Align 1..5, Q-ReAlign 0..1)."""
    path = registry.local_path(model_path) if model_path else None
    scores, losses = np.full(len(rows), np.nan), np.full(len(rows), np.nan)
    score_range = (1.0, 5.0)
    for task in sorted({r.get("task", "quality") for r in rows}):
        kind = scorers.create(scorer, ScorerArgs(model_path, path, task=task))
        score_range = kind.columns.score_range
        prepare = kind.preparer(MediaOptions(), crop)
        step = kind.device_step("cuda" if torch.cuda.is_available() else "cpu") if kind.runs_on_device else None
        words = kind.columns.levels
        picked = [i for i, r in enumerate(rows) if r.get("task", "quality") == task]
        for start in range(0, len(picked), batch_size):
            prepared, where = [], []
            for i in picked[start : start + batch_size]:
                try:
                    prepared.append(prepare(rows[i]))
                except MediaError:
                    continue
                where.append(i)
            if not prepared:
                continue
            values = {c: np.array([p.values[c] for p in prepared]) for c in kind.prepared_columns}
            if step is not None:
                values.update(step([p.inputs for p in prepared]))
            scores[where] = values[kind.columns.score_column]
            if words:
                probs = np.column_stack([values[f"p_{w}"] for w in words])
                levels = Levels(words, tuple(float(len(words) - i) for i in range(len(words))))
                level = [int(levels.level_of_mos(*(rows[i][k] for k in SCALE))) for i in where]
                losses[where] = -np.log(np.maximum(probs[np.arange(len(where)), level], 1e-300))
    return scores, losses, score_range


def predict(
    model_path: str | None, rows: list[dict], crop: int | None = None, batch_size: int = 16, scorer: str = "lmm"
) -> np.ndarray:
    """The scores of `rate`."""
    return rate(model_path, rows, crop, batch_size, scorer)[0]


def evaluate(
    model_path: str | None, splits: dict[str, list[dict]], crops: dict[str, int | None], scorer: str = "lmm"
) -> dict[str, dict]:
    """SRCC/PLCC and the mean level loss (NaN for scorers without levels) of one model on each named set of rows."""
    out = {}
    for name, rows in splits.items():
        if rows:
            mos = np.array([r["mos"] for r in rows], np.float64)
            scores, losses, score_range = rate(model_path, rows, crops.get(name), scorer=scorer)
            ok = np.isfinite(losses)
            level_loss = float(losses[ok].mean()) if ok.any() else float("nan")
            out[name] = {**correlations(scores, mos, score_range), "level_loss": level_loss}
    return out


def _no_grad_eval(model_path: str, splits: dict, crops: dict, scorer: str) -> dict:
    with torch.inference_mode():
        return evaluate(model_path, splits, crops, scorer)


def evaluate_on_ray(
    models_to_rate: dict[str, str], splits: dict[str, list[dict]], crops: dict, use_gpu: bool, scorer: str = "lmm"
) -> dict[str, dict]:
    """Evaluate several models side by side, each as one Ray task (a GPU each when training uses GPUs)."""
    import ray

    task = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0)(_no_grad_eval)
    refs = {name: task.remote(path, splits, crops, scorer) for name, path in models_to_rate.items()}
    return {name: ray.get(ref) for name, ref in refs.items()}
