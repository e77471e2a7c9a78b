"""The retraining job: fold new MOS label shards into a registry entry's scorer, and promote it only if it is better.

One run: plan from the label shards and the registry alone (what is new, what to start from, the run's identity);
measure the starting model (and CURRENT) on the held-out split and on a sample of the training items; train on Ray
Train (pipeline.training.lmm); write a new immutable version; measure it; move CURRENT to it only if its held-out SRCC
beats CURRENT's (or the base model's). With nothing new, or a run that already finished, it does nothing.
A killed run, rerun with the same arguments, has the same run id and resumes from its last checkpoint.
What is trained is chosen once, from the parent model (`Trainer`): an LMM level scorer (pipeline.training.lmm) or a
VTAMIQ full-reference scorer (pipeline.training.vtamiq); the rest of the job is the same for both.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import methods, registry
from pipeline.corpora.shards import check_ids_across_shards, list_shards, unreadable
from pipeline.infra import store
from pipeline.infra.console import console, relayed, skipped_summary
from pipeline.infra.version import code_version
from pipeline.infra.watchdog import DEFAULT_STALL_S, watched
from pipeline.qalign import recipes
from pipeline.registry import checkpoint
from pipeline.training.evaluation import evaluate_on_ray
from pipeline.training.lmm import EXPORT_DIR, Recipe, Scaling
from schemas import SchemaError, validate_labels

# ------------------------------------------------------------------------------------------------------------
# Label shards


@dataclass
class LabelShard:
    url: str
    digest: str  # sha256 of the shard's bytes: its identity in the registry's record of what was seen
    table: pa.Table

    @cached_property
    def _rows_by_split(self) -> dict[str, list[dict]]:
        by_split: dict[str, list[dict]] = {}
        for row in self.table.to_pylist():  # once per shard: the job asks for its rows many times
            by_split.setdefault(row["split"], []).append(row)
        return by_split

    def rows(self, split: str) -> list[dict]:
        return self._rows_by_split.get(split, [])


def read_label_shards(labels: str, eval_split: str = "eval") -> list[LabelShard]:
    """Every shard under `labels`, validated (labels/v1), with ids unique and no item in both splits."""
    shards = []
    for url in list_shards(labels):
        fs, path = store.filesystem(url)
        data = store.retry(lambda fs=fs, path=path: fs.cat_file(path), f"read {url}")
        try:
            table = pq.read_table(io.BytesIO(data))
        except (pa.ArrowException, OSError) as e:  # not Parquet, truncated, corrupt
            raise unreadable(url, e) from e
        validate_labels(table, url, splits=("train", eval_split))
        shards.append(LabelShard(url, "sha256:" + hashlib.sha256(data).hexdigest(), table))
    check_ids_across_shards([s.url for s in shards], [s.table.column("id") for s in shards])
    uris = {split: {r["uri"] for s in shards for r in s.rows(split)} for split in ("train", eval_split)}
    leaked = sorted(uris["train"] & uris[eval_split])
    if leaked:
        raise SchemaError(
            labels, "split", f"{len(leaked)} item(s) are in both 'train' and '{eval_split}', e.g. {leaked[:3]}"
        )
    return shards


# ------------------------------------------------------------------------------------------------------------
# What is trained: chosen once per run, from the parent model


@dataclass(frozen=True)
class Trainer:
    """The part of a run that depends on the kind of scorer being trained; everything else is shared."""

    name: str  # "lmm" | "vtamiq", recorded in version.json
    scorer: str  # the scoring job's kind (pipeline.scorers) that measures it before and after
    check_recipe: Callable[[Recipe], None]  # refuses (ValueError), before anything runs, options it cannot train with
    check_labels: Callable[[list[dict]], None]  # ... and training rows it cannot train on
    fit: Callable[..., Any]  # (recipe, scaling, parent, label_urls, train_rows, runs_url, run_id, relay) -> Result
    record: Callable[[str, list[dict]], dict]  # (parent path, train rows) -> its own fields of version.json


def _fit_lmm(recipe, scaling, parent, label_urls, train_rows, runs_url, run_id, relay):
    from pipeline.training.lmm import fit

    return fit(recipe, scaling, parent, label_urls, len(train_rows), runs_url, run_id, relay)


def _fit_vtamiq(recipe, scaling, parent, label_urls, train_rows, runs_url, run_id, relay):
    from pipeline.training.vtamiq import fit

    return fit(recipe, scaling, parent, train_rows, runs_url, run_id, relay)


def _check_vtamiq_recipe(recipe: Recipe) -> None:
    from pipeline.training.vtamiq import check_recipe

    check_recipe(recipe)


def _check_vtamiq_labels(train_rows: list[dict]) -> None:
    from pipeline.training.vtamiq import check_labels

    check_labels(train_rows)


def _vtamiq_record(parent: str, train_rows: list[dict]) -> dict:
    from pipeline.training.vtamiq import label_scale

    return {"model_type": "vtamiq", "score_scale": list(label_scale(train_rows))}


LMM = Trainer(
    "lmm",
    "lmm",
    check_recipe=lambda recipe: None,  # each method checks its parent itself (pipeline.methods)
    check_labels=lambda rows: None,
    fit=_fit_lmm,
    record=lambda parent, rows: {"prompt_recipe": recipes.for_checkpoint(registry.local_path(parent)).name},
)
VTAMIQ = Trainer("vtamiq", "vtamiq", _check_vtamiq_recipe, _check_vtamiq_labels, _fit_vtamiq, _vtamiq_record)


def trainer_for(model_path: str) -> Trainer:
    """VTAMIQ for a VTAMIQ model folder (local or remote: only its config.json is read), else the LMM trainer.
    A hub id is an LMM: VTAMIQ folders are written by this project, never fetched from a hub."""
    if "://" not in model_path and not os.path.isdir(model_path):
        return LMM
    try:
        config = json.loads((Path(checkpoint.metadata_folder(model_path)) / "config.json").read_text())
    except (OSError, ValueError):
        return LMM
    return VTAMIQ if isinstance(config, dict) and config.get("model_type") == "vtamiq" else LMM


# ------------------------------------------------------------------------------------------------------------
# One retraining run: plan, evaluate before, train on Ray, write a version, evaluate after, promote or not


@dataclass
class RetrainConfig:
    labels: str  # folder (or glob) of label shards, any fsspec URL
    base_model: str  # model folder or hub id the entry's first version starts from
    registry: str
    name: str
    recipe: Recipe = field(default_factory=Recipe)
    scaling: Scaling = field(default_factory=Scaling)
    eval_split: str = "eval"
    all_labels: bool = False  # train on the training rows of every shard, not only the new shards'
    fit_items: int = 1000  # at most this many training items are scored to measure the fit
    stall_timeout_s: float = DEFAULT_STALL_S  # work the cluster cannot place for this long fails the run
    about: dict = field(default_factory=dict)  # free-form facts for version.json (what the labels are, the command)

    def __post_init__(self) -> None:
        if self.recipe.batch_size < self.scaling.num_workers:
            raise ValueError("the batch size must be at least the number of workers (it is split over them)")


@dataclass
class Plan:
    entry: str
    base: dict  # the lineage's root model: {"path", "revision"}
    parent: dict  # what training starts from: {"path", "revision", "version" (None for the base model)}
    current: str | None
    shards: list[LabelShard]
    new: list[str]  # shard URLs no version of the lineage has seen
    train_urls: list[str]
    run_id: str | None  # None: nothing to do
    message: str
    trainer: Trainer = LMM


@dataclass
class Outcome:
    status: str  # "nothing_new" | "promoted" | "not_promoted"
    message: str
    version: str | None = None
    version_url: str | None = None
    metrics: dict = field(default_factory=dict)


_STARTED = time.time()


def log(message: str) -> None:
    console.say(f"retrain: [{time.time() - _STARTED:6.1f}s] {message}")


def plan_run(config: RetrainConfig) -> Plan:
    """What this run would do, from the label shards and the registry alone (no training, no Ray)."""
    entry = registry.entry_url(config.registry, config.name)
    repaired = registry.repair_current(entry)
    if repaired:
        log(f"CURRENT moved to {repaired}: a killed run had decided that promotion but not written it")
    base_ref = registry.resolve(config.base_model)
    base = {"path": base_ref.path, "revision": base_ref.revision}
    parent = {**base, "version": None}
    current = registry.current_version(entry)
    notes = []
    if current is not None:
        record = registry.read_version(entry, current)
        if record["base_model"]["path"] == base_ref.path:
            parent = {"path": store.join(entry, current), "revision": f"{config.name}/{current}", "version": current}
            base = record["base_model"]
        else:
            notes.append(
                f"CURRENT ({current}) descends from {record['base_model']['path']}, not {base_ref.path}: "
                "starting a new lineage from --base-model"
            )
    seen = registry.seen_shards(entry, parent["version"])
    shards = read_label_shards(config.labels, config.eval_split)
    new = [s.url for s in shards if seen.get(s.url) != s.digest]
    seen_by = parent["version"] or "no version yet"

    trainer = trainer_for(parent["path"])

    def nothing(message: str) -> Plan:
        return Plan(entry, base, parent, current, shards, new, [], None, " ".join([*notes, message]), trainer)

    if not new:
        return nothing(f"nothing new: all {len(shards)} label shard(s) were already seen by {seen_by}")
    train_urls = [s.url for s in shards] if config.all_labels else new
    train_rows = [r for s in shards if s.url in train_urls for r in s.rows("train")]
    n_train = len(train_rows)
    if n_train == 0:
        return nothing(f"nothing to train on: the {len(new)} new shard(s) hold no training rows")
    trainer.check_recipe(config.recipe)  # what the parent's kind cannot train with, or on: refused now
    trainer.check_labels(train_rows)
    identity = {
        "parent": parent["revision"],
        "train": {s.url: s.digest for s in shards if s.url in train_urls},
        "new": {s.url: s.digest for s in shards if s.url in new},
        "recipe": asdict(config.recipe),
        "eval_split": config.eval_split,
    }
    run_id = "run-" + hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    done = registry.find_run(entry, run_id)
    if done is not None:
        reason = registry.read_version(entry, done).get("promotion", {}).get("reason", "")
        return nothing(f"nothing new: this exact run already produced {done} ({reason})")
    message = f"{len(new)} new label shard(s); training on {n_train} item(s) from {len(train_urls)} shard(s)"
    if trainer is not LMM:
        message += f" ({trainer.name})"
    return Plan(entry, base, parent, current, shards, new, train_urls, run_id, " ".join([*notes, message]), trainer)


def _fit_sample(rows: list[dict], limit: int) -> list[dict]:
    """A fixed sample of the training rows (by a hash of the id), to measure the fit on."""
    ranked = sorted(rows, key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest())
    return ranked[:limit]


# Files a version never takes from its parent: the registry's own records, and any method's artifact (the new
# export brings its own).
_REGISTRY_FILES = (registry.VERSION_FILE, registry.METRICS_FILE, ".complete")
_WEIGHT_FILES = ("config.json", "generation_config.json")


def stage_version(parent_path: str, export: str, method: str, out: str) -> None:
    """A complete model folder in `out`: the parent's tokenizer/processor files, then the trained artifact.

    A method with an artifact of its own adds to the frozen parent, so its version keeps the parent's weights too;
    any other method's export holds the trained weights.
    """
    parent = registry.local_path(parent_path)
    skip = {*_REGISTRY_FILES, *methods.artifact_files()}
    keeps_weights = bool(methods.get(method).artifacts)
    for name in sorted(os.listdir(parent)):
        source = os.path.join(parent, name)
        is_weights = name.endswith((".safetensors", ".safetensors.index.json")) or name in _WEIGHT_FILES
        if not os.path.isfile(source) or name in skip or (is_weights and not keeps_weights):
            continue
        shutil.copy2(source, os.path.join(out, name))
    for name in os.listdir(export):
        shutil.copy2(os.path.join(export, name), os.path.join(out, name))


def _ensure_ray() -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, logging_level="WARNING")


def _cluster_size() -> tuple[float, float, float]:
    """(CPUs, GPUs, CPUs of the largest node) of the cluster Ray is connected to."""
    import ray

    total = ray.cluster_resources()
    nodes = [n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")]
    return total.get("CPU", 0), total.get("GPU", 0), max(nodes, default=0)


def retrain(config: RetrainConfig) -> Outcome:
    """The whole job. Idempotent: with no new label shards (or a run that already finished) it does nothing."""
    import ray

    plan = plan_run(config)
    log(plan.message)
    if plan.run_id is None:
        return Outcome("nothing_new", plan.message)
    recipe, scaling = config.recipe, config.scaling
    train_rows = [r for s in plan.shards if s.url in plan.train_urls for r in s.rows("train")]
    eval_rows = [r for s in plan.shards for r in s.rows(config.eval_split)]
    splits = {"held_out": eval_rows, "train": _fit_sample(train_rows, config.fit_items)}
    crops = {"train": recipe.crop}  # fit is measured on centre crops when training crops; held-out never is
    _ensure_ray()
    scaling = scaling.sized_for(*_cluster_size())
    log(
        f"resources: {scaling.num_workers} worker(s) x {scaling.cpus_per_worker:g} CPU"
        + (" + 1 GPU" if scaling.use_gpu else "")
        + f", example actors {scaling.data_cpus:g} CPU each"
    )

    rate = {"parent": plan.parent["path"]}
    if plan.current is not None and plan.current != plan.parent["version"]:
        rate["current"] = store.join(plan.entry, plan.current)
    log(f"measuring {', '.join(rate)} on {len(eval_rows)} held-out and {len(splits['train'])} training item(s)")
    stall = config.stall_timeout_s
    trainer = plan.trainer
    before = watched(
        lambda: evaluate_on_ray(rate, splits, crops, scaling.use_gpu, trainer.scorer), stall, "evaluation (before)"
    )

    log(f"training ({recipe.method}, {recipe.epochs} epoch(s), {scaling.num_workers} worker(s)) as {plan.run_id}")
    runs = registry.runs_url(plan.entry)
    with relayed(log) as relay:  # rank 0's epoch lines, and the items skipped for bad media
        args = (recipe, scaling, plan.parent["path"], plan.train_urls, train_rows, runs, plan.run_id, relay)
        result = watched(lambda: trainer.fit(*args), stall, "training")
        skipped = ray.get(relay.skipped_items.remote())
    if skipped_summary(skipped):
        log(skipped_summary(skipped))
        console.to_log("\n".join(f"  skipped {item}: {error}" for item, error in sorted(skipped.items())))
    history = result.metrics.get("history", [])
    resumed = int(result.metrics.get("start_epoch", 0))
    if resumed:
        log(f"resumed from the checkpoint of epoch {resumed - 1}: trained epochs {resumed}..{recipe.epochs - 1} only")

    version = registry.next_version_name(plan.entry)
    with tempfile.TemporaryDirectory() as staging, result.checkpoint.as_directory() as checkpoint:
        export = os.path.join(checkpoint, EXPORT_DIR)
        if not os.path.isdir(export):
            raise RuntimeError(f"the run's last checkpoint has no {EXPORT_DIR}/: training did not finish")
        stage_version(plan.parent["path"], export, recipe.method, staging)
        version_url = registry.upload_version(plan.entry, version, staging)
    log(f"wrote {version_url}; measuring it")
    after = watched(
        lambda: evaluate_on_ray({"new": version_url}, splits, crops, scaling.use_gpu, trainer.scorer),
        stall,
        "evaluation (after)",
    )["new"]

    reference_name = "current" if "current" in rate else "parent"
    reference = before[reference_name]
    compared_with = plan.current or f"the base model {plan.base['path']}"
    promotion = decide(after, reference, compared_with, plan, registry.current_version(plan.entry))
    metrics = {
        "held_out": {
            "before": before["parent"].get("held_out"),
            "after": after.get("held_out"),
            **({"current": before["current"].get("held_out")} if "current" in before else {}),
        },
        "train": {"before": before["parent"].get("train"), "after": after.get("train"), "crop": recipe.crop},
        "training": history,
    }
    seen = {**registry.seen_shards(plan.entry, plan.parent["version"])}
    seen.update({s.url: s.digest for s in plan.shards if s.url in plan.new or s.url in plan.train_urls})
    record = {
        "version": version,
        "name": config.name,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "base_model": plan.base,
        "parent": plan.parent,
        "method": recipe.method,
        "trainer": trainer.name,
        "recipe": asdict(recipe),
        **trainer.record(plan.parent["path"], train_rows),
        "eval_split": config.eval_split,
        "label_shards": [
            {
                "url": s.url,
                "digest": s.digest,
                "trained_on": s.url in plan.train_urls,
                "train_rows": len(s.rows("train")),
                "held_out_rows": len(s.rows(config.eval_split)),
            }
            for s in plan.shards
        ],
        "seen_shards": seen,
        "run": {
            "id": plan.run_id,
            "resumed_from_epoch": resumed,
            "workers": scaling.num_workers,
            "use_gpu": scaling.use_gpu,
        },
        "promotion": promotion,
        "code_version": code_version(),
        **({"about": config.about} if config.about else {}),
    }
    registry.finish_version(plan.entry, version, metrics, record)
    if promotion["promoted"]:
        registry.set_current(plan.entry, version)
    registry.remove_run(plan.entry, plan.run_id)
    console.say(evaluation_table(metrics))
    log(decision(version, promotion))
    status = "promoted" if promotion["promoted"] else "not_promoted"
    return Outcome(status, promotion["reason"], version, version_url, metrics)


def evaluation_table(metrics: dict) -> str:
    """SRCC, PLCC and the level loss (pipeline.training.evaluation.rate) before and after training, on the training
    sample and on the held-out items."""

    def cell(m: dict | None, key: str) -> str:
        value = m.get(key) if m and m.get("n") else None
        if value is None or value != value:  # not measured, or NaN
            return "    n/a"
        return f"{value:.4f}" if key == "level_loss" else f"{value:+.4f}"

    columns = (("SRCC", "srcc"), ("PLCC", "plcc"), ("level loss", "level_loss"))
    lines = [f"{'':22s}" + "".join(f" {title + ' before':>17s} {'after':>8s}" for title, _ in columns)]
    for name, split in (("training", "train"), ("held-out", "held_out")):
        before, after = metrics[split].get("before"), metrics[split].get("after")
        n = (after or before or {}).get("n", 0)
        cells = "".join(f" {cell(before, key):>17s} {cell(after, key):>8s}" for _, key in columns)
        lines.append(f"{name + f' ({n})':22s}{cells}")
    return "\n".join(lines)


def decision(version: str, promotion: dict) -> str:
    """The promotion decision in one sentence."""
    if promotion["promoted"]:
        return f"{version} promoted to CURRENT: {promotion['reason']}."
    return f"{version} not promoted (CURRENT unchanged): {promotion['reason']}."


def decide(after: dict, reference: dict, compared_with: str, plan: Plan, current_now: str | None) -> dict:
    """Promote only when the held-out SRCC beats the current version's (or, with none, the base model's)."""
    new, old = after.get("held_out"), reference.get("held_out")
    out = {"promoted": False, "compared_with": compared_with}
    if not new or not new["n"]:
        return {**out, "reason": "no held-out items could be scored, so there is nothing to compare"}
    out.update(srcc=new["srcc"], reference_srcc=old["srcc"])
    if current_now != plan.current:
        return {**out, "reason": f"CURRENT moved from {plan.current} to {current_now} during this run"}
    comparison = f"held-out SRCC {new['srcc']:.4f} vs {old['srcc']:.4f} of {compared_with}"
    if new["srcc"] > old["srcc"]:
        return {**out, "promoted": True, "reason": f"{comparison}: better"}
    return {**out, "reason": f"{comparison}: not better"}
