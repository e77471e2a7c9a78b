"""Full-reference scorers: compare an item with its reference (`ref_uri`). Here the pair's loading, shared by every
full-reference kind, and the classical metrics `psnr`, `ssim` and `ms-ssim`, computed on CPU
(pipeline.scorers.classical).

Every full-reference kind writes `fr_score` (its own score, higher is better) and, beside it, PSNR and SSIM on
luminance, which cost little next to decoding and are what a curator compares any other score with.

A row that cannot be compared gets its own error kind and the job goes on:
    no_reference             the row has no ref_uri (null or empty)
    video_not_supported      the item is a video (full-reference scorers compare images)
    reference_<kind>         the reference failed to load (reference_not_found, reference_decode_error, ...)
    reference_size_mismatch  the reference's size differs from the item's
    too_small                smaller than the metric's window (MS-SSIM needs 176 px on each side)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from pipeline.infra.media import MediaError, MediaOptions, load_media
from pipeline.qalign.syllabus import augment
from pipeline.scorers import Prepared, ScorerArgs, classical
from schemas.scores import MAX_PSNR, ScoreColumns, fr_columns

# What the classical metrics are, exactly: the `model_revision` of their rows (a change here is a new revision).
METRIC_REVISION = "fidelity/v1: BT.601 luma; SSIM Gaussian 11x11 sigma 1.5, K 0.01/0.03; MS-SSIM 5 scales"


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


def pair_metrics(reference: np.ndarray, item: np.ndarray) -> dict[str, float]:
    """PSNR and SSIM of the item against its reference, on luminance."""
    ref_y, item_y = classical.luminance(reference), classical.luminance(item)
    return {"psnr": classical.psnr(ref_y, item_y), "ssim": classical.ssim(ref_y, item_y)}


def _ms_ssim(reference: np.ndarray, item: np.ndarray) -> float:
    try:
        return classical.ms_ssim(classical.luminance(reference), classical.luminance(item))
    except ValueError as e:  # below the five scales' minimum size
        raise MediaError("too_small", str(e)) from e


# metric -> (its fr_score from the pair and its PSNR/SSIM, the range of that score)
SCORES: dict[str, tuple[Callable[[np.ndarray, np.ndarray, dict], float], tuple[float, float]]] = {
    "psnr": (lambda ref, item, values: values["psnr"], (0.0, MAX_PSNR)),
    "ssim": (lambda ref, item, values: values["ssim"], (-1.0, 1.0)),
    "ms-ssim": (lambda ref, item, values: _ms_ssim(ref, item), (0.0, 1.0)),
}


@dataclass
class ClassicalMetric:
    """A classical full-reference metric: everything is computed while preparing the row, on CPU."""

    name: str  # psnr | ssim | ms-ssim
    reads: tuple[str, ...] = ("ref_uri",)
    references: tuple[str, ...] = ("ref_uri",)
    prepared_columns: tuple[str, ...] = ("fr_score", "psnr", "ssim")
    constants: dict[str, str] = field(default_factory=dict)
    revision: str | None = METRIC_REVISION
    videos_allowed: bool = True  # a video is a row error (video_not_supported), not a refused manifest
    runs_on_device: bool = False

    @property
    def model(self) -> str:
        return self.name

    @property
    def columns(self) -> ScoreColumns:
        return fr_columns(self.name, SCORES[self.name][1])

    def identity(self) -> dict:
        return {"scorer": self.name, "model": self.model, "model_revision": self.revision}

    def preparer(self, options: MediaOptions, crop: int | None = None) -> Callable[[dict], Prepared]:
        score = SCORES[self.name][0]

        def prepare(row: dict) -> Prepared:
            reference, item = load_pair(row, options, crop)
            values = pair_metrics(reference, item)
            return Prepared(None, {"fr_score": score(reference, item, values), **values})

        return prepare

    def device_step(self, device: str):
        raise TypeError(f"{self.name} runs no device step: preparation computes it")


def create(name: str, args: ScorerArgs) -> ClassicalMetric:
    if args.model:
        raise ValueError(f"--scorer {name} is a metric: it takes no --model (got {args.model!r})")
    if args.task != "quality":
        raise ValueError(f"--scorer {name} measures fidelity to a reference: --task {args.task} does not apply")
    return ClassicalMetric(name)
