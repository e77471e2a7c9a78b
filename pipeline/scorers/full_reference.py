"""Full-reference scorers: compare an item with its reference (`ref_uri`). Here the pair's loading, shared by every
full-reference kind, and the classical metrics `psnr`, `psnr-y`, `ssim` and `ms-ssim`, computed on CPU
(pipeline.scorers.classical, which says what each name means).

Every full-reference kind writes `fr_score` (its own score, higher is better) and, beside it, `psnr` (over RGB) and
`ssim` (on MATLAB rgb2gray), which cost little next to decoding and are what a curator compares any other score with.

A row that cannot be compared gets its own error kind and the job goes on:
    no_reference             the row has no ref_uri (null or empty)
    video_not_supported      the item is a video (full-reference scorers compare images)
    reference_<kind>         the reference failed to load (reference_not_found, reference_decode_error, ...)
    reference_size_mismatch  the reference's size differs from the item's
    too_small                smaller than a metric's window (SSIM needs 11 px on each side, MS-SSIM 176)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline.infra.media import MediaError, MediaOptions, load_media
from pipeline.qalign.syllabus import augment
from pipeline.scorers import Prepared, ScorerArgs, classical
from schemas.scores import MAX_PSNR, ScoreColumns, fr_columns

# The version of the classical definitions, at the head of every classical row's `model_revision` (with what the
# row's fr_score is, classical.DEFINITIONS): an output refuses a rerun under another one. v1 computed everything on
# full-range BT.601 luma (0.299/0.587/0.114, unrounded); v2 is PSNR over RGB and SSIM/MS-SSIM on MATLAB rgb2gray.
METRIC_VERSION = "fidelity/v2"
BESIDE = "beside it psnr over RGB and ssim on MATLAB rgb2gray"


def load_pair(row: dict, options: MediaOptions, crop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The reference and the item of one manifest row, as RGB uint8 arrays of one size (the item's errors first)."""
    if row["media_type"] != "image":
        raise MediaError("video_not_supported", f"{row['uri']}: full-reference scorers compare images, not videos")
    if not row.get("ref_uri"):
        raise MediaError("no_reference", f"{row['uri']}: the row has no ref_uri")
    item = load_media(row["uri"], "image", options).frames[0]
    try:
        reference = load_media(row["ref_uri"], "image", options).frames[0]
    except MediaError as e:
        raise MediaError(f"reference_{e.kind}", e.message) from e
    if reference.shape != item.shape:
        raise MediaError(
            "reference_size_mismatch",
            f"{row['uri']} is {item.shape[1]}x{item.shape[0]}, its reference {row['ref_uri']} is "
            f"{reference.shape[1]}x{reference.shape[0]}",
        )
    reference, item = augment([reference, item], crop, False, None)  # one centre crop of both
    return reference, item


def metric(name: str, reference: np.ndarray, item: np.ndarray) -> float:
    """The classical metric `name` of the item against its reference; too small for its window: `too_small`."""
    try:
        return classical.METRICS[name](reference, item)
    except ValueError as e:  # the sizes are checked by load_pair: what is left is a size below the window
        raise MediaError("too_small", str(e)) from e


def pair_metrics(reference: np.ndarray, item: np.ndarray) -> dict[str, float]:
    """The `psnr` and `ssim` columns of the item against its reference: PSNR over RGB, SSIM on MATLAB rgb2gray."""
    return {"psnr": metric("psnr", reference, item), "ssim": metric("ssim", reference, item)}


# metric -> the range of its fr_score
RANGES: dict[str, tuple[float, float]] = {
    "psnr": (0.0, MAX_PSNR),
    "psnr-y": (0.0, MAX_PSNR),
    "ssim": (-1.0, 1.0),
    "ms-ssim": (0.0, 1.0),
}


@dataclass
class ClassicalMetric:
    """A classical full-reference metric: everything is computed while preparing the row, on CPU."""

    name: str  # psnr | psnr-y | ssim | ms-ssim
    reads: tuple[str, ...] = ("ref_uri",)
    references: tuple[str, ...] = ("ref_uri",)
    prepared_columns: tuple[str, ...] = ("fr_score", "psnr", "ssim")
    constants: dict[str, str] = field(default_factory=dict)
    videos_allowed: bool = True  # a video is a row error (video_not_supported), not a refused manifest
    runs_on_device: bool = False

    @property
    def model(self) -> str:
        return self.name

    @property
    def revision(self) -> str:
        """What this kind's rows hold, in words (their `model_revision`): e.g. 'fidelity/v2: PSNR over RGB, ...'."""
        return f"{METRIC_VERSION}: {classical.DEFINITIONS[self.name]}; {BESIDE}"

    @property
    def columns(self) -> ScoreColumns:
        return fr_columns(self.name, RANGES[self.name])

    def identity(self) -> dict:
        return {"scorer": self.name, "model": self.model, "model_revision": self.revision}

    def preparer(self, options: MediaOptions, crop: int | None = None) -> Callable[[dict], Prepared]:
        def prepare(row: dict) -> Prepared:
            reference, item = load_pair(row, options, crop)
            values = pair_metrics(reference, item)
            score = values[self.name] if self.name in values else metric(self.name, reference, item)
            return Prepared(None, {"fr_score": score, **values})

        return prepare

    def device_step(self, device: str):
        raise TypeError(f"{self.name} runs no device step: preparation computes it")


def create(name: str, args: ScorerArgs) -> ClassicalMetric:
    if args.model:
        raise ValueError(f"--scorer {name} is a metric: it takes no --model (got {args.model!r})")
    if args.task != "quality":
        raise ValueError(f"--scorer {name} measures fidelity to a reference: --task {args.task} does not apply")
    return ClassicalMetric(name)
