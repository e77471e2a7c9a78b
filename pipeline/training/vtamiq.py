"""Training a VTAMIQ (pipeline.models.vtamiq) on full-reference MOS labels (labels/v2 `ref_uri`), on Ray Train.

Objective, as in the paper: vtamiq_loss = L1 + pairwise rank loss + 0.2 (1 - Pearson), AdamW, a cosine schedule with
warm-up. Targets are the MOS mapped onto 0..1 of its label scale, (mos - scale_min) / (scale_max - scale_min); the
exported config.json records that scale as `score_scale`, which the scorer (pipeline.scorers.vtamiq) maps back onto.

Data: unlike the LMM path there is no Ray Data stage. Preparing a VTAMIQ example is cheap (decode a pair, crop both at
one place, cut patches), so each worker prepares its own, and an epoch costs no dataset start-up; decoded pairs stay
in the worker's memory up to CACHE_BYTES, so a small set is decoded once. Every epoch a permutation of the (item,
view) examples, drawn from the (run seed, epoch) generator, is dealt to the ranks in equal parts (DDP needs the same
number of steps everywhere); each example's crop, flip and patch positions come from its own (run seed, epoch, item,
view) generator (pipeline.training.lmm.item_rng). So a run draws the same whatever restarts or resumes it.
Checkpoints, resume and export: as pipeline.training.lmm does (STATE_FILE every epoch into the run's storage, EXPORT_DIR
after the last; the same TorchTrainer configs), so the retraining job versions and promotes the result alike.
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from pipeline import registry
from pipeline.infra.media import MediaError, MediaOptions
from pipeline.qalign.syllabus import augment
from pipeline.scorers.full_reference import load_pair
from pipeline.training.lmm import (
    Recipe,
    Scaling,
    item_rng,
    rank_zero_say,
    record_epoch,
    report_epoch,
    resume,
    trainer_configs,
    worker_setup,
)

DEFAULT_LR = 1e-4  # VTAMIQ's AdamW learning rate when --lr is not given
CACHE_BYTES = 1 << 30  # decoded pairs each worker keeps between epochs


def check_recipe(recipe: Recipe) -> None:
    """Refuse, before anything runs, the options that only apply to LMM scorers."""
    if recipe.method != "full":
        raise ValueError(
            f"--method {recipe.method} adapts an LMM scorer; a VTAMIQ parent is trained whole: use --method full "
            "(the default)"
        )
    if recipe.soft_labels:
        raise ValueError("--soft-labels targets an LMM's level distribution; a VTAMIQ regresses the MOS itself")


def check_labels(train_rows: list[dict]) -> None:
    """Refuse training rows of several scales, or without any reference."""
    label_scale(train_rows)
    if not any(r.get("ref_uri") for r in train_rows):
        raise ValueError(
            "a VTAMIQ trains on full-reference labels, and none of the training rows has a ref_uri (labels/v2)"
        )


def label_scale(rows: list[dict]) -> tuple[float, float]:
    """The one (scale_min, scale_max) of the rows: a VTAMIQ's 0..1 output maps onto one label scale."""
    scales = sorted({(float(r["scale_min"]), float(r["scale_max"])) for r in rows})
    if len(scales) != 1:
        raise ValueError(f"a VTAMIQ trains on labels of one scale; the training rows have {scales[:4]}")
    return scales[0]


def unit_target(row: dict) -> float:
    """The row's MOS on 0..1 of its scale: what the regressor learns to output."""
    lo, hi = float(row["scale_min"]), float(row["scale_max"])
    return (float(row["mos"]) - lo) / (hi - lo)


