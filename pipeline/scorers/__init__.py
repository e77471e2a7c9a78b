"""The scorer seam: every kind of scorer the scoring job runs, behind one small protocol (`Kind`).

A kind declares the manifest columns it reads, the output columns it writes and their ranges (schemas.ScoreColumns),
prepares one manifest row on a CPU worker, and scores a batch of prepared rows on its device:

    kind = scorers.create(ScorerArgs(...))        # on the driver: small, picklable, sent to every stage
    prepare = kind.preparer(media_options)         # once per decode worker (no weights)
    prepared = prepare(row)                        # row: id, uri, media_type and kind.reads; raises MediaError
    step = kind.device_step(device)                # once per scorer actor: loads the weights
    columns = step([p.inputs for p in batch])      # {column: one value per row}

A row's output columns are its `prepared.values` (known after preparation: frames, a metric computed on CPU), the
device step's columns and the kind's constants. The job's stages (pipeline.scoring.job), the output schema, the filter,
the report and the evaluation use only this protocol.

Kinds: `lmm` (pipeline.scorers.lmm: an LMM reading level words), `psnr`, `psnr-y`, `ssim`, `ms-ssim` (classical metrics,
pipeline.scorers.full_reference) and `vtamiq` (pipeline.scorers.vtamiq). To add a third kind of scorer, write one
file here with a class that implements `Kind` and a `create(name, args)` function, and add its name to KINDS;
nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any, Protocol

import numpy as np

from pipeline.infra.media import MediaOptions
from pipeline.qalign.levels import DEFAULT_LEVELS, Levels
from schemas.scores import ScoreColumns


@dataclass
class Prepared:
    """One row after CPU preparation: what goes to the device step, and the output values already known."""

    inputs: Any  # None when the kind has no device step
    values: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ScorerArgs:
    """What the scoring job knows that a kind may use; each kind refuses what does not apply to it."""

    model: str | None = None  # --model as given (a folder, registry entry or hub id)
    model_path: str | None = None  # where it resolved to (pipeline.registry)
    revision: str | None = None  # the resolved revision
    task: str = "quality"
    levels: Levels = DEFAULT_LEVELS
    recipe: str | None = None  # level scorers' prompt recipe (pipeline.qalign.recipes)


class Kind(Protocol):
    name: str  # the --scorer name, written into every output shard's metadata
    reads: tuple[str, ...]  # manifest columns beyond id, uri and media_type (e.g. ref_uri)
    references: tuple[str, ...]  # of those, the columns naming a reference image, fetched along with the item
    columns: ScoreColumns  # the output columns, their ranges and the headline column
    prepared_columns: tuple[str, ...]  # the output columns that preparation fills (Prepared.values)
    constants: dict[str, str]  # output columns with one value per run (e.g. task)
    model: str  # the output's `model` column: --model, or the metric's name
    revision: str | None  # the output's `model_revision` column
    videos_allowed: bool  # False: a manifest with videos is refused before scoring (per-row errors otherwise)
    runs_on_device: bool  # False: preparation computes everything; the job runs no scorer actors

    def identity(self) -> dict:
        """What must match for a rerun to add to an output: written to _run.json and compared there."""

    def preparer(self, options: MediaOptions, crop: int | None = None) -> Callable[[dict], Prepared]:
        """The CPU half, built once per worker. `crop`: centre-crop first (evaluation on training crops)."""

    def device_step(self, device: str) -> Callable[[list[Any]], dict[str, np.ndarray]]:
        """The batched device half (the weights, loaded once per actor): the remaining columns of a batch."""


def step_columns(kind: Kind) -> list[str]:
    """The columns a kind's device step writes."""
    return [n for n in kind.columns.names if n not in kind.prepared_columns and n not in kind.constants]


# --scorer name -> the module of its kind. Imported when chosen: each kind pulls in its own model code.
KINDS = {
    "lmm": "lmm",
    "psnr": "full_reference",
    "psnr-y": "full_reference",
    "ssim": "full_reference",
    "ms-ssim": "full_reference",
    "vtamiq": "vtamiq",
}


def create(name: str, args: ScorerArgs) -> Kind:
    """The kind of scorer named `name` (one of KINDS), for this job's arguments."""
    if name not in KINDS:
        raise ValueError(f"--scorer {name!r}: not a kind of scorer; the kinds are {list(KINDS)}")
    return import_module(f"pipeline.scorers.{KINDS[name]}").create(name, args)
