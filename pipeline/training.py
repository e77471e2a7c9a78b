"""Training a scorer on MOS labels with the Q-Align syllabus, on Ray Train.

Data: label rows are read from the shards by Ray Data, and a CPU stage (`ExampleBuilder`) decodes the media, applies
the optional augmentation (random crop, flip), draws a question and prepares the example (pipeline.syllabus); it runs
again every epoch, so crops and questions are new each time.
Objective: cross-entropy on the answer tokens only, read at each row's last tokens the same way the scorer reads each
row's last hidden state; at the level word, against the hard or soft level target.
Methods: `full` fine-tuning, `lora` (peft), `visual-prompt` (a pixel border on a frozen model, pipeline.visual_prompt).
Workers: `train_loop_per_worker` on a `TorchTrainer` (DDP; gloo on CPU), with a checkpoint every epoch in the run's
storage, from which a restarted worker group or a rerun driver resumes. `fit` runs it.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import lru_cache
from types import ModuleType
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from pipeline import models, recipes, registry, store
from pipeline.levels import DEFAULT_LEVELS, Levels
from pipeline.media import MediaError, MediaOptions, load_media
from pipeline.syllabus import Syllabus, augment, level_target, questions
from pipeline.visual_prompt import VisualPrompt, image_geometry
from schemas import LABELS_V1

METHODS = ("full", "lora", "visual-prompt")
# The reference recipe uses 2e-5 for full fine-tuning; LoRA and pixel prompts move far fewer weights and need more.
DEFAULT_LR = {"full": 2e-5, "lora": 2e-4, "visual-prompt": 1e-2}
# LoRA goes on the language model's projections only (as Q-Align's LoRA variant); the towers stay frozen.
LORA_TARGETS = r"^(?!.*(vision|visual)).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)(\.multiway\.\d+)?$"
META_KEYS = ("n_answer", "level_from_end", "target")


@dataclass
class Recipe:
    """What is trained and how: everything that changes the trained weights (and the run's identity)."""

    method: str = "full"
    epochs: int = 2
    lr: float | None = None  # None: DEFAULT_LR[method]
    batch_size: int = 64  # global, over all workers
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    soft_labels: bool = False
    crop: int | None = None  # random crop of this many pixels when training (centre crop when measuring fit)
    hflip: bool = False
    views: int = 1  # augmented views (crops) of each item per epoch: more steps per pass over the media
    shuffle_buffer: int = 512  # examples each worker shuffles locally before batching (memory: that many inputs)
    lora_r: int = 128
    lora_alpha: int | None = None  # None: 2 * lora_r
    prompt_pixels: int = 30  # visual-prompt border width
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; expected one of {METHODS}")
        if self.epochs < 1 or self.batch_size < 1 or self.views < 1 or (self.crop is not None and self.crop < 1):
            raise ValueError("epochs, batch_size and views must be >= 1, crop >= 1 when given")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]


