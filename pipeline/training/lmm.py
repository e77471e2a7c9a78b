"""Training a scorer on MOS labels with the Q-Align syllabus, on Ray Train.

Data: label rows are read from the shards by Ray Data, and a CPU stage (`ExampleBuilder`) decodes the media, applies
the optional augmentation (random crop, flip), draws a question and prepares the example (pipeline.qalign.syllabus);
it runs again every epoch, so crops and questions are new each time. Those draws come from generators seeded by (run
seed, epoch, item id), so a run's examples are the same however its blocks are spread over workers or it is resumed; the
epoch reaches the data tasks through a tiny actor (`EpochClock`) that rank 0 sets before each epoch's pass begins.
Objective: cross-entropy on the answer tokens only, read at each row's last tokens the same way the scorer reads each
row's last hidden state; at the level word, against the hard or soft level target.
Methods: pipeline.methods (full, lora, visual-prompt, llama-adapter, ...): each attaches to the model its way.
Workers: `train_loop_per_worker` on a `TorchTrainer` (DDP; gloo on CPU), with a checkpoint every epoch in the run's
storage, from which a restarted worker group or a rerun driver resumes. `fit` runs it.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from pipeline import methods, models, registry
from pipeline.infra import store
from pipeline.infra.media import MediaError, MediaOptions, load_media
from pipeline.qalign import recipes
from pipeline.qalign.levels import DEFAULT_LEVELS, Levels
from pipeline.qalign.syllabus import Syllabus, augment, level_target, questions
from schemas import LABELS_V1

META_KEYS = ("n_answer", "level_from_end", "target")


@dataclass
class Recipe:
    """What is trained and how: everything that changes the trained weights (and the run's identity)."""

    method: str = "full"  # a name in pipeline.methods
    epochs: int = 2
    lr: float | None = None  # None: the method's default
    batch_size: int = 64  # global, over all workers
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    soft_labels: bool = False
    crop: int | None = None  # random crop of this many pixels when training (centre crop when measuring fit)
    hflip: bool = False
    views: int = 1  # augmented views (crops) of each item per epoch: more steps per pass over the media
    shuffle_buffer: int = 512  # examples each worker shuffles locally before batching (memory: that many inputs)
    options: dict[str, Any] = field(default_factory=dict)  # the method's own options (defaults filled in)
    seed: int = 0  # initialisation, and the (epoch, item) generators of augmentation and questions

    def __post_init__(self) -> None:
        # Only the method's own options, all of them: they are part of the run's identity.
        self.options = methods.resolve_options(self.method, self.options)
        if self.epochs < 1 or self.batch_size < 1 or self.views < 1 or (self.crop is not None and self.crop < 1):
            raise ValueError("epochs, batch_size and views must be >= 1, crop >= 1 when given")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else methods.get(self.method).default_lr


@dataclass
class Scaling:
    """Where it runs: changing it does not change what a resumed run continues. None = sized to the cluster."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float | None = None  # default: what the data actors leave, split over the workers (max 8)
    data_cpus: float | None = None  # per CPU actor that decodes and prepares examples (default 1, or 0.5 below 8 CPUs)
    data_actors: int = 2  # at most this many of them
    max_failures: int = 3  # worker-group restarts (from the last checkpoint) before the run fails

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError("num_workers must be >= 1")

    def sized_for(self, cpus: float, gpus: float, node_cpus: float) -> Scaling:
        """This scaling with its defaults filled in for a cluster of `cpus` CPUs (the largest node `node_cpus`) and
        `gpus` GPUs; a request that can never be placed fails now, naming what was asked and what there is."""
        asked = f"--num-workers {self.num_workers}" + (" --use-gpu" if self.use_gpu else "")
        there = f"the cluster has {cpus:g} CPU(s) (largest node {node_cpus:g}) and {gpus:g} GPU(s)"
        if self.use_gpu and gpus < self.num_workers:
            raise ValueError(f"{asked} needs {self.num_workers} GPU(s) (one per worker); {there}")
        data = self.data_cpus if self.data_cpus is not None else (1.0 if cpus >= 8 else 0.5)
        # The example pipeline must be able to run beside the workers, which hold their CPUs all along: that is what
        # hung before. Its file listing takes a whole CPU when the dataset starts, its actors `data` each.
        beside = max(1.0, data)
        per_worker = self.cpus_per_worker
        if per_worker is None:
            per_worker = min(8.0, (cpus - beside) / self.num_workers)
            if not self.use_gpu and per_worker > 1:
                per_worker = float(int(per_worker))  # whole CPUs, so torch's thread count matches the share
        need = self.num_workers * per_worker + beside
        if per_worker <= 0 or need > cpus or per_worker > node_cpus or beside > node_cpus:
            raise ValueError(
                f"{asked} --cpus-per-worker {per_worker:g} --data-cpus {data:g} needs {need:g} CPU(s) "
                f"(the example pipeline {beside:g} beside the workers, {per_worker:g} on one node per worker); "
                f"{there}: ask for fewer workers or CPUs"
            )
        return replace(self, cpus_per_worker=per_worker, data_cpus=data)


# ------------------------------------------------------------------------------------------------------------
# Examples: label rows -> prepared training inputs, on Ray Data CPU workers


def item_rng(seed: int, epoch: int, key: str) -> np.random.Generator:
    """The generator of one item (or block) in one epoch: new draws every epoch, the same ones in every rerun."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, epoch, digest])


class ExampleBuilder:
    """Ray Data CPU stage: label rows -> pickled training examples. Rows whose media cannot be loaded are skipped."""

    def __init__(
        self,
        model_path: str,
        soft_labels: bool = False,
        crop: int | None = None,
        hflip: bool = False,
        views: int = 1,
        split: str = "train",
        levels: Levels = DEFAULT_LEVELS,
        seed: int = 0,
    ) -> None:
        path = registry.local_path(model_path)
        family = models.family(path)
        self.syllabus = Syllabus(family, family.load_processor(path), levels, recipes.for_checkpoint(path))
        self.soft, self.crop, self.hflip, self.views, self.split = soft_labels, crop, hflip, views, split
        self.seed = seed
        self.options = self.syllabus.recipe.video.media_options(MediaOptions())  # its frame policy (Q-ReAlign: 8)

    def rng(self, epoch: int, key: str) -> np.random.Generator:
        return item_rng(self.seed, epoch, key)

    def __call__(
        self, batch: dict[str, np.ndarray], epoch: int = 0, skipped: list[tuple[str, str]] | None = None
    ) -> dict[str, np.ndarray]:
        """The examples of a block; items whose media cannot be loaded go to `skipped` (id, error) when given,
        else to stderr."""
        out = []
        stds = batch.get("mos_std", [None] * len(batch["id"]))

        def skip(item_id: str, e: MediaError) -> None:
            if skipped is None:
                print(f"training: skipping {item_id}: {e}", file=sys.stderr, flush=True)
            else:
                skipped.append((str(item_id), str(e)))

        for i, item_id in enumerate(batch["id"]):
            if batch["split"][i] != self.split:
                continue
            try:
                media = load_media(batch["uri"][i], batch["media_type"][i], self.options)
            except MediaError as e:
                skip(item_id, e)
                continue
            task, media_type = batch["task"][i], batch["media_type"][i]
            std = None if stds[i] is None or not np.isfinite(stds[i]) else float(stds[i])
            target = level_target(
                float(batch["mos"][i]),
                batch["scale_min"][i],
                batch["scale_max"][i],
                std,
                self.soft,
                self.syllabus.levels,
            )
            rng = self.rng(epoch, str(item_id))
            try:
                for _ in range(self.views):  # decoded once, seen several ways
                    frames = augment(media.frames, self.crop, self.hflip, rng)
                    question = str(rng.choice(questions(task, media_type, self.syllabus.recipe)))
                    example = self.syllabus.example(frames, media_type, task, target, question)
                    out.append(pickle.dumps(example, protocol=5))
            except MediaError as e:  # what the model cannot take (an aspect ratio over its limit), as scoring skips it
                skip(item_id, e)
        # Views of one item side by side would fill whole batches with one picture: mix the block's items.
        order = self.rng(epoch, "block:" + ",".join(map(str, batch["id"]))).permutation(len(out))
        return {"example": np.array([out[j] for j in order], dtype=object)}


class EpochClock:
    """Which epoch the data tasks are building (a Ray actor: rank 0 sets it, the tasks read it).

    Ray Data runs the example stage anew for each epoch's pass, and starts that pass only once every worker has asked
    for it; the training loop sets the clock and waits at a barrier before asking, so a pass reads its own epoch.
    """

    def __init__(self) -> None:
        self.epoch = 0

    def set(self, epoch: int) -> None:
        self.epoch = epoch

    def get(self) -> int:
        return self.epoch


@lru_cache(maxsize=4)
def _cached_builder(
    model_path: str, soft_labels: bool, crop: int | None, hflip: bool, views: int, seed: int
) -> ExampleBuilder:
    return ExampleBuilder(model_path, soft_labels, crop, hflip, views, seed=seed)


def build_examples(
    batch: dict[str, np.ndarray], clock: Any, console: Any = None, **builder_args: Any
) -> dict[str, np.ndarray]:
    """Ray Data task form of ExampleBuilder: Ray reuses worker processes, so each keeps its builder (processor)
    across tasks and epochs, where an actor pool would start new actors for every epoch's pass. Skipped items go to
    the `console` relay (pipeline.infra.console.Relay), which counts each once however many epochs meet it."""
    import ray

    skipped: list[tuple[str, str]] | None = [] if console is not None else None
    out = _cached_builder(**builder_args)(batch, ray.get(clock.get.remote()), skipped)
    if skipped:
        ray.get(console.skip.remote(skipped))
    return out


# ------------------------------------------------------------------------------------------------------------
# The objective


class QAlignObjective(nn.Module):
    """Cross-entropy on the answer tokens only; at the level word, against the (hard or soft) level target.

    Returns (mean loss over the batch's answer tokens, [B, n_levels] logits of the level words at the level position).
    """

    def __init__(
        self, model: nn.Module, family: ModuleType, level_ids: list[int], addition: methods.Addition | None = None
    ) -> None:
        super().__init__()
        # The method's addition is a submodule, so DDP and the checkpoints see its parameters.
        self.model, self.family, self.addition = model, family, addition
        self.register_buffer("level_ids", torch.tensor(level_ids), persistent=False)

    def forward(
        self, inputs: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.addition is not None:
            inputs = self.addition.transform(inputs)
        hidden, mask = self.family.hidden_states(self.model, inputs)
        n_answer, from_end = meta["n_answer"], meta["level_from_end"]
        rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
        steps = torch.arange(int(n_answer.max()), device=hidden.device)[None]
        valid = steps < n_answer[:, None]
        # Answer token i sits at (last - n_answer + 1 + i) and is predicted from the position before it.
        last = mask.sum(1)[:, None] - 1
        predicted_from = (last - n_answer[:, None] + steps).clamp(min=0)
        text_last = inputs["attention_mask"].sum(1)[:, None] - 1
        targets = inputs["input_ids"][rows, (text_last - n_answer[:, None] + 1 + steps).clamp(min=0)]
        head = self.model.get_output_embeddings()
        logits = head(hidden[rows, predicted_from]).float()  # [B, K, V]: only the answer positions
        logp = torch.log_softmax(logits, dim=-1)
        nll = -logp.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
        at_level = (n_answer - 1 - from_end)[:, None] == steps
        level_nll = -(meta["target"] * logp[rows[:, 0], n_answer - 1 - from_end][:, self.level_ids]).sum(-1)
        nll = torch.where(at_level, level_nll[:, None], nll)
        loss = (nll * valid).sum() / valid.sum()
        level_logits = logits[rows[:, 0], n_answer - 1 - from_end][:, self.level_ids]
        return loss, level_logits


def collate_examples(
    family: ModuleType, examples: list[dict], image_major: frozenset[str], pad_token_id: int
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The family's own collate for the model inputs; the answer layout and targets alongside."""
    inputs = family.collate(
        [{k: v for k, v in e.items() if k not in META_KEYS} for e in examples], image_major, pad_token_id
    )
    meta = {k: torch.from_numpy(np.stack([e[k] for e in examples])) for k in META_KEYS}
    return inputs, meta


# ------------------------------------------------------------------------------------------------------------
# Methods


@dataclass
class Trainable:
    """The model set up for one method: the objective to optimise, and how to export the result."""

    objective: QAlignObjective
    export: Callable[[str], None]  # the trained artifact into a folder (the method's own export)

    def state(self) -> dict[str, torch.Tensor]:
        """The trained weights only (the checkpoint of a frozen-model method stays small)."""
        return {n: p.detach().cpu().clone() for n, p in self.objective.named_parameters() if p.requires_grad}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.objective.named_parameters())
        missing = [n for n, p in params.items() if p.requires_grad and n not in state]
        if missing:
            raise ValueError(f"checkpoint lacks trained weights {missing[:5]}")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.objective.parameters() if p.requires_grad)


def setup_method(
    model: nn.Module, family: ModuleType, processor: Any, level_ids: list[int], recipe: Recipe, parent_path: str
) -> Trainable:
    """Freeze and wrap the model for the recipe's method (pipeline.methods)."""
    methods.refuse_foreign_parent(recipe.method, parent_path)
    attached = methods.get(recipe.method).attach(model, processor, recipe.options, parent_path)
    return Trainable(QAlignObjective(model, family, level_ids, attached.addition), attached.export)


# ------------------------------------------------------------------------------------------------------------
# The Ray Train loop (runs on every worker)

STATE_FILE = "state.pt"
EXPORT_DIR = "export"


def train_loop_per_worker(config: dict) -> None:
    """One DDP worker: build the method, resume from the run's last checkpoint, train the remaining epochs.

    Rank 0 writes a checkpoint after every epoch (trained weights, optimizer, schedule); after the last one it also
    exports the trained artifact into that checkpoint.
    """
    import ray.train
    import ray.train.torch
    from transformers import get_cosine_schedule_with_warmup

    recipe, rank, world, device = worker_setup(config)
    torch.manual_seed(recipe.seed)  # the same adapter / prompt initialisation on every rank

    parent = registry.local_path(config["parent"])
    family = models.family(parent)
    processor = family.load_processor(parent)
    prompt_recipe = recipes.for_checkpoint(parent)  # the parent's prompt recipe: the version is scored with it too
    syllabus = Syllabus(family, processor, recipe=prompt_recipe)
    tokenizer = family.tokenizer_of(processor)
    level_ids = syllabus.level_ids("quality", "image")
    image_major = family.image_major_keys(processor, prompt_recipe)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model = family.load_model(parent, torch.float32, "cpu")
    trainable = setup_method(model, family, processor, level_ids, recipe, parent)
    say = rank_zero_say(rank, config.get("console"))
    total = sum(p.numel() for p in trainable.objective.parameters())
    say(f"training: {recipe.method}: {trainable.trainable_parameters():,} trainable parameters of {total:,}")
    objective = ray.train.torch.prepare_model(
        trainable.objective, parallel_strategy_kwargs={"find_unused_parameters": True}
    )
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    per_worker = max(1, recipe.batch_size // world)
    steps_per_epoch = max(1, math.ceil((config["n_train"] * recipe.views // world) / per_worker))
    total = steps_per_epoch * recipe.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(recipe.warmup_ratio * total), total)

    start_epoch, history = resume(lambda state: trainable.load_state(state["trained"]), optimizer, scheduler)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start_epoch, recipe.epochs):
        began = time.time()
        loss_sum, n_rows, correct = 0.0, 0, 0
        if rank == 0:
            ray.get(config["clock"].set.remote(epoch))
        if world > 1:
            torch.distributed.barrier()  # nobody starts the epoch's pass (and its data tasks) before the clock is set
        batches = shard.iter_batches(
            batch_size=per_worker,
            batch_format="numpy",
            local_shuffle_buffer_size=recipe.shuffle_buffer,
            local_shuffle_seed=recipe.seed * 1_000_003 + epoch * 1_009 + rank,  # reproducible, new every epoch
        )
        for batch in batches:  # the same number on every worker: the dataset is split into equal parts
            examples = [pickle.loads(b) for b in batch["example"]]
            inputs, meta = collate_examples(family, examples, image_major, pad_id)
            inputs = {k: v.to(device) for k, v in inputs.items()}
            meta = {k: v.to(device) for k, v in meta.items()}
            with autocast:
                loss, level_logits = objective(inputs, meta)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            n_rows += len(examples)
            loss_sum += loss.item() * len(examples)
            correct += int((level_logits.argmax(-1) == meta["target"].argmax(-1)).sum())
        totals = torch.tensor([loss_sum, n_rows, correct], dtype=torch.float64)
        if world > 1:
            torch.distributed.all_reduce(totals)
        loss_sum, rows, right = totals.tolist()
        figures = {"loss": loss_sum / max(rows, 1), "level_accuracy": right / max(rows, 1), "examples": int(rows)}
        record_epoch(history, epoch, start_epoch, began, figures)

        def export(folder: str) -> None:
            trainable.export(folder)
            # the prompt recipe it was trained with, beside it: the version is scored with that recipe
            recipes.write_recipe_file(folder, prompt_recipe)

        def trained() -> dict:
            return {"trained": trainable.state()}

        report_epoch(history, recipe.epochs, start_epoch, rank, say, trained, optimizer, scheduler, export)


def resume(load: Callable[[dict], None], optimizer, scheduler) -> tuple[int, list[dict]]:
    """Where this worker group starts: after the epoch of Ray Train's last checkpoint (its trained state given to
    `load`, the optimizer and the schedule restored) -> (that epoch + 1, the history so far); else (0, [])."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return 0, []
    with checkpoint.as_directory() as folder:
        state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=False)
    load(state)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return state["epoch"] + 1, state["history"]


def worker_setup(config: dict) -> tuple[Recipe, int, int, torch.device]:
    """A Ray Train worker's recipe, rank, world size and device; on CPU, its torch threads to its share of cores."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
    return Recipe(**config["recipe"]), context.get_world_rank(), context.get_world_size(), device


def rank_zero_say(rank: int, console) -> Callable[[str], None]:
    """A training worker's `say`: rank 0's lines go to its own log and, through the driver (a console Relay,
    or None), to the user; the other ranks' are dropped (every rank would say the same)."""
    import ray

    def say(line: str) -> None:
        if rank == 0:
            print(line, flush=True)
            if console is not None:
                ray.get(console.say.remote(line))

    return say


def record_epoch(history: list[dict], epoch: int, start_epoch: int, began: float, figures: dict) -> None:
    """Add an epoch's entry to the history: the loop's figures (loss and examples; level accuracy where measured)."""
    history.append(
        {
            "epoch": epoch,
            **figures,
            "seconds": round(time.time() - began, 2),
            "attempt_began_at": start_epoch,  # the epoch this worker group (re)started at: resumes show here
        }
    )


def report_epoch(
    history: list[dict],
    epochs: int,
    start_epoch: int,
    rank: int,
    say: Callable[[str], None],
    trained: Callable[[], dict],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    export: Callable[[str], None],
    unit: str = "examples",
) -> None:
    """The end of an epoch on every worker: its line for the user, and its report to Ray Train, with rank 0's
    checkpoint: what a resumed run starts from (`resume`: the loop's trained state, `trained()`, with the optimizer
    and the schedule), and on the last epoch also the model (`export(folder)`)."""
    import ray.train

    say(epoch_line(history, epochs, start_epoch, unit))
    # The whole history only in the last report: a report is kept (and printed by Ray Train) every epoch.
    last = history[-1]["epoch"] == epochs - 1
    metrics = {**history[-1], "start_epoch": start_epoch, **({"history": list(history)} if last else {})}
    with tempfile.TemporaryDirectory() as folder:
        if rank == 0:
            state = {"epoch": history[-1]["epoch"], "history": history, **trained()}
            state |= {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
            torch.save(state, os.path.join(folder, STATE_FILE))
            if last:
                export(os.path.join(folder, EXPORT_DIR))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
        else:
            ray.train.report(metrics)


def epoch_line(history: list[dict], epochs: int, start_epoch: int, unit: str = "examples") -> str:
    """`epoch 3/10: loss 1.2345, level accuracy 41.2%, 52.1 examples/s, ETA 1m10s` (level accuracy where the trainer
    measures it): the ETA from the mean time of this attempt's epochs (a resumed run's earlier epochs ran elsewhere)."""
    from pipeline.infra.console import duration

    entry = history[-1]
    ran = [h["seconds"] for h in history if h["epoch"] >= start_epoch]
    left = epochs - 1 - entry["epoch"]
    rate = entry["examples"] / entry["seconds"] if entry["seconds"] else float("nan")
    eta = f", ETA {duration(left * sum(ran) / len(ran))}" if left else ""
    accuracy = f", level accuracy {entry['level_accuracy']:.1%}" if "level_accuracy" in entry else ""
    return f"epoch {entry['epoch'] + 1}/{epochs}: loss {entry['loss']:.4f}{accuracy}, {rate:.1f} {unit}/s{eta}"


# ------------------------------------------------------------------------------------------------------------
# The run on Ray Train


def _label_dataset(urls: list[str], num_cpus: float):
    """The label shards as one Ray Data dataset, read from the Parquet files themselves."""
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False  # one line per epoch is enough in job logs

    def normalise(batch: pa.Table) -> pa.Table:
        # Shards may or may not carry mos_std: give every block the same columns.
        if "mos_std" not in batch.column_names:
            batch = batch.append_column("mos_std", pa.nulls(batch.num_rows, pa.float64()))
        return batch.select([*LABELS_V1.names, "mos_std"])

    parts = []
    for url in urls:
        if "://" in url and not url.startswith("file://"):
            fs, path = store.arrow_filesystem(url)
            ds = ray.data.read_parquet(path, filesystem=fs, num_cpus=num_cpus)
        else:
            ds = ray.data.read_parquet(url.removeprefix("file://"), num_cpus=num_cpus)
        parts.append(ds.map_batches(normalise, batch_format="pyarrow", batch_size=None, num_cpus=num_cpus))
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _storage(url: str) -> tuple[str, Any]:
    """RunConfig's (storage_path, storage_filesystem) for any fsspec URL (pyarrow's own S3 ignores
    AWS_ENDPOINT_URL, so remote storage goes through fsspec)."""
    if "://" in url and not url.startswith("file://"):
        fs, path = store.arrow_filesystem(url)
        return path, fs
    path = os.path.abspath(url.removeprefix("file://"))
    os.makedirs(path, exist_ok=True)
    return path, None


def fit(
    recipe: Recipe,
    scaling: Scaling,
    parent: str,
    label_urls: list[str],
    n_train: int,
    runs_url: str,
    run_id: str,
    console: Any = None,
):
    """Train `parent` (a model folder or URL) on the training rows of the label shards with Ray Train.

    Checkpoints go to `<runs_url>/<run_id>/`; a rerun with the same run id resumes from the last one there.
    `console`: a pipeline.infra.console.Relay actor for rank 0's lines and the skipped items (None: printed in place).
    Returns Ray Train's Result: its last checkpoint holds the exported artifact (EXPORT_DIR).
    """
    import ray
    import ray.data
    from ray.train.torch import TorchTrainer

    clock = ray.remote(num_cpus=0)(EpochClock).remote()  # lives as long as this driver, across worker restarts
    dataset = _label_dataset(label_urls, scaling.data_cpus).map_batches(
        build_examples,
        fn_kwargs={
            "clock": clock,
            "console": console,
            "model_path": parent,
            "soft_labels": recipe.soft_labels,
            "crop": recipe.crop,
            "hflip": recipe.hflip,
            "views": recipe.views,
            "seed": recipe.seed,
        },
        batch_size=32,  # label rows per task: the items of one block are mixed, so not too few
        batch_format="numpy",
        num_cpus=scaling.data_cpus,
        compute=ray.data.TaskPoolStrategy(size=scaling.data_actors),
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "recipe": asdict(recipe),
            "parent": parent,
            "n_train": n_train,
            "cpus_per_worker": scaling.cpus_per_worker,
            "clock": clock,
            "console": console,
        },
        **trainer_configs(scaling, runs_url, run_id),
        datasets={"train": dataset},
    )
    return trainer.fit()


def trainer_configs(scaling: Scaling, runs_url: str, run_id: str) -> dict[str, Any]:
    """A TorchTrainer's scaling and run configs: workers as `scaling` says, checkpoints in `<runs_url>/<run_id>/`
    (where a rerun with the same run id resumes), worker-group restarts from the last one. Every trainer uses these."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    resources = {"CPU": scaling.cpus_per_worker, **({"GPU": 1} if scaling.use_gpu else {})}
    storage_path, storage_fs = _storage(runs_url)
    return {
        "scaling_config": ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu, resources_per_worker=resources
        ),
        "run_config": RunConfig(
            name=run_id,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    }