class PairSource:
    """One worker's training pairs (reference, item) by row index, decoded on first use and kept up to a budget."""

    def __init__(self, rows: list[dict], budget_bytes: int = CACHE_BYTES) -> None:
        self.rows, self.budget, self.kept = rows, budget_bytes, {}
        self.options = MediaOptions()

    def pair(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Raises MediaError (pipeline.scorers.full_reference's kinds) when the pair cannot be compared."""
        if index in self.kept:
            return self.kept[index]
        pair = load_pair(self.rows[index], self.options)
        size = pair[0].nbytes + pair[1].nbytes
        if size <= self.budget:
            self.kept[index], self.budget = pair, self.budget - size
        return pair


def example(source: PairSource, index: int, view: int, epoch: int, recipe: Recipe, config: Any) -> dict:
    """One training pair's patches and target: crop, flip and positions from its (seed, epoch, item, view) draws."""
    from pipeline.models.vtamiq import prepare_pair

    row = source.rows[index]
    rng = item_rng(recipe.seed, epoch, f"{row['id']}#{view}")
    reference, item = augment(list(source.pair(index)), recipe.crop, recipe.hflip, rng)
    return {**prepare_pair(reference, item, config, rng=rng), "target": np.float32(unit_target(row))}


def epoch_order(n_examples: int, world: int, per_worker: int, seed: int, epoch: int) -> np.ndarray:
    """[steps, world, per_worker] example indices: the epoch's permutation, dealt in equal parts (wrapped around to
    fill the last step), so every rank runs the same number of steps."""
    steps = max(1, math.ceil(n_examples / (world * per_worker)))
    order = item_rng(seed, epoch, "order").permutation(n_examples)
    return np.resize(order, steps * world * per_worker).reshape(steps, world, per_worker)


def _usable(source: PairSource, rank: int, world: int) -> tuple[list[int], list[tuple[str, str]]]:
    """The rows whose pairs load (checked once per worker group, each rank a share, then shared) and those skipped."""
    mine = []
    for i in range(rank, len(source.rows), world):
        try:
            source.pair(i)
        except MediaError as e:
            mine.append((i, str(e)))
    everyone = [mine]
    if world > 1:
        everyone = [None] * world
        torch.distributed.all_gather_object(everyone, mine)
    bad = dict(pair for part in everyone for pair in part)
    return [i for i in range(len(source.rows)) if i not in bad], [(source.rows[i]["id"], e) for i, e in bad.items()]


def train_loop_per_worker(config: dict) -> None:
    """One DDP worker: load the parent, resume from the run's last checkpoint, train the remaining epochs.

    Rank 0 writes a checkpoint after every epoch (weights, optimizer, schedule, history); after the last one it also
    exports the trained model (VTAMIQ.save, with the labels' score_scale) into that checkpoint.
    """
    import ray.train
    import ray.train.torch
    from transformers import get_cosine_schedule_with_warmup

    from pipeline.models.vtamiq import VTAMIQ, collate, vtamiq_loss

    recipe, rank, world, device = worker_setup(config)
    console = config.get("console")
    say = rank_zero_say(rank, console)

    model = VTAMIQ.load(registry.local_path(config["parent"]), "cpu", torch.float32).train()
    model.config.score_scale = tuple(config["score_scale"])  # what the export records
    # the targets are MOS on 0..1, higher = better, whatever the parent regressed (the published weights: distortion)
    model.config.higher_is_better = True
    source = PairSource(config["rows"])
    usable, skipped = _usable(source, rank, world)
    if skipped and rank == 0 and console is not None:
        ray.get(console.skip.remote(skipped))
    if not usable:
        raise RuntimeError(f"none of the {len(source.rows)} training pairs could be loaded, e.g. {skipped[:2]}")
    say(f"training: vtamiq: {sum(p.numel() for p in model.parameters()):,} parameters, {len(usable)} pair(s)")

    ddp = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    lr = recipe.lr if recipe.lr is not None else DEFAULT_LR
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=recipe.weight_decay)
    per_worker = max(1, recipe.batch_size // world)
    n_examples = len(usable) * recipe.views
    steps_per_epoch = epoch_order(n_examples, world, per_worker, recipe.seed, 0).shape[0]
    total = steps_per_epoch * recipe.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(recipe.warmup_ratio * total), total)

    start_epoch, history = resume(lambda state: model.load_state_dict(state["model"]), optimizer, scheduler)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    model_config = model.config

    for epoch in range(start_epoch, recipe.epochs):
        began, loss_sum, n_rows = time.time(), 0.0, 0
        # dropout's draws: the epoch's own on each rank, so a resumed epoch is the epoch an unbroken run trains
        torch.manual_seed(int(item_rng(recipe.seed, epoch, f"dropout:{rank}").integers(2**62)))
        for step in epoch_order(n_examples, world, per_worker, recipe.seed, epoch)[:, rank]:
            items = [
                example(source, usable[j // recipe.views], j % recipe.views, epoch, recipe, model_config) for j in step
            ]
            batch = {k: v.to(device) for k, v in collate(items).items()}
            target = torch.tensor([e["target"] for e in items], device=device)
            with autocast:
                pred = ddp(batch["ref"], batch["dist"], batch["positions"], batch["scales"])
            loss = vtamiq_loss(pred, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            loss_sum, n_rows = loss_sum + loss.item() * len(items), n_rows + len(items)
        totals = torch.tensor([loss_sum, n_rows], dtype=torch.float64)
        if world > 1:
            torch.distributed.all_reduce(totals)
        loss_sum, rows = totals.tolist()
        record_epoch(history, epoch, start_epoch, began, {"loss": loss_sum / max(rows, 1), "examples": int(rows)})

        def trained() -> dict:
            return {"model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}

        report_epoch(
            history, recipe.epochs, start_epoch, rank, say, trained, optimizer, scheduler, model.save, unit="pairs"
        )


def fit(
    recipe: Recipe,
    scaling: Scaling,
    parent: str,
    train_rows: list[dict],
    runs_url: str,
    run_id: str,
    console: Any = None,
):
    """Train the VTAMIQ folder `parent` on `train_rows` (label rows with ref_uri) with Ray Train.

    Checkpoints go to `<runs_url>/<run_id>/`; a rerun with the same run id resumes from the last one there.
    Returns Ray Train's Result: its last checkpoint holds the exported model (EXPORT_DIR).
    """
    from ray.train.torch import TorchTrainer

    check_recipe(recipe)
    check_labels(train_rows)
    rows = [
        {k: r.get(k) for k in ("id", "uri", "ref_uri", "media_type", "mos", "scale_min", "scale_max")}
        for r in train_rows
    ]
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "recipe": asdict(recipe),
            "parent": parent,
            "rows": rows,
            "score_scale": label_scale(train_rows),
            "cpus_per_worker": scaling.cpus_per_worker,
            "console": console,
        },
        **trainer_configs(scaling, runs_url, run_id),
    )
    return trainer.fit()