@dataclass
class Scaling:
    """Where it runs: changing it does not change what a resumed run continues."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    data_cpus: float = 1.0  # per CPU actor that decodes and prepares examples
    data_actors: int = 2  # at most this many of them
    max_failures: int = 3  # worker-group restarts (from the last checkpoint) before the run fails

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError("num_workers must be >= 1")


# ------------------------------------------------------------------------------------------------------------
# Examples: label rows -> prepared training inputs, on Ray Data CPU workers


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
    ) -> None:
        path = registry.local_path(model_path)
        family = models.family(path)
        self.syllabus = Syllabus(family, family.load_processor(path), levels, recipes.for_checkpoint(path))
        self.soft, self.crop, self.hflip, self.views, self.split = soft_labels, crop, hflip, views, split
        self.rng = np.random.default_rng()  # fresh entropy: new crops, flips and questions every epoch
        self.options = self.syllabus.recipe.video.media_options(MediaOptions())  # its frame policy (Q-ReAlign: 8)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = []
        stds = batch.get("mos_std", [None] * len(batch["id"]))
        for i, item_id in enumerate(batch["id"]):
            if batch["split"][i] != self.split:
                continue
            try:
                media = load_media(batch["uri"][i], batch["media_type"][i], self.options)
            except MediaError as e:
                print(f"training: skipping {item_id}: {e}", file=sys.stderr, flush=True)
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
            for _ in range(self.views):  # decoded once, seen several ways
                frames = augment(media.frames, self.crop, self.hflip, self.rng)
                question = str(self.rng.choice(questions(task, media_type, self.syllabus.recipe)))
                example = self.syllabus.example(frames, media_type, task, target, question)
                out.append(pickle.dumps(example, protocol=5))
        # Views of one item side by side would fill whole batches with one picture: mix the block's items.
        return {"example": np.array([out[j] for j in self.rng.permutation(len(out))], dtype=object)}


@lru_cache(maxsize=4)
def _cached_builder(model_path: str, soft_labels: bool, crop: int | None, hflip: bool, views: int) -> ExampleBuilder:
    return ExampleBuilder(model_path, soft_labels, crop, hflip, views)


def build_examples(batch: dict[str, np.ndarray], **builder_args: Any) -> dict[str, np.ndarray]:
    """Ray Data task form of ExampleBuilder: Ray reuses worker processes, so each keeps its builder (processor)
    across tasks and epochs, where an actor pool would start new actors for every epoch's pass."""
    return _cached_builder(**builder_args)(batch)


# ------------------------------------------------------------------------------------------------------------
# The objective


