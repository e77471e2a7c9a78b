"""What a scoring run is asked to do (JobConfig), and the one error that ends it (JobError)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.infra.watchdog import DEFAULT_STALL_S
from pipeline.qalign.levels import DEFAULT_LEVELS, Levels


class JobError(RuntimeError):
    """The job cannot start or must fail: the message says why and what to do."""


@dataclass
class JobConfig:
    manifest: str
    output: str
    model: str | None = None  # None: a scorer that needs no model (a classical metric)
    task: str = "quality"
    batch_size: int = 16
    num_scorers: int | None = None  # default: one per GPU in the cluster, or 1 without GPUs
    gpus_per_scorer: float = 1.0
    fps: float = 1.0
    max_frames: int = 16
    max_error_rate: float = 0.05
    restart: bool = False  # wipe an existing output instead of resuming it
    model_revision: str | None = None
    prompt_recipe: str | None = None  # None: the checkpoint's own (pipeline.qalign.recipes.for_checkpoint)
    levels: Levels = field(default_factory=lambda: DEFAULT_LEVELS)
    progress_every_s: float = 10.0
    stall_timeout_s: float = DEFAULT_STALL_S  # no progress for this long in any stage: the job fails, naming it
    scorer: str = "lmm"  # the kind of scorer (pipeline.scorers.KINDS)
    draft: bool = True  # large JPEGs decoded at a reduced DCT scale, never below twice the model's input side
    fetch_concurrency: int = 8  # objects each decode worker reads at once