class QAlignObjective(nn.Module):
    """Cross-entropy on the answer tokens only; at the level word, against the (hard or soft) level target.

    Returns (mean loss over the batch's answer tokens, [B, n_levels] logits of the level words at the level position).
    """

    def __init__(
        self, model: nn.Module, family: ModuleType, level_ids: list[int], prompt: VisualPrompt | None = None
    ) -> None:
        super().__init__()
        self.model, self.family, self.prompt = model, family, prompt
        self.register_buffer("level_ids", torch.tensor(level_ids), persistent=False)

    def forward(
        self, inputs: dict[str, torch.Tensor], meta: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prompt is not None:
            inputs = {**inputs, "pixel_values": self.prompt(inputs["pixel_values"])}
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
    method: str
    peft_model: Any = None  # lora: the PeftModel around objective.model, to merge on export

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

    def export(self, folder: str, recipe: recipes.PromptRecipe) -> None:
        """The trained artifact: full model weights (LoRA merged into them), or the visual prompt alone; and the
        prompt recipe it was trained with, named beside them so that it is scored with that recipe."""
        if self.method == "visual-prompt":
            self.objective.prompt.save(folder)
        else:
            model = self.peft_model.merge_and_unload() if self.method == "lora" else self.objective.model
            model.save_pretrained(folder, safe_serialization=True)
        recipes.write_recipe_file(folder, recipe)


def setup_method(
    model: nn.Module, family: ModuleType, processor: Any, level_ids: list[int], recipe: Recipe, parent_path: str
) -> Trainable:
    """Freeze and wrap the model for the recipe's method."""
    if recipe.method == "full":
        model.requires_grad_(True)
        if VisualPrompt.load(parent_path) is not None:
            raise ValueError(
                "the parent model is a visual-prompt version; train it further with --method visual-prompt"
            )
        return Trainable(QAlignObjective(model, family, level_ids), "full")
    model.requires_grad_(False)
    if recipe.method == "lora":
        from peft import LoraConfig, get_peft_model

        if VisualPrompt.load(parent_path) is not None:
            raise ValueError(
                "the parent model is a visual-prompt version; train it further with --method visual-prompt"
            )
        # Linear layers only: mPLUG-Owl2's k/v projections are containers of one Linear per modality.
        targets = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and re.fullmatch(LORA_TARGETS, n)]
        config = LoraConfig(
            r=recipe.lora_r,
            lora_alpha=recipe.lora_alpha or 2 * recipe.lora_r,
            lora_dropout=0.05,
            target_modules=targets,
            bias="none",
        )
        peft_model = get_peft_model(model, config)  # injects the adapters into `model` itself
        return Trainable(QAlignObjective(model, family, level_ids), "lora", peft_model)
    prompt = VisualPrompt.load(parent_path)  # a visual-prompt parent: keep training its prompt
    if prompt is None:
        side, mean, std = image_geometry(processor)
        prompt = VisualPrompt(side, recipe.prompt_pixels, mean, std)
    prompt.requires_grad_(True)
    return Trainable(QAlignObjective(model.eval(), family, level_ids, prompt), "visual-prompt")


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

    recipe = Recipe(**config["recipe"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, int(config["cpus_per_worker"])))
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
    objective = ray.train.torch.prepare_model(
        trainable.objective, parallel_strategy_kwargs={"find_unused_parameters": True}
    )
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    per_worker = max(1, recipe.batch_size // world)
    steps_per_epoch = max(1, math.ceil((config["n_train"] * recipe.views // world) / per_worker))
    total = steps_per_epoch * recipe.epochs
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(recipe.warmup_ratio * total), total)

    start_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            state = torch.load(os.path.join(folder, STATE_FILE), map_location="cpu", weights_only=False)
        trainable.load_state(state["trained"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"] + 1, state["history"]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    shard = ray.train.get_dataset_shard("train")
    for epoch in range(start_epoch, recipe.epochs):
        began = time.time()
        loss_sum, n_rows, correct = 0.0, 0, 0
        batches = shard.iter_batches(
            batch_size=per_worker, batch_format="numpy", local_shuffle_buffer_size=recipe.shuffle_buffer
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
        history.append(
            {
                "epoch": epoch,
                "loss": loss_sum / max(rows, 1),
                "level_accuracy": right / max(rows, 1),
                "examples": int(rows),
                "seconds": round(time.time() - began, 2),
                "attempt_began_at": start_epoch,  # the epoch this worker group (re)started at: resumes show here
            }
        )
        metrics = {**history[-1], "start_epoch": start_epoch, "history": list(history)}
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                state = {
                    "epoch": epoch,
                    "history": history,
                    "trained": trainable.state(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                }
                torch.save(state, os.path.join(folder, STATE_FILE))
                if epoch == recipe.epochs - 1:
                    trainable.export(os.path.join(folder, EXPORT_DIR), prompt_recipe)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder))
            else:
                ray.train.report(metrics)


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


def fit(recipe: Recipe, scaling: Scaling, parent: str, label_urls: list[str], n_train: int, runs_url: str, run_id: str):
    """Train `parent` (a model folder or URL) on the training rows of the label shards with Ray Train.

    Checkpoints go to `<runs_url>/<run_id>/`; a rerun with the same run id resumes from the last one there.
    Returns Ray Train's Result: its last checkpoint holds the exported artifact (EXPORT_DIR).
    """
    import ray.data
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    dataset = _label_dataset(label_urls, scaling.data_cpus).map_batches(
        build_examples,
        fn_kwargs={
            "model_path": parent,
            "soft_labels": recipe.soft_labels,
            "crop": recipe.crop,
            "hflip": recipe.hflip,
            "views": recipe.views,
        },
        batch_size=32,  # label rows per task: the items of one block are mixed, so not too few
        batch_format="numpy",
        num_cpus=scaling.data_cpus,
        compute=ray.data.TaskPoolStrategy(size=scaling.data_actors),
    )
    resources = {"CPU": scaling.cpus_per_worker, **({"GPU": 1} if scaling.use_gpu else {})}
    storage_path, storage_fs = _storage(runs_url)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "recipe": asdict(recipe),
            "parent": parent,
            "n_train": n_train,
            "cpus_per_worker": scaling.cpus_per_worker,
        },
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=run_id,
            storage_path=storage_path,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=scaling.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        datasets={"train": dataset},
    )
    return trainer.fit()
